"""A pure ASGI guard in front of the app for POST bodies: JSON content type (415) and a size cap (413).

Only POSTs to a path that declares POST are guarded: any other request goes straight to routing, so a POST to a
GET-only path is a 405 with `Allow` and a POST to no path a 404, not a 415 about its body (schemathesis
`unsupported_method`).

Written as raw ASGI rather than a Starlette `BaseHTTPMiddleware` because that wrapper adds a task and a memory
stream per request and breaks disconnect detection for streaming responses; this one reads the body once,
replays it to the app, and then hands over the real `receive` so the app still sees `http.disconnect`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from serve.api.errors import error_body

_JSON_TYPES = (b"application/json",)


class BodyGuard:
    def __init__(self, app, max_bytes: int, routes: Callable[[], Iterable] = tuple):
        self.app = app
        self.max_bytes = max_bytes
        self.routes = routes  # the app's routes, read once on the first POST (all are declared by then)
        self._static: frozenset[str] | None = None
        self._patterns: list[re.Pattern] = []

    def _declares_post(self, path: str) -> bool:
        if self._static is None:
            posts = [r for r in self.routes() if "POST" in (getattr(r, "methods", None) or ())]
            self._static = frozenset(r.path for r in posts if "{" not in r.path)
            self._patterns = [r.path_regex for r in posts if "{" in r.path]
        return path in self._static or any(p.match(path) for p in self._patterns)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not self._declares_post(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype not in _JSON_TYPES:
            shown = ctype.decode("latin-1") or "none"
            return await _reply(send, 415, f"Content-Type must be application/json (got {shown}); send a JSON body",
                                "unsupported_media_type")
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _reply(send, 400, "invalid Content-Length header", "invalid_header")
            if size > self.max_bytes:
                return await _reply(send, 413, _too_large(size, self.max_bytes), "request_too_large")
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _reply(send, 413, _too_large(len(body), self.max_bytes), "request_too_large")

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(size: int, limit: int) -> str:
    return f"request body is {size} bytes, over the {limit}-byte limit; send fewer or shorter messages"


async def _reply(send, status: int, message: str, code: str) -> None:
    import json

    payload = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
