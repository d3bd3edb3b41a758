"""The request-edge rules and prompt rewriting of tools and structured outputs (no engine: the fast tier)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serve.api.errors import APIError
from serve.api.openai_format import Accumulator
from serve.engines.engine import Delta
from serve.api.schemas import ChatCompletionRequest
from serve.api.tools import check_request, fallback_messages, native_messages, wire_messages

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
MSG = [{"role": "user", "content": "hi"}]


def body(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **kw})


@pytest.mark.parametrize("kw,param", [
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
    ({"tools": [TOOL, TOOL]}, "tools"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls"),
    ({"tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [*MSG, {"role": "tool", "content": "r"}]}, "messages.1.tool_call_id"),
    ({"messages": [*MSG, {"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages.1.tool_calls"),
])
def test_cross_field_rules_name_the_param(kw, param):
    with pytest.raises(APIError) as e:
        check_request(body(**kw))
    assert e.value.status == 400 and e.value.param == param


def test_valid_tool_requests_pass():
    check_request(body(tools=[TOOL]))
    check_request(body(tools=[TOOL], tool_choice="none", parallel_tool_calls=False))
    check_request(body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "lookup"}}))
    check_request(body(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {}}}))


@pytest.mark.parametrize("kw", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": 3}}}},
    {"logit_bias": {"-1": 1}},
    {"logit_bias": {"1": -100.5}},
    {"tools": [{"type": "function", "function": {"name": "has space"}}]},
    {"tool_choice": "sometimes"},
])
def test_edge_validation_refuses(kw):
    with pytest.raises(ValidationError):
        body(**kw)


def _conversation():
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    return wire_messages(body(messages=[
        {"role": "system", "content": "be brief"}, *MSG,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "found 42"}], tools=[TOOL]).messages)


def test_fallback_rendering_puts_tools_calls_and_results_in_text():
    msgs = fallback_messages(_conversation(), [TOOL])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith("be brief\n\n") and '{"name":"lookup"' in msgs[0]["content"]
    assert msgs[2]["content"] == '<tool_call>{"name":"lookup","arguments":{"q":"x"}}</tool_call>'
    assert msgs[3]["content"] == "<tool_response>\nfound 42\n</tool_response>"
    assert all(isinstance(m["content"], str) for m in msgs)  # a template that only concatenates can render it


def test_native_rendering_gets_arguments_as_objects():
    msgs = native_messages(_conversation())
    assert msgs[2]["tool_calls"][0]["function"]["arguments"] == {"q": "x"}
    assert msgs[3] == {"role": "tool", "content": "found 42", "tool_call_id": "c1"}


def test_accumulator_merges_streamed_tool_call_fragments():
    acc = Accumulator(1)
    acc.add(Delta(0, "", tool_calls=[{"index": 0, "id": "c1", "type": "function", "function": {"name": "f"}}]))
    for part in ('{"q"', ': "x"}'):
        acc.add(Delta(0, "", tool_calls=[{"index": 0, "function": {"arguments": part}}]))
    acc.add(Delta(0, "", finish_reason="tool_calls"))
    choice = acc.chat_body("id", "m", 1, 3, {})["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "c1" and call["function"]["name"] == "f" and json.loads(call["function"]["arguments"]) == {"q": "x"}
