"""`POST /v1/responses`: OpenAI's Responses API for text, answered by the chat completions path.

A request becomes a chat request (`instructions` as the first system message, `input` as the messages) and goes
through `serve.api.completions.handle` like any chat completion: routing, admission, the engine, rewards and the monitor
are the same code. Only the rendering differs (`ResponsesRender`): a `response` object, or the event stream the
OpenAI SDK reads (`client.responses.create(..., stream=True)`, `client.responses.stream(...)`), with the gateway's
`aligngate` object (version, reward) in the final response.

Only text is served: fields for tools, stored state (`previous_response_id`, `store: true`, `conversation`),
background runs, structured `text.format`s and reasoning are declared with their harmless values only and refused
otherwise with a 400 that names the field (serve/api/unhonoured.py), as are input items other than messages and
content parts other than text.

A response cut by `max_output_tokens` has `status: "incomplete"` (with `incomplete_details`), and a stream still ends
with `response.completed` carrying it, as vLLM's own Responses server does: the SDK's `stream.get_final_response()`
only reads `response.completed`.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response

from serve.api import completions
from serve.api import openai_format as fmt
from serve.admission.auth import KeyPolicy
from serve.engines.engine import Delta
from serve.api.errors import APIError
from serve.gateway import Gateway
from serve.api.schemas import ChatCompletionRequest, ChatMessage, Int
from serve.api.unhonoured import ERROR_TYPE, Null, refuse

Role = Literal["system", "developer", "user", "assistant"]

# Responses field -> (harmless values, what to do instead); each is declared below with those values only
UNHONOURED: dict[str, tuple[Any, str]] = {
    "tools": (lambda v: v is None or v == [], "aligngate serves text only on /v1/responses; remove `tools` (tool "
                                              "calls are served on /v1/chat/completions)"),
    "tool_choice": (lambda v: v in (None, "none", "auto"), 'no tools are served here; send "none" or "auto" or '
                                                          "leave `tool_choice` out"),
    "max_tool_calls": (lambda v: v is None, "no tools are served here; remove `max_tool_calls`"),
    "previous_response_id": (lambda v: v is None, "responses are not stored; send the whole conversation in `input` "
                                                  "instead of `previous_response_id`"),
    "conversation": (lambda v: v is None, "conversations are not stored; send the whole conversation in `input`"),
    "store": (lambda v: v is None or v is False, "responses are not stored for later retrieval; send `store: false` "
                                                 "or leave it out"),
    "background": (lambda v: v is None or v is False, "background responses are not supported; send `background: "
                                                      "false` or leave it out"),
    "background_options": (lambda v: v is None, "background responses are not supported; remove "
                                                "`background_options`"),
    "include": (lambda v: v is None or v == [], "no extra output data is available; send `include: []` or leave it "
                                                "out"),
    "prompt": (lambda v: v is None, "stored prompt templates are not supported; send `input` (and `instructions`)"),
    "reasoning": (lambda v: v is None, "the served policies do not reason; remove `reasoning`"),
    "text": (lambda v: v is None or (isinstance(v, dict) and set(v) <= {"format"} and v.get("format") in
                                     (None, {"type": "text"})),
             'only plain text output is served here; send `text: {"format": {"type": "text"}}` or leave `text` out'),
    "top_logprobs": (lambda v: v is None or (type(v) in (int, float) and v == 0),
                     "log-probabilities are served on /v1/chat/completions; send 0 or leave `top_logprobs` out"),
    "truncation": (lambda v: v is None or v == "disabled", 'input is never truncated; send "disabled" or leave '
                                                           "`truncation` out (a prompt over the context is a 400)"),
    "service_tier": (lambda v: v is None or v in ("auto", "default"), 'aligngate has one service tier; send "auto" or '
                                                                      '"default" or leave `service_tier` out'),
    "prompt_cache_retention": (lambda v: v is None or v == "in_memory", 'prompts are cached in memory only; send '
                                                                        '"in_memory" or leave it out'),
    "prompt_cache_options": (lambda v: v is None, "`prompt_cache_options` is not supported; leave it out"),
    "stream_options": (lambda v: v is None or (isinstance(v, dict) and v.get("include_obfuscation") in (None, False)
                                               and set(v) <= {"include_obfuscation"}),
                       "stream obfuscation is not supported; send `include_obfuscation: false` or leave it out"),
    "context_management": (lambda v: v is None, "context management is not supported; remove `context_management`"),
    "moderation": (lambda v: v is None, "aligngate does not run moderation policies; remove `moderation`"),
    "image": (lambda v: v is None, "image options are not supported; remove `image`"),
    "access_programs": (lambda v: v is None, "`access_programs` is not supported; remove it"),
}


class InputText(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["input_text", "output_text"]  # output_text: an earlier answer sent back as an assistant message
    text: str


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["message"] = "message"
    role: Role
    content: str | list[InputText]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


# `text` and `stream_options` are closed objects (additionalProperties: false): their other keys (`verbosity`, ...)
# are options the gateway does not honour, refused by `_unhonoured` below, and the schema says so
class TextFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["text"]


class TextConfig(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    format: TextFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_obfuscation: Literal[False] | None = None


class ResponsesRequest(BaseModel):
    """The Responses API request, text only. Unknown fields are ignored, as on the other routes."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1, description="the public model name (router picks) or a version name")
    input: Annotated[str, Field(min_length=1)] | Annotated[list[InputMessage], Field(min_length=1)] = Field(
        description="a string (one user message) or a list of message items")
    instructions: str | None = Field(None, description="a system message put before the input")
    max_output_tokens: Annotated[Int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stream: bool = False
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None  # echoed in the response
    user: str | None = Field(None, max_length=256)
    safety_identifier: Annotated[str, Field(max_length=256)] | None = None  # accepted (a harmless identifier)
    prompt_cache_key: str | None = None  # accepted (a hint; vLLM caches prefixes without one)
    parallel_tool_calls: bool | None = None  # accepted: no tools are served, so nothing runs in parallel
    # aligngate extensions, as on chat completions
    return_values: bool = False
    wait_for_audit: bool = False
    # refused unless harmless (UNHONOURED above)
    tools: Annotated[list[dict], Field(max_length=0)] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    max_tool_calls: Null = None
    previous_response_id: Null = None
    conversation: Null = None
    store: Literal[False] | None = None
    background: Literal[False] | None = None
    background_options: Null = None
    include: Annotated[list[str], Field(max_length=0)] | None = None
    prompt: Null = None
    reasoning: Null = None
    text: TextConfig | None = None
    top_logprobs: Annotated[Int, Field(ge=0, le=0)] | None = None
    truncation: Literal["disabled"] | None = None
    service_tier: Literal["auto", "default"] | None = None
    prompt_cache_retention: Literal["in_memory"] | None = None
    prompt_cache_options: Null = None
    stream_options: StreamOptions | None = None
    context_management: Null = None
    moderation: Null = None
    image: Null = None
    access_programs: Null = None

    @field_validator(*UNHONOURED, mode="before")
    @classmethod
    def _unhonoured(cls, v, info):
        return refuse(UNHONOURED, info.field_name, v)

    @field_validator("input", mode="before")
    @classmethod
    def _text_items_only(cls, v):
        """Say which item or part is not text (the union's own error would list every alternative)."""
        if not isinstance(v, list):
            return v
        for i, item in enumerate(v):
            if not isinstance(item, dict):
                continue
            kind = item.get("type", "message")
            if kind != "message":
                raise PydanticCustomError(ERROR_TYPE, "input[{i}] is a `{kind}` item; only message items (with text "
                                                      "content) are supported", {"i": i, "kind": str(kind)[:40]})
            for j, part in enumerate(item.get("content") if isinstance(item.get("content"), list) else ()):
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind not in ("input_text", "output_text"):
                    raise PydanticCustomError(ERROR_TYPE, "input[{i}].content[{j}] is `{kind}`; only `input_text` "
                                                          "parts are supported",
                                              {"i": i, "j": j, "kind": kind[:40]})
        return v

    @field_validator("top_logprobs", mode="before")
    @classmethod
    def _json_integer(cls, v):
        if isinstance(v, (str, bytes, bool)):
            raise ValueError("Input should be a valid integer")
        return v

    @field_validator("max_output_tokens", mode="before")
    @classmethod
    def _json_integer_max(cls, v):
        return cls._json_integer(v)

    def to_chat(self) -> ChatCompletionRequest:
        """The same request as a chat completion (constructed: every field was validated above)."""
        messages = [ChatMessage.model_construct(role="system", content=self.instructions)] if self.instructions else []
        if isinstance(self.input, str):
            messages.append(ChatMessage.model_construct(role="user", content=self.input))
        else:
            messages += [ChatMessage.model_construct(role=m.role, content=m.text()) for m in self.input]
        return ChatCompletionRequest.model_construct(
            model=self.model, messages=messages, max_tokens=self.max_output_tokens, temperature=self.temperature,
            top_p=self.top_p, user=self.user, stream=self.stream, return_values=self.return_values,
            wait_for_audit=self.wait_for_audit)


# the chat path names its own fields in errors; a Responses client sent these
_PARAMS = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens", "messages": "input"}


async def handle(gw: Gateway, request: Request, body: ResponsesRequest, key: KeyPolicy | None,
                 guards: completions.Guards) -> Response:
    try:
        return await completions.handle(gw, request, body.to_chat(), key, guards, ResponsesRender(body))
    except APIError as e:
        if e.param in _PARAMS:
            e.message = e.message.replace(e.param, _PARAMS[e.param])
            e.param = _PARAMS[e.param]
        raise


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    # cached and reasoning tokens are not counted separately (vLLM's prefix cache does not report per request here)
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


class ResponsesRender:
    """The chat path's answer in the Responses shape (serve/api/completions.py `Render`)."""

    endpoint = "responses"

    def __init__(self, req: ResponsesRequest):
        self.req = req
        self.created = int(time.time())

    def new_id(self) -> str:
        return "resp_" + os.urandom(16).hex()

    def response(self, rid: str, status: str, output: list, usage: dict | None = None,
                 error: dict | None = None) -> dict:
        r = self.req
        return {
            "id": rid, "object": "response", "created_at": self.created, "model": r.model, "status": status,
            "completed_at": int(time.time()) if status in ("completed", "incomplete") else None, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": r.instructions, "max_output_tokens": r.max_output_tokens, "metadata": r.metadata or {},
            "output": output, "parallel_tool_calls": bool(r.parallel_tool_calls), "previous_response_id": None,
            "reasoning": None, "store": False, "temperature": r.temperature, "text": {"format": {"type": "text"}},
            "tool_choice": "none", "tools": [], "top_p": r.top_p, "truncation": "disabled", "usage": usage,
            "user": r.user, "background": False, "service_tier": "default",
        }

    @staticmethod
    def message(item_id: str, text: str, status: str) -> dict:
        return {"type": "message", "id": item_id, "role": "assistant", "status": status,
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}

    def body(self, acc: fmt.Accumulator, rid: str, prompt_tokens: int, completion_tokens: int, extra: dict) -> dict:
        status = "incomplete" if acc.finish[0] == "length" else "completed"
        item = self.message("msg_" + rid[5:], "".join(acc.text[0]), status)
        return {**self.response(rid, status, [item], _usage(prompt_tokens, completion_tokens)), **extra}

    def chunker(self, rid: str, extra: dict) -> ResponsesChunker:
        return ResponsesChunker(self, rid, extra)


class ResponsesChunker:
    """The Responses event stream: created, in_progress, output_item.added, content_part.added, then one
    output_text.delta per step, then output_text.done, content_part.done, output_item.done, completed (with usage
    and the `aligngate` object). Each event has `event:` and `data:` lines and a `sequence_number`."""

    def __init__(self, render: ResponsesRender, rid: str, extra: dict):
        self.render, self.rid, self.extra = render, rid, extra
        self.item_id = "msg_" + rid[5:]
        self.seq = 0
        self.started = False
        self.text: list[str] = []
        self.finish: str | None = None

    def _event(self, kind: str, fields: dict) -> bytes:
        body = fmt.sse({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        return b"event: " + kind.encode() + b"\n" + body

    def opening(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        r = {**self.render.response(self.rid, "in_progress", []), **self.extra}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return (self._event("response.created", {"response": r})
                + self._event("response.in_progress", {"response": r})
                + self._event("response.output_item.added", {"output_index": 0, "item": {
                    "type": "message", "id": self.item_id, "role": "assistant", "status": "in_progress",
                    "content": []}})
                + self._event("response.content_part.added", {**where, "part": part}))

    def chunk(self, d: Delta) -> bytes:
        if d.finish_reason:
            self.finish = d.finish_reason
        if d.index != 0 or not d.text:
            return b""
        self.text.append(d.text)
        return self._event("response.output_text.delta", {"item_id": self.item_id, "output_index": 0,
                                                          "content_index": 0, "delta": d.text, "logprobs": []})

    def tail(self, prompt_tokens: int, completion_tokens: int, include_usage: bool, fields: dict) -> bytes:
        text = "".join(self.text)
        status = "incomplete" if self.finish == "length" else "completed"
        item = self.render.message(self.item_id, text, status)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        # the reward joins the version and routing sent in the first event
        ag = {**self.extra.get("aligngate", {}), **fields.get("aligngate", {})}
        final = {**self.render.response(self.rid, status, [item], _usage(prompt_tokens, completion_tokens)),
                 **self.extra, **fields, "aligngate": ag}
        return (self.opening()
                + self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
                + self._event("response.content_part.done", {**where, "part": item["content"][0]})
                + self._event("response.output_item.done", {"output_index": 0, "item": item})
                + self._event("response.completed", {"response": final}))

    def error(self, message: str, type: str, code: str | None) -> bytes:
        """A failure once the stream has started: an `error` event, then `response.failed` (the SDK raises on
        neither; a client reads the reason from the failed response's `error`)."""
        failed = {**self.render.response(self.rid, "failed", [], error={"code": code or "server_error",
                                                                         "message": message}), **self.extra}
        return (self.opening()
                + self._event("error", {"code": code, "message": message, "param": None})
                + self._event("response.failed", {"response": failed}))
