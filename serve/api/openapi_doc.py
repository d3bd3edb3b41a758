"""The OpenAPI document says what the server enforces: the configured limits and the cross-field rules JSON Schema can
express, on top of what the pydantic models already say.

Why: the request models are static, but some bounds come from the config (`limits.max_n`, `max_stop`,
`max_messages`, `max_tokens_cap`), and one rule spans two fields (`top_logprobs` needs `logprobs: true`). Without
them in the document a schema-valid request is refused (schemathesis `positive_data_acceptance`). What JSON Schema
cannot say stays a documented 400: `min_tokens` above `max_tokens`, a prompt plus `max_tokens` over the version's
context, a prompt over `limits.max_prompt_tokens`.
"""

from __future__ import annotations

import json

from fastapi import FastAPI

from serve.config import Limits
from serve.api.schemas import ErrorResponse

MAX_TOKENS = {"ChatCompletionRequest": ("max_tokens", "max_completion_tokens"), "CompletionRequest": ("max_tokens",),
              "ResponsesRequest": ("max_output_tokens",)}


def _typed(prop: dict, kind: str) -> dict | None:
    """The alternative of a property with JSON type `kind` (the property itself, or one of its anyOf)."""
    if prop.get("type") == kind:
        return prop
    return next((alt for alt in prop.get("anyOf", ()) if alt.get("type") == kind), None)


def _cap(prop: dict | None, kind: str, key: str, limit: int | None) -> None:
    if prop is None or limit is None or (alt := _typed(prop, kind)) is None:
        return
    alt[key] = min(alt.get(key, limit), limit)


def document(schema: dict, limits: Limits) -> dict:
    comps = schema.get("components", {}).get("schemas", {})
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = comps.get(name, {}).get("properties", {})
        _cap(props.get("n"), "integer", "maximum", limits.max_n)
        _cap(props.get("stop"), "array", "maxItems", limits.max_stop)
        _cap(props.get("messages"), "array", "maxItems", limits.max_messages)
        if (seed := _typed(props.get("seed", {}), "integer")) is not None:  # exact: pydantic writes 2**63 as a float,
            seed.pop("exclusiveMaximum", None)  # 9.223372036854776e18, and fuzzers then send 2**63 + 190
            seed.update(minimum=-(2**63), maximum=2**63 - 1)
    for name, fields in MAX_TOKENS.items():
        props = comps.get(name, {}).get("properties", {})
        for field in fields:
            _cap(props.get(field), "integer", "maximum", limits.max_tokens_cap)
    chat = comps.get("ChatCompletionRequest")
    if chat is not None:  # top_logprobs (a number) needs logprobs: true (serve/api/completions.py `_check_limits`)
        chat["if"] = {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}}
        chat["then"] = {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}
    return schema


def document_error_shape(app: FastAPI) -> None:
    """Make the OpenAPI schema say what serve/api/errors.py's handlers do: a request that fails validation gets a 400
    in the OpenAI error shape, not FastAPI's default 422 `HTTPValidationError` (found by schemathesis: every
    operation with a body or parameter documented a 422 it never sends and not the 400 it does send)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        err = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in err.pop("$defs", {}).items():
            comps.setdefault(name, sub)
        comps.setdefault("ErrorResponse", err)
        shape = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                responses = op.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", {"description": "Invalid request", "content": shape})
        used = json.dumps(schema.get("paths", {}))
        for name in ("HTTPValidationError", "ValidationError"):
            if f'"#/components/schemas/{name}"' not in used:
                comps.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI, limits: Limits) -> None:
    document_error_shape(app)
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        app.openapi_schema = document(build(), limits)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
