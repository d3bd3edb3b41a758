"""OpenAI's Responses API and the "no field silently ignored" policy, through the official `openai` client against the
live embedded-default gateway (real vLLM engines, loopback HTTP)."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow


def test_create_non_stream(client):
    raw = client.responses.with_raw_response.create(model="aligngate", input="12+7=", max_output_tokens=8)
    r = raw.parse()
    assert raw.headers["x-aligngate-version"] == "stable"
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "aligngate"
    assert r.status in ("completed", "incomplete")
    assert r.status == "completed" or r.incomplete_details.reason == "max_output_tokens"
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    assert r.output_text == item.content[0].text and isinstance(r.output_text, str)
    assert r.usage.input_tokens > 0 and 1 <= r.usage.output_tokens <= 8
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    ag = r.model_extra["aligngate"]
    assert ag["version"] == "stable" and ag["reward"]["source"] == "value_head"
    assert isinstance(ag["reward"]["score"], float)


def test_instructions_reach_the_prompt(client):
    """`instructions` become a system message: the rendered prompt grows by their tokens (and the chat template's
    system block), and a greedy answer is the same as the chat route's with the same system message."""
    plain = client.responses.create(model="stable", input="3+4=", max_output_tokens=6, temperature=0)
    told = client.responses.create(model="stable", input="3+4=", instructions="answer with digits only",
                                   max_output_tokens=6, temperature=0)
    assert told.usage.input_tokens > plain.usage.input_tokens + 3
    chat = client.chat.completions.create(model="stable", max_tokens=6, temperature=0, messages=[
        {"role": "system", "content": "answer with digits only"}, {"role": "user", "content": "3+4="}])
    assert chat.usage.prompt_tokens == told.usage.input_tokens
    assert chat.choices[0].message.content == told.output_text


def test_input_as_message_items(client):
    """A conversation as items: developer, user (input_text parts), an earlier assistant answer (output_text)."""
    items = [{"role": "developer", "content": "be brief"},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "1+1="}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "2",
                                                                   "annotations": []}]},
             {"role": "user", "content": "and 2+2="}]
    r = client.responses.create(model="aligngate", input=items, max_output_tokens=4, temperature=0)
    chat = client.chat.completions.create(model="aligngate", max_tokens=4, temperature=0, messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1="},
        {"role": "assistant", "content": "2"}, {"role": "user", "content": "and 2+2="}])
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.output_text == chat.choices[0].message.content


EVENTS_HEAD = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
EVENTS_TAIL = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
               "response.completed"]


def test_stream_events(client):
    events = list(client.responses.create(model="aligngate", input="5+6=", max_output_tokens=12, stream=True))
    types = [e.type for e in events]
    assert types[:4] == EVENTS_HEAD and types[-4:] == EVENTS_TAIL, types
    assert set(types[4:-4]) <= {"response.output_text.delta"} and len(types) > 8, types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas == final.output_text == events[-4].text
    assert events[0].response.id == final.id and final.id.startswith("resp_")
    assert final.usage.output_tokens >= 1
    assert final.model_extra["aligngate"]["reward"]["source"] == "value_head"
    assert final.model_extra["aligngate"]["version"] == "stable"


def test_stream_helper_final_response(client):
    with client.responses.stream(model="aligngate", input="9+1=", max_output_tokens=10) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text
    assert final.status in ("completed", "incomplete")
    assert final.model_extra["aligngate"]["reward"] is not None


def test_feedback_on_a_response_id(gateway, client):
    """The response id is the same handle as a completion id: `POST /v1/feedback` rates it."""
    r = client.responses.create(model="aligngate", input="2+2=", max_output_tokens=4)
    ack = httpx.post(gateway + "/v1/feedback", json={"response_id": r.id, "rating": 1.0}, timeout=60)
    assert ack.status_code == 200, ack.text


UNSUPPORTED_RESPONSES = [
    ("tools", dict(tools=[{"type": "web_search"}])),
    ("previous_response_id", dict(previous_response_id="resp_123")),
    ("store", dict(store=True)),
    ("background", dict(background=True)),
    ("reasoning", dict(reasoning={"effort": "high"})),
    ("text", dict(text={"format": {"type": "json_object"}})),
    ("conversation", dict(conversation="conv_1")),
    ("include", dict(include=["message.output_text.logprobs"])),
    ("input", dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}])),
    ("input", dict(input=[{"type": "function_call_output", "call_id": "c1", "output": "3"}])),
]


