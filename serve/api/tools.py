"""Tools (function calling) on chat completions: the request's tool fields, their cross-field rules, and how a
conversation with tools becomes a prompt.

Prompt rendering. A chat template that renders tools itself (Qwen2, Llama-3, Mistral, Hermes-style templates:
`apply_chat_template(..., tools=...)` puts them in the prompt) gets them that way, with assistant `tool_calls`
and `role: "tool"` messages in the conversation as the template expects them. A template that ignores `tools`
(the embedded default's, Phi-3's, Gemma's) would leave the model blind to the tools it is asked to call, so the
gateway renders them by one documented rule instead of refusing: a system message (merged into the first one if
there is one) listing the functions as JSON inside <tools></tools> and asking for calls as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the Hermes convention, which vLLM's `hermes` parser
reads: such versions get that parser by default); earlier assistant calls are written back in the same form and
tool results as user turns inside <tool_response></tool_response>. Either way each message's content stays
tokenized as text (serve.engines.engine_vllm.chat_prompt_ids); tool definitions and call arguments that a native template
renders are template text, so they may not spell one of the tokenizer's special tokens (a 400).
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve.engines.engine import EngineBadRequest
from serve.api.errors import APIError

NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDef(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str = Field(pattern=NAME, description="a-z, A-Z, 0-9, _ and -, at most 64")
    description: str | None = None
    parameters: dict | None = Field(None, description="a JSON Schema object for the arguments")
    strict: bool | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["function"]
    function: FunctionDef


class FunctionName(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str
    arguments: str = Field(description="the arguments as a JSON string")


class ToolCall(BaseModel):
    """An earlier assistant turn's call, sent back in the conversation."""

    model_config = ConfigDict(strict=True, extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


def check_request(body) -> None:
    """Cross-field rules of a chat request's tool fields (a 400 naming the field, as OpenAI's API answers)."""
    tools = body.tools or []
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise APIError(400, f"two tools are named `{dup}`; function names must be unique", param="tools",
                       code="invalid_value")
    choice = body.tool_choice
    if choice is not None and choice != "none" and not tools:
        raise APIError(400, "tool_choice needs `tools`: send the functions the model may call, or drop tool_choice",
                       param="tool_choice", code="invalid_value")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise APIError(400, f"tool_choice names `{choice.function.name}`, which is not in `tools` (have: "
                            f"{', '.join(names)})", param="tool_choice", code="invalid_value")
    if body.parallel_tool_calls is not None and not tools:
        raise APIError(400, "parallel_tool_calls is only allowed when `tools` are given", param="parallel_tool_calls",
                       code="invalid_value")
    rf = body.response_format
    if rf is not None and rf.type != "text" and tools and (choice == "required" or isinstance(choice, NamedToolChoice)):
        raise APIError(400, "response_format and tool_choice required/named both constrain the answer; send one",
                       param="response_format", code="invalid_value")
    call_ids: set[str] = set()
    for i, m in enumerate(body.messages):
        if m.tool_calls and m.role != "assistant":
            raise APIError(400, f"messages[{i}] has tool_calls but role `{m.role}`; only assistant messages call "
                                "tools", param=f"messages.{i}.tool_calls", code="invalid_value")
        for c in m.tool_calls or ():
            call_ids.add(c.id)
        if m.role == "tool":
            if not m.tool_call_id:
                raise APIError(400, f"messages[{i}] has role `tool` but no tool_call_id; give the id of the call it "
                                    "answers", param=f"messages.{i}.tool_call_id", code="invalid_value")
            if m.tool_call_id not in call_ids:
                raise APIError(400, f"messages[{i}].tool_call_id `{m.tool_call_id}` answers no earlier assistant "
                                    "tool call", param=f"messages.{i}.tool_call_id", code="invalid_value")


def wire_messages(messages) -> list[dict]:
    """The conversation in OpenAI wire form (content as text; names, tool calls and ids kept), as engines take it."""
    out = []
    for m in messages:
        d: dict = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if not d["content"]:
                d["content"] = None
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:  # any role: the chat template renders it where it has a place for it
            d["name"] = m.name
        out.append(d)
    return out


# --- prompt rendering (in-process engines) ------------------------------------------------------------------

def renders_tools(tok) -> bool:
    """Does this tokenizer's chat template put the `tools` it is given into the prompt?"""
    probe = "probe_" + os.urandom(4).hex()
    tools = [{"type": "function", "function": {"name": probe, "description": "d", "parameters": {"type": "object"}}}]
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "x"}], tools=tools, add_generation_prompt=True,
                                       tokenize=False)
    except Exception:  # a template that refuses the keyword or the shape renders no tools we could use
        return False
    return probe in text


def default_parser(tok, native: bool) -> str:
    """vLLM tool parser for a version that names none: from the call syntax the chat template teaches (the
    template is what the model was trained on); `hermes` where the gateway renders the tools itself."""
    if not native:
        return "hermes"
    template = tok.chat_template if isinstance(tok.chat_template, str) else json.dumps(tok.chat_template)
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|start_header_id|>" in template or "<|python_tag|>" in template:
        return "llama3_json"
    return "hermes"  # <tool_call> (Qwen2/2.5, Hermes, and the common default)


# Short on purpose: small models have small contexts (the embedded default's is 512 tokens, one a character).
FALLBACK_PREAMBLE = ("Functions you can call (JSON):\n<tools>\n{tools}\n</tools>\nTo call one, answer "
                     '<tool_call>{{"name": <name>, "arguments": <JSON object>}}</tool_call>')


def fallback_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The conversation rewritten for a template that does not render tools (the rule in the module docstring)."""
    out: list[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        named = {"name": m["name"]} if m.get("name") is not None else {}  # the participant's name stays
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join("<tool_call>" + _compact({"name": c["function"]["name"],
                                                         "arguments": _arguments(c["function"]["arguments"])})
                              + "</tool_call>" for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (content + "\n" if content else "") + calls, **named})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content, **named})
    if tools:
        listing = FALLBACK_PREAMBLE.format(tools="\n".join(
            _compact({k: v for k, v in t["function"].items() if k in ("name", "description", "parameters")})
            for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + listing}
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out


def native_messages(messages: list[dict]) -> list[dict]:
    """The conversation for a template that renders tools: call arguments as objects (Qwen's and Llama-3's
    templates write them with `tojson`; a string would come out quoted), as vLLM's renderer does."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [{**c, "function": {**c["function"], "arguments": _arguments(c["function"]["arguments"])}}
                     for c in m["tool_calls"]]
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


def check_no_special_tokens(tok, tools: list[dict] | None, messages: list[dict]) -> None:
    """Template text is tokenized with its special tokens: tool definitions and call arguments a native template
    renders must not spell one (they could close a turn and open another role's)."""
    specials = [s for s in getattr(tok, "all_special_tokens", []) if s]
    specials += [t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if getattr(t, "special", False)]
    if not specials:
        return
    parts = [("tools", json.dumps(tools))] if tools else []
    parts += [(f"messages.{i}.tool_calls", json.dumps(m["tool_calls"])) for i, m in enumerate(messages)
              if m.get("tool_calls")]
    parts += [(f"messages.{i}.tool_call_id", m["tool_call_id"]) for i, m in enumerate(messages) if m.get("tool_call_id")]
    for param, text in parts:
        for s in specials:
            if s in text:
                raise EngineBadRequest(f"{param} contains the special token {s!r}; remove it", param=param,
                                       code="invalid_value")


def _compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _arguments(raw):
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw
