"""Known OpenAI request fields the gateway does not honour: refused with a 400 that names the field, never dropped.

Why: the request models ignore unknown fields (vendor extensions from other servers and SDKs are harmless), so a
known OpenAI field the gateway has no implementation for would otherwise be dropped without a word, and a client
asking for audio, a web search or a 24-hour cache would believe it got one. Each such field is declared on the
request model with the only values that are harmless to accept (a request that asks for nothing, e.g.
`store: false`, `service_tier: "auto"`, `modalities: ["text"]`), so the OpenAPI document says exactly what is
accepted, and a mixin's before-validator turns any other value into an error that says what to do instead.

Accepted as harmless, with no behaviour attached (so not listed here): `metadata` (tags, nothing is stored),
`safety_identifier` and `prompt_cache_key` (hints for the provider: vLLM's prefix cache needs no key),
`store: false`, `service_tier` `auto`/`default`, `modalities: ["text"]`, `reasoning_effort: "none"` (none of the
served policies reasons), `prompt_cache_retention: "in_memory"` (what vLLM's prefix cache is), `verbosity: null`.
Fields another module honours (`response_format`, `tools`, `tool_choice`, `parallel_tool_calls`, `logit_bias`,
`max_completion_tokens`) are not listed either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

ERROR_TYPE = "unsupported_parameter"  # the pydantic error type; serve/api/errors.py reports it under this code


def _null(v: Any) -> bool:
    return v is None


def _one_of(*ok: Any) -> Callable[[Any], bool]:
    return lambda v: v is None or any(v == x and type(v) is type(x) for x in ok)


# field -> (harmless values, what to do instead)
CHAT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "audio": (_null, "aligngate answers in text only; remove `audio`"),
    "modalities": (_one_of(["text"]), 'aligngate answers in text only; send `["text"]` or leave `modalities` out'),
    "web_search_options": (_null, "aligngate has no web search; remove `web_search_options`"),
    "prediction": (_null, "predicted outputs are not supported; remove `prediction`"),
    "functions": (_null, "the legacy `functions` parameter is not supported; send `tools` instead"),
    "function_call": (_null, "the legacy `function_call` parameter is not supported; send `tool_choice` instead"),
    "reasoning_effort": (_one_of("none"), 'the served policies do not reason; send "none" or leave '
                                          "`reasoning_effort` out"),
    "verbosity": (_null, "`verbosity` is not supported; leave it out"),
    "store": (_one_of(False), "aligngate does not store completions for later retrieval; send `store: false` or "
                              "leave it out (`POST /v1/feedback` rates an answer by its `id`)"),
    "service_tier": (_one_of("auto", "default"), 'aligngate has one service tier; send "auto" or "default" or leave '
                                                 "`service_tier` out"),
    "prompt_cache_retention": (_one_of("in_memory"), 'prompts are cached in memory only (vLLM prefix caching); send '
                                                     '"in_memory" or leave `prompt_cache_retention` out'),
    "prompt_cache_options": (_null, "`prompt_cache_options` is not supported; leave it out"),
    "moderation": (_null, "aligngate does not run moderation policies; remove `moderation`"),
}
COMPLETION: dict[str, tuple[Callable[[Any], bool], str]] = {
    "suffix": (_null, "insertion (`suffix`) is not supported; remove it"),
    # `best_of` is honoured (serve/rewards/best_of.py: the candidate with the highest in-pass reward), declared in schemas
}


def refuse(table: dict[str, tuple[Callable[[Any], bool], str]], field: str, value: Any) -> Any:
    """The value when it is harmless, else a pydantic error located at the field (so the 400 names it)."""
    harmless, why = table[field]
    if harmless(value):
        return value
    raise PydanticCustomError(ERROR_TYPE, "`{field}` is not supported by aligngate: {why}",
                              {"field": field, "why": why})


Null = Annotated[None, Field(description="not supported: only null is accepted")]


class ChatUnhonoured(BaseModel):
    """The chat fields above, declared with their harmless values only (a mixin of ChatCompletionRequest)."""

    audio: Null = None
    modalities: Annotated[list[Literal["text"]], Field(min_length=1, max_length=1)] | None = None
    web_search_options: Null = None
    prediction: Null = None
    functions: Null = None
    function_call: Null = None
    reasoning_effort: Literal["none"] | None = None
    verbosity: Null = None
    store: Literal[False] | None = None
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None  # accepted (a harmless tag)
    service_tier: Literal["auto", "default"] | None = None
    safety_identifier: Annotated[str, Field(max_length=256)] | None = None  # accepted (a harmless identifier)
    prompt_cache_key: str | None = None  # accepted (a hint; vLLM caches prefixes without one)
    prompt_cache_retention: Literal["in_memory"] | None = None
    prompt_cache_options: Null = None
    moderation: Null = None

    @field_validator(*CHAT, mode="before")
    @classmethod
    def _unhonoured(cls, v, info):
        return refuse(CHAT, info.field_name, v)


class CompletionUnhonoured(BaseModel):
    suffix: Null = None

    @field_validator(*COMPLETION, mode="before")
    @classmethod
    def _unhonoured(cls, v, info):
        return refuse(COMPLETION, info.field_name, v)
