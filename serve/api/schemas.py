"""Request bodies at the HTTP edge (pydantic), the subset of the OpenAI API the gateway serves.

Unknown fields are ignored (vendor extensions of other servers and SDKs); known fields are checked strictly so a
mistake gets a 400 that names the field, and a known OpenAI field the gateway does not honour is refused with a 400
that names it (serve/api/unhonoured.py), never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve.api.structured import ResponseFormat
from serve.api.tools import ToolCall, ToolChoice, ToolDef
from serve.api.unhonoured import ChatUnhonoured, CompletionUnhonoured

Role = Literal["system", "developer", "user", "assistant", "tool"]


# JSON Schema's integer: 3 and 3.0 (a JSON number with no fraction), never "3" or true. The models are strict;
# this field type alone lets integral floats through (schemathesis: `"seed": 1e3` was refused), and
# `_Common._json_integers` keeps strings and booleans out.
Int = Annotated[int, Field(strict=False)]
INT_FIELDS = ("max_tokens", "n", "seed", "min_tokens", "max_completion_tokens", "top_logprobs", "best_of")


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Role
    content: str | list[TextPart] | None = None
    # OpenAI's own rule for a participant's name (no blanks, no `<|\\/>`): it is template text, rendered by the
    # chat template where the template has a place for it (serve/api/chat_prompt.py refuses special tokens in it)
    name: str | None = Field(None, pattern=r"^[^\s<|\\/>]+$",
                             description="the participant's name: no whitespace and none of < | \\ / >")
    tool_calls: list[ToolCall] | None = Field(None, description="assistant: the calls it made (sent back)")
    tool_call_id: str | None = Field(None, description="role tool: the id of the call this message answers")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


class _Common(BaseModel):
    # strict: the documented JSON types only ("3" is not an integer, "true" not a boolean), as the schema says
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1, description="the public model name (router picks) or a version name")
    max_tokens: Annotated[Int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[Int, Field(ge=1, le=128)] = 1
    stop: str | list[str] | None = Field(None, json_schema_extra={"anyOf": [  # non-empty, as `_stop_nonempty` checks
        {"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1}},
        {"type": "null"}]})
    seed: Annotated[Int, Field(ge=-(2**63), lt=2**63)] | None = None  # bounds on the int (they were lost on the union)
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    user: str | None = Field(None, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # aligngate extension: per-token in-pass values and token ids in the `aligngate` object (RL rollouts, debugging)
    return_values: bool = False
    # aligngate extension: wait for the audit reward model's score of this answer and return it in
    # `aligngate.audit` (adds the audit batcher's delay to this request only; null when no audit model is set)
    wait_for_audit: bool = False
    # aligngate extension (chat too; OpenAI's legacy completions field): sample k candidates, return the one with
    # the highest in-pass reward (serve/rewards/best_of.py); checked against the version's best_of_max once routed
    best_of: Int | None = None
    # vLLM extensions, honoured because `vllm bench serve` and vLLM users send them
    ignore_eos: bool = False
    min_tokens: Annotated[Int, Field(ge=0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_nonempty(cls, v):
        items = [v] if isinstance(v, str) else v
        if items is not None and any(s == "" for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @field_validator(*INT_FIELDS, mode="before", check_fields=False)
    @classmethod
    def _json_integers(cls, v):
        if isinstance(v, (str, bytes, bool)):
            raise ValueError("Input should be a valid integer")
        return v

    @model_validator(mode="after")
    def _min_le_max(self):
        most = getattr(self, "max_completion_tokens", None) or self.max_tokens
        if self.min_tokens is not None and most is not None and self.min_tokens > most:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({most})")
        return self

    def stop_list(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


class _LogitBias(BaseModel):
    """`logit_bias`, on chat and legacy completions alike (the engine keeps the value head's reserved slots banned
    whatever is sent, and refuses a bias that would lift a token a constrained request bans)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        None, description="token id (a decimal string) -> bias in [-100, 100], added to the logit before sampling",
        json_schema_extra={"propertyNames": {"pattern": "^[0-9]{1,9}$"}})

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, v):
        for k in v or ():
            if not (k.isascii() and k.isdigit() and len(k) <= 9):
                raise ValueError(f"key {k!r} is not a token id; keys are token ids as decimal strings, e.g. \"50256\"")
        return v

    def logit_bias_ids(self) -> dict[int, float] | None:
        return {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None


class ChatCompletionRequest(ChatUnhonoured, _LogitBias, _Common):
    messages: list[ChatMessage] = Field(min_length=1, description="at least one message")
    max_completion_tokens: Annotated[Int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[Int, Field(ge=0, le=20)] | None = None
    # structured outputs and tools (serve/api/structured.py, serve/api/tools.py); cross-field rules in tools.check_request
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(CompletionUnhonoured, _LogitBias, _Common):
    prompt: str | list[str] = Field(description="a string (a one-element list is accepted)", json_schema_extra={
        "anyOf": [{"type": "string", "minLength": 1},  # documented exactly; `_one_prompt` gives the messages
                  {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1}]})
    logprobs: Annotated[Int, Field(ge=0, le=20)] | None = None  # an integer here (a boolean in chat)
    echo: bool = False

    @field_validator("logprobs", mode="before")
    @classmethod
    def _json_integer_logprobs(cls, v):
        return cls._json_integers(v)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send one prompt per request (a string, or a list with exactly one string)")
            v = v[0]
        if v == "":
            raise ValueError("the prompt is empty; send at least one character")
        return v


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