@pytest.mark.parametrize("param,kw", UNSUPPORTED_RESPONSES, ids=[f"{p}-{i}" for i, (p, _) in
                                                                 enumerate(UNSUPPORTED_RESPONSES)])
def test_unsupported_responses_fields_400(client, param, kw):
    kw = {"input": "hi", **kw}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="aligngate", max_output_tokens=4, **kw)
    err = e.value.body
    assert err["param"] == param and err["code"] == "unsupported_parameter", err
    assert "not supported" in err["message"] or "only" in err["message"], err


def test_harmless_responses_fields_accepted(client):
    r = client.responses.create(model="aligngate", input="hi", max_output_tokens=3, store=False, metadata={"k": "v"},
                                service_tier="auto", text={"format": {"type": "text"}}, truncation="disabled",
                                extra_body={"some_vendor_field": 1})
    assert r.metadata == {"k": "v"} and r.usage.output_tokens >= 1


def test_responses_limits_name_responses_params(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="aligngate", input="hi", max_output_tokens=100_000)
    assert e.value.body["param"] == "max_output_tokens", e.value.body


MSG = [{"role": "user", "content": "hi"}]
UNHONOURED_CHAT = [
    ("audio", dict(audio={"voice": "alloy", "format": "wav"})),
    ("modalities", dict(modalities=["text", "audio"])),
    ("web_search_options", dict(web_search_options={})),
    ("prediction", dict(prediction={"type": "content", "content": "x"})),
    ("functions", dict(functions=[{"name": "f", "parameters": {}}])),
    ("function_call", dict(function_call="auto")),
    ("reasoning_effort", dict(reasoning_effort="high")),
    ("verbosity", dict(verbosity="low")),
    ("store", dict(store=True)),
    ("service_tier", dict(service_tier="flex")),
    ("prompt_cache_retention", dict(prompt_cache_retention="24h")),
    ("moderation", dict(extra_body={"moderation": {"model": "omni"}})),
]


@pytest.mark.parametrize("param,kw", UNHONOURED_CHAT, ids=[p for p, _ in UNHONOURED_CHAT])
def test_unhonoured_chat_field_400(client, param, kw):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="aligngate", messages=MSG, max_tokens=2, **kw)
    err = e.value.body
    assert err["param"] == param and err["code"] == "unsupported_parameter", err
    assert f"`{param}`" in err["message"], err


@pytest.mark.parametrize("param,kw", [("suffix", dict(suffix="!"))])  # best_of is honoured (tests/test_best_of.py)
def test_unhonoured_completion_field_400(client, param, kw):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="aligngate", prompt="1+1=", max_tokens=2, **kw)
    assert e.value.body["param"] == param and e.value.body["code"] == "unsupported_parameter", e.value.body


def test_harmless_chat_fields_and_vendor_fields_accepted(client):
    r = client.chat.completions.create(model="aligngate", messages=MSG, max_tokens=2, store=False, metadata={"a": "b"},
                                       service_tier="auto", modalities=["text"], reasoning_effort="none",
                                       safety_identifier="u-1", prompt_cache_key="k",
                                       extra_body={"top_k": 5, "some_vendor_field": {"x": 1}})
    assert r.choices[0].message.role == "assistant"
    assert r.model_extra["aligngate"]["version"] == "stable"
    c = client.completions.create(model="aligngate", prompt="1+1=", max_tokens=2, best_of=1)
    assert c.usage.completion_tokens >= 1


@pytest.mark.parametrize("method,path,allow", [
    ("POST", "/v1/models", "GET"), ("GET", "/v1/responses", "POST"), ("PUT", "/v1/chat/completions", "POST"),
    ("POST", "/health", "GET"), ("DELETE", "/admin/versions", "GET, POST"), ("PATCH", "/admin/versions/x", "DELETE"),
])
def test_undeclared_method_405_with_allow(gateway, method, path, allow):
    """405 before anything looks at the body (no 415 for a POST without a JSON body), `Allow` listing every method
    the path declares (two routes on /admin/versions)."""
    r = httpx.request(method, gateway + path, timeout=30)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    err = r.json()["error"]
    assert method in err["message"] and set(err) == {"message", "type", "param", "code"}
