"""Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.

Client mistakes are 4xx with a message that says what to fix; nothing a client sends produces a 500.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from serve.logs import get_logger
from serve.api.unhonoured import ERROR_TYPE as UNSUPPORTED

log = get_logger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


def error_sse(message: str, type: str, code: str | None = None) -> bytes:
    """An error after a stream has started: one SSE event in the error shape (the status is already 200)."""
    return b"data: " + json.dumps(error_body(message, type, None, code)).encode() + b"\n\n"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """(message, param, code) of the first error."""
    message, param = _first_error(exc)
    errors = exc.errors()
    unsupported = bool(errors) and errors[0].get("type") == UNSUPPORTED
    return message, param, UNSUPPORTED if unsupported else "invalid_value"


def _first_error(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if e.get("type") == UNSUPPORTED:  # a known field the gateway does not honour: the message names it
        return e.get("msg", "unsupported parameter"), param
    if e.get("type") == "json_invalid":
        return f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')}); send a JSON object", None
    if e.get("type") == "missing":
        return f"missing required field `{param}`", param
    msg = e.get("msg", "invalid value")
    if param:
        return f"invalid `{param}`: {msg}", param
    if e.get("type") in ("model_type", "model_attributes_type", "dict_type"):
        return f"invalid request body: {msg}; send a JSON object", None
    return f"invalid request: {msg.removeprefix('Value error, ')}", None  # a rule between fields


def allowed_methods(app, scope) -> list[str]:
    """Every method some route declares for this path (a path may have one route per method: /admin/versions)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        if getattr(route, "methods", None) and route.matches({**scope, "type": "http"})[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)  # (FastAPI's routes do not add HEAD to GET, and HEAD gets a 405 too)


def install(app: FastAPI) -> None:
    """The handlers below; the OpenAPI document says so (serve/api/openapi_doc.py)."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        message, param, code = _validation_message(exc)
        return error_response(400, message, "invalid_request_error", param, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette's Allow names the first matching route's methods only
            allowed = allowed_methods(request.app, request.scope)
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            return error_response(405, f"method {request.method} is not allowed on {request.url.path}; use "
                                       f"{' or '.join(allowed)}", kind, headers=headers)
        return error_response(exc.status_code, str(exc.detail), kind, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.error("unhandled_error", error=repr(exc), exc_info=exc)
        return error_response(500, "internal error in the gateway; it has been logged", "internal_error")
