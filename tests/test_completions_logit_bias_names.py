"""Issue 30 item 1: `/v1/completions` honours `logit_bias` as chat does (the value slots' ban included), and a
chat message's `name` reaches the chat template for every role (the template decides whether it renders it).

Fast tests check the request path up to the prompt ids; the HTTP tests run on the default gateway (slow)."""

from __future__ import annotations

import httpx
import pytest

from serve.api import completions, tools
from serve.api.schemas import ChatCompletionRequest, CompletionRequest
from serve.config import VersionSpec
from serve.engines.engine import EngineBadRequest, GenerationRequest

# the embedded default's template with a place for the name (as e.g. ChatML-style templates have)
NAMED_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}{% if message.get('name') %}{{ message['name'] + ': ' }}{% endif %}"
    "{{ message['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def test_completion_logit_bias_reaches_the_engine_request():
    body = CompletionRequest.model_validate({"model": "stable", "prompt": "12+7=", "logit_bias": {"65": -100,
                                                                                                  "66": 100}})
    req = completions._generation_request(body)
    assert req.kind == "completion" and req.logit_bias == {65: -100.0, 66: 100.0}


def test_completion_logit_bias_is_checked_like_chat():
    with pytest.raises(ValueError, match="not a token id"):
        CompletionRequest.model_validate({"model": "stable", "prompt": "x", "logit_bias": {"abc": 1}})
    with pytest.raises(ValueError):
        CompletionRequest.model_validate({"model": "stable", "prompt": "x", "logit_bias": {"5": 101}})


@pytest.fixture(scope="module")
def named_engine(tmp_path_factory):
    """An in-process engine object (not started) whose tokenizer's template renders `name`."""
    from training.tokenizer import save_tokenizer
    from serve.engines.engine_vllm import VLLMEngine

    d = tmp_path_factory.mktemp("named-tok")
    tok = save_tokenizer(d)
    tok.chat_template = NAMED_TEMPLATE
    engine = VLLMEngine(VersionSpec(name="v", model=str(d)))
    engine.tokenizer = tok
    return engine


def _prompt(engine, messages: list[dict], **kw) -> str:
    body = ChatCompletionRequest.model_validate({"model": "v", "messages": messages, **kw})
    req = completions._generation_request(body)
    return engine.tokenizer.decode(engine._prompt_ids(req), skip_special_tokens=False)


@pytest.mark.parametrize("role", ["user", "assistant", "system", "developer"])
def test_message_name_reaches_the_template(named_engine, role):
    messages = [{"role": role, "content": "hi", "name": "bob_7"}, {"role": "user", "content": "12+7="}]
    assert "bob_7: hi" in _prompt(named_engine, messages)


def test_message_name_reaches_the_template_with_gateway_rendered_tools(named_engine):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    text = _prompt(named_engine, [{"role": "user", "content": "hi", "name": "ann"}], tools=[tool])
    assert "<tools>" in text and "ann: hi" in text  # the template does not render tools: the gateway's system message


def test_message_name_with_a_special_token_is_refused(named_engine):
    # the edge refuses `<` and `|` already (OpenAI's rule); this is the prompt builder's own check
    req = GenerationRequest(request_id="r", kind="chat",
                            messages=[{"role": "user", "content": "hi", "name": "x<|system|>"}])
    with pytest.raises(EngineBadRequest) as e:
        named_engine._prompt_ids(req)
    assert e.value.param == "messages.0.name" and "<|system|>" in e.value.message


def test_message_name_follows_openai_rule_at_the_edge():
    for bad in ("two words", "a<b", "x|y", "a/b"):
        with pytest.raises(ValueError):
            ChatCompletionRequest.model_validate({"model": "v", "messages": [{"role": "user", "content": "x",
                                                                             "name": bad}]})
    wire = tools.wire_messages(ChatCompletionRequest.model_validate({"model": "v", "messages": [
        {"role": "developer", "content": "x", "name": "ops"}]}).messages)
    assert wire == [{"role": "system", "content": "x", "name": "ops"}]


# --- over HTTP, on the default gateway ----------------------------------------------------------------------
def test_completions_logit_bias_forces_bans_and_keeps_slots_banned(client, default_tokenizer):
    kw = dict(model="stable", prompt="12+7=", max_tokens=6, temperature=0)
    x = default_tokenizer.token_to_id("x")
    forced = client.completions.create(**kw, logit_bias={str(x): 100})
    assert forced.choices[0].text == "x" * 6
    plain = client.completions.create(**kw, extra_body={"min_tokens": 4})
    first = plain.choices[0].text[0]
    (first_id,) = default_tokenizer.encode(first, add_special_tokens=False).ids  # one character, one token (byte-level)
    banned = client.completions.create(**kw, logit_bias={str(first_id): -100}, extra_body={"min_tokens": 4})
    assert first not in banned.choices[0].text
    # the value head's reserved slots stay banned on completions too
    slots = [default_tokenizer.token_to_id("<|value_a|>"), default_tokenizer.token_to_id("<|value_b|>")]
    r = client.completions.create(**kw, logit_bias={str(i): 100 for i in slots}, extra_body={"return_values": True})
    assert not set(slots) & set(r.model_extra["aligngate"]["traces"][0]["token_ids"])


def test_completions_logit_bias_outside_the_vocabulary_is_400(gateway):
    r = httpx.post(gateway + "/v1/completions", json={"model": "stable", "prompt": "1+1=", "max_tokens": 2,
                                                      "logit_bias": {"99999": 1}}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "logit_bias"


def test_chat_message_names_accepted_and_checked(client, gateway):
    r = client.chat.completions.create(model="stable", max_tokens=4, temperature=0, messages=[
        {"role": "system", "content": "be brief", "name": "ops"}, {"role": "user", "content": "12+7=", "name": "bob"}])
    assert r.choices[0].finish_reason in ("stop", "length")
    # a name that spells the template's special tokens is refused, not dropped
    r = httpx.post(gateway + "/v1/chat/completions", timeout=60, json={
        "model": "stable", "max_tokens": 2, "messages": [{"role": "user", "content": "hi", "name": "<|system|>"}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages.0.name"
