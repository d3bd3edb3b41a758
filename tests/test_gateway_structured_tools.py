"""Structured outputs, tools and logit_bias through the official `openai` client, against the live embedded-default
gateway (in-process vLLM) and the remote path (a real vLLM server upstream). The default policy is tiny and
barely trained: what these tests show is what the grammar guarantees (valid JSON, a valid call), not quality."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.slow


MSG = [{"role": "user", "content": "12+7="}]
# bounded, so even a weak model's answer ends well inside max_tokens (the grammar guarantees syntax, not brevity)
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["word", "n"],
          "properties": {"word": {"type": "string", "maxLength": 6}, "n": {"type": "integer", "minimum": 0,
                                                                            "maximum": 99}}}


class Answer(BaseModel):
    word: str = Field(max_length=6)
    n: int = Field(ge=0, le=99)


class Weather(BaseModel):
    """weather in a city"""

    city: str = Field(max_length=8)


WEATHER = openai.pydantic_function_tool(Weather)  # strict, additionalProperties false: what SDK users send
# the embedded default's context is 512 tokens of one character each: a round trip needs a terse tool
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string", "maxLength": 4}}, "required": ["q"]}}}


def test_json_object(client):
    r = client.chat.completions.create(model="stable", messages=MSG, max_tokens=80, temperature=0,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert r.model_extra["aligngate"]["reward"]["source"] == "value_head"


def test_json_schema_strict_validates(client):
    for seed in (1, 2):
        r = client.chat.completions.create(
            model="stable", messages=MSG, max_tokens=80, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_sdk_parse_returns_the_model(client):
    r = client.chat.completions.parse(model="aligngate", messages=MSG, max_tokens=80, temperature=0,
                                      response_format=Answer)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Answer) and 0 <= parsed.n <= 99
    assert r.model_extra["aligngate"]["reward"] is not None


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "Weather"}}])
def test_forced_tool_call_non_stream(client, choice):
    r = client.chat.completions.create(model="stable", messages=[{"role": "user", "content": "weather in Oslo?"}],
                                       tools=[WEATHER], tool_choice=choice, max_tokens=90, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == ("tool_calls" if choice == "required" else "stop")  # OpenAI: a named call ends "stop"
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.function.name == "Weather" and call.id
    Weather.model_validate_json(call.function.arguments)  # schema-valid arguments, even from this model
    assert r.model_extra["aligngate"]["reward"]["source"] == "value_head"  # a tool call still gets its reward


def test_forced_tool_call_streamed_and_reassembled_by_the_sdk(client):
    with client.chat.completions.stream(model="stable", messages=[{"role": "user", "content": "Oslo?"}],
                                        tools=[WEATHER], tool_choice="required", max_tokens=90, temperature=0) as s:
        chunks = [e.chunk for e in s if e.type == "chunk"]
        final = s.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Weather)  # the SDK parsed the reassembled strict arguments
    assert sum(1 for ch in chunks for c in ch.choices if c.delta.tool_calls) >= 2  # arrived as deltas
    assert final.choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].model_extra["aligngate"]["reward"] is not None


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "look up x"}]
    first = client.chat.completions.create(model="stable", messages=messages, tools=[LOOKUP],
                                           tool_choice="required", max_tokens=90, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and len(json.loads(call.function.arguments)["q"]) <= 4
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "found 42"}]
    # min_tokens (a vLLM extension the gateway honours): this weak model may otherwise end its answer at once
    final = client.chat.completions.create(model="stable", messages=messages, tools=[LOOKUP], max_tokens=40,
                                           temperature=0, extra_body={"min_tokens": 2})
    c = final.choices[0]
    assert c.finish_reason in ("stop", "length", "tool_calls")
    assert c.message.content or c.message.tool_calls  # an answer (auto: the model's choice of text or a call)
    # the call and its result are in the prompt: it grew by at least the tool result's text
    assert final.usage.prompt_tokens >= first.usage.prompt_tokens + len("found 42")
    assert final.model_extra["aligngate"]["reward"] is not None


def test_logit_bias_forces_and_bans(client, default_tokenizer):
    x = default_tokenizer.token_to_id("x")
    r = client.chat.completions.create(model="stable", messages=MSG, max_tokens=6, temperature=0,
                                       logit_bias={str(x): 100})
    assert r.choices[0].message.content == "x" * 6
    kw = dict(model="stable", messages=MSG, max_tokens=8, temperature=0, extra_body={"min_tokens": 4})
    first = client.chat.completions.create(**kw).choices[0].message.content[0]
    (first_id,) = default_tokenizer.encode(first, add_special_tokens=False).ids  # one character, one token (byte-level)
    banned = client.chat.completions.create(**kw, logit_bias={str(first_id): -100})
    assert first not in banned.choices[0].message.content
    # a bias on the value head's reserved slots never gets them sampled: their own -100 wins
    slots = [default_tokenizer.token_to_id("<|value_a|>"), default_tokenizer.token_to_id("<|value_b|>")]
    r = client.chat.completions.create(model="stable", messages=MSG, max_tokens=6, temperature=0,
                                       logit_bias={str(i): 100 for i in slots}, extra_body={"return_values": True})
    assert not set(slots) & set(r.model_extra["aligngate"]["traces"][0]["token_ids"])


def test_max_completion_tokens(client):
    r = client.chat.completions.create(model="stable", messages=MSG, max_completion_tokens=3, temperature=0,
                                       logit_bias={"80": 100})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


BAD = [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias.5"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "objekt"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"messages": [*MSG, {"role": "tool", "content": "x"}]}, "messages.1.tool_call_id"),
    ({"messages": [*MSG, {"role": "tool", "content": "x", "tool_call_id": "c1"}]}, "messages.1.tool_call_id"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
]


@pytest.mark.parametrize("extra,param", BAD, ids=[p for _, p in BAD])
def test_invalid_combinations_are_400_naming_the_param(gateway, extra, param):
    body = {"model": "stable", "messages": MSG, "max_tokens": 4, **extra}
    r = httpx.post(gateway + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_remote_structured_outputs_pass_upstream(remote_gateway, default_tokenizer):
    client = openai.OpenAI(base_url=remote_gateway + "/v1", api_key="unused", max_retries=0, timeout=120)
    # vLLM's server lets the grammar put blanks between JSON tokens (its default backend setting); banning the
    # whitespace tokens with logit_bias keeps this weak model from filling max_tokens with them
    blanks = {str(default_tokenizer.token_to_id(t)): -100 for t in ("Ġ", "Ċ", "ĉ", "č") if default_tokenizer.token_to_id(t) is not None}
    r = client.chat.completions.parse(model="remote", messages=MSG, max_tokens=80, temperature=0,
                                      response_format=Answer, logit_bias=blanks)
    assert isinstance(r.choices[0].message.parsed, Answer)
    assert r.model_extra["aligngate"]["version"] == "remote"
    r = client.chat.completions.create(model="remote", messages=MSG, max_tokens=80, temperature=0,
                                       response_format={"type": "json_object"}, logit_bias=blanks, stream=True)
    assert isinstance(json.loads("".join(c.choices[0].delta.content or "" for c in r if c.choices)), dict)


@pytest.fixture(scope="module")
def qwen2_gateway(start_gateway, session_dir):
    """A Qwen2-family checkpoint (random weights, Qwen2's own chat template with its tools section): the template
    renders the tools itself and the version gets vLLM's `hermes` parser by default."""
    from training.families import build_family_checkpoint

    model = session_dir / "qwen2-tools"
    if not (model / "config.json").exists():
        build_family_checkpoint("qwen2", model)
    versions = [{"name": "qwen", "model": str(model), "weight": 1, "max_model_len": 1024}]
    return start_gateway("gateway-qwen2-tools", env={"ALIGNGATE_VERSIONS": json.dumps(versions)})


def test_family_template_tool_round_trip(qwen2_gateway):
    client = openai.OpenAI(base_url=qwen2_gateway + "/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "weather in Oslo?"}]
    with client.chat.completions.stream(model="qwen", messages=messages, tools=[WEATHER], tool_choice="required",
                                        max_tokens=80, temperature=0, stream_options={"include_usage": True}) as s:
        last = [e.chunk for e in s if e.type == "chunk"][-1]
        first = s.get_final_completion()
    # the helper keeps usage (it is on the last chunk, with the reward: serve/api/openai_format.py ChatChunker.tail)
    assert first.usage is not None and first.usage.completion_tokens >= 1
    assert last.model_extra["aligngate"]["reward"] is not None
    call = first.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, Weather) and first.choices[0].finish_reason == "tool_calls"
    messages += [{"role": "assistant", "tool_calls": [{"id": call.id, "type": "function", "function": {
        "name": call.function.name, "arguments": call.function.arguments}}]},
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    final = client.chat.completions.create(model="qwen", messages=messages, tools=[WEATHER], max_tokens=16,
                                           temperature=0, extra_body={"min_tokens": 2})
    assert final.choices[0].message.content or final.choices[0].message.tool_calls
    # the call and its result are in the prompt: longer than the first turn's by more than the tool result's text
    assert final.usage.prompt_tokens > first.usage.prompt_tokens + len("sunny, 21 C") // 4
    assert final.model_extra["aligngate"]["version"] == "qwen"
