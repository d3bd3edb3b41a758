"""A request's watch (client disconnect, deadline) and its server-sent-event response, without a task group.

Why not Starlette's `StreamingResponse` and `asyncio.timeout` per step: under uvicorn (ASGI spec 2.3) Starlette runs
every stream inside an anyio task group, with a second task that waits for `http.disconnect`; that was 0.13 ms of
the gateway's own 0.69 ms CPU per streamed request (benchmarks `overhead`; the spec-2.4 path that skips it would
also skip disconnect detection, since uvicorn's `send` ignores a closed connection silently). An `asyncio.timeout`
around every step of a stream is a context object, a timer and a `current_task()` per token.

Here each request gets one watcher task that awaits `receive()` and one timer at its deadline. Whichever fires
first cancels the request's own task wherever that task waits (a queue slot, the first token, the next token, a
slow client's socket) and records why (`client` or `deadline`). The handler reads the reason where it catches the
cancellation (`caught()`): 499 for a client that left, 504 (or an in-band error event once a stream has started)
for the deadline. The engine's generator sees the cancellation at its own `await`, which aborts the engine
request. `stop()` disarms both; it must run before a response's last message, because uvicorn answers `receive()`
with `http.disconnect` once a response is complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Literal

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Reason = Literal["client", "deadline"]


class RequestTimeout(Exception):
    """The request's deadline passed (thrown into a stream's body so that it reports the timeout itself)."""


class RequestWatch:
    """Cancels the task that made it when the client disconnects or `deadline_at` passes. Always `stop()` it."""

    __slots__ = ("task", "reason", "_watcher", "_timer")

    def __init__(self, receive: Receive):
        self.task = asyncio.current_task()
        self.reason: Reason | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task | None = asyncio.ensure_future(self._watch(receive))

    def deadline_at(self, when: float) -> None:
        """Arm the deadline (loop time)."""
        if self._watcher is not None and when != float("inf"):
            self._timer = asyncio.get_running_loop().call_at(when, self._fire, "deadline")

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._watcher = None
        self._fire("client")

    def _fire(self, reason: Reason) -> None:
        if reason == "deadline":
            self._timer = None  # it has run
        self.stop()
        self.reason = reason
        self.task.cancel()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def caught(self) -> Reason | None:
        """Call in `except asyncio.CancelledError`: why this watch cancelled the task (the cancellation is then
        consumed), or None when the cancellation came from elsewhere and must propagate."""
        reason, self.reason = self.reason, None
        if reason is not None:
            self.task.uncancel()
        return reason


class EventStream(Response):
    """An ASGI `text/event-stream` response over an async iterator of byte chunks, watched by `watch`.

    The iterator is closed however the response ends. A client that disconnects ends it quietly (nothing is left to
    send to); a deadline that passes while a slow client holds up a write is thrown into the body as
    `RequestTimeout`, for its bookkeeping. A `Response` subclass only so that FastAPI passes it through."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], watch: RequestWatch, headers: Mapping[str, str]):
        # Response.__init__ would render a body; like StreamingResponse, only the headers are Starlette's
        self.status_code, self.background = 200, None
        self.body_iterator, self.watch = body, watch
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, watch = self.body_iterator, self.watch
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            watch.stop()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            why = watch.caught()
            if why is None:
                raise
            if why == "deadline":
                try:  # the body records the timeout; its error event is not sent to a client that does not read
                    await body.athrow(RequestTimeout())  # type: ignore[attr-defined]
                except (StopAsyncIteration, RequestTimeout):
                    pass
        finally:
            watch.stop()
            await body.aclose()  # type: ignore[attr-defined]
