"""Graceful drain on SIGTERM (and a first Ctrl-C): stop taking work, finish what is in flight, then exit 0.

What uvicorn already does on its own: close the listening socket, close idle keep-alive connections, wait up to
`timeout_graceful_shutdown` for connections with a response in progress, then run the lifespan shutdown (which
stops the engines — after the streams, so none is cut by its engine going away). What it does not do, and this
module adds:

- A load balancer's view. From the signal on, `/ready` answers 503 and new work (inference, admin, feedback)
  gets a 503 with Retry-After and `Connection: close`, while the listener stays open: a client or balancer that
  still sends here is told to go elsewhere instead of finding a refused connection. The listener stays open
  until nothing is in flight (or `drain_timeout_s` has passed), and at least `drain_grace_s` (default 0; set it
  to the time the balancer needs to notice /ready, e.g. a few seconds on Kubernetes).
- The bound comes from config (`drain_timeout_s`) instead of a constant; uvicorn then gets a short grace of its
  own for connections still open at the bound.
- Exit status 0 after a drain that completed (uvicorn would re-raise the signal and die by it). A second signal
  skips the drain (uvicorn's own shutdown), a third SIGINT forces exit: an operator can always cut it short.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from types import FrameType

import uvicorn

from serve.api.errors import error_body
from serve.logs import get_logger

log = get_logger(__name__)

# Probes and scrapes neither count as work in flight nor are refused while draining (/ready says 503 itself).
OPS_PATHS = frozenset({"/ready", "/health", "/metrics"})


class Drain:
    """The drain state shared by the server (which starts it) and the app (which refuses work and counts it)."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0  # requests in progress (responses not finished), ops paths excluded
        self.started_at: float | None = None
        self.refused = 0

    def begin(self) -> None:
        if not self.draining:
            self.draining, self.started_at = True, time.monotonic()


class DrainGuard:
    """Pure ASGI middleware (no per-chunk overhead on streams): counts work in flight, refuses new work when
    draining."""

    def __init__(self, app, drain: Drain, retry_after_s: int = 5):
        self.app, self.drain, self.retry_after = app, drain, str(retry_after_s).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPS_PATHS:
            return await self.app(scope, receive, send)
        d = self.drain
        if d.draining:
            d.refused += 1
            body = json.dumps(error_body("this gateway is shutting down; retry on another replica",
                                         "service_unavailable", code="draining")).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", self.retry_after), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        d.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            d.active -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain in front of its own shutdown (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout_s: float = 30.0, grace_s: float = 0.0):
        super().__init__(config)
        self.drain, self.timeout_s, self.grace_s = drain, timeout_s, grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1 or self._loop is None or self.should_exit:
            return super().handle_exit(sig, frame)  # impatient: uvicorn's own shutdown (and re-raise)
        self.drain.begin()
        # a signal handler runs between two bytecodes of the loop's thread: hand over to the loop properly
        self._loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        d = self.drain
        t0 = time.monotonic()
        log.warning("drain_started", signal=signal.Signals(sig).name, in_flight=d.active, timeout_s=self.timeout_s,
                    grace_s=self.grace_s)
        while time.monotonic() - t0 < self.timeout_s and (d.active > 0 or time.monotonic() - t0 < self.grace_s):
            if self.should_exit:  # a second signal took over
                return
            await asyncio.sleep(0.05)
        log.warning("drain_done" if d.active == 0 else "drain_timeout", left_in_flight=d.active, refused=d.refused,
                    drain_s=round(time.monotonic() - t0, 2))
        self.should_exit = True  # uvicorn: close the listener, wait briefly for open connections, lifespan shutdown
