"""A Redis client that may fail but never hurts the request path: short timeouts, no retries, a circuit breaker.

Every optional Redis use in the gateway (reward cache, review queue, response log) shares this shape, because the
failure mode to avoid is the same: a Redis that is down, restarting or partitioned must cost at most one short
timeout, then nothing at all while it stays down, and must be picked up again by itself.

- Timeouts are tens of milliseconds (`socket_timeout`, `socket_connect_timeout`, plus an `asyncio.timeout` around
  each command), and redis-py's own retries are turned off (its default retries would multiply the timeout).
- After a failure the breaker opens for `backoff` seconds (doubling up to `max_backoff`): calls return `None`
  at once without touching the network. When the backoff has passed, one call is let through as a probe
  (half-open); success closes the breaker, failure reopens it for longer.
- redis-py's pool drops a broken connection and dials a new one on the next command, so once Redis is back the
  probe simply succeeds: reconnection needs no extra code.

`call()` never raises: it returns the command's result, or `None` when Redis is unavailable (callers treat
`None` as "not available", so commands whose real answer can be `None` — e.g. GET of a missing key — are told
apart with `ok`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

log = logging.getLogger("aligngate.redis")


@dataclass
class RedisOptions:
    socket_timeout: float = 0.05
    connect_timeout: float = 0.05
    backoff: float = 0.25  # first open period after a failure
    max_backoff: float = 10.0
    max_connections: int = 32


@dataclass
class CallResult:
    ok: bool
    value: Any = None


class SafeRedis:
    """`redis.asyncio.Redis` behind timeouts and a circuit breaker. Create it inside the event loop that uses it."""

    def __init__(self, url: str, options: RedisOptions | None = None, clock: Callable[[], float] = time.monotonic,
                 on_state: Callable[[bool], None] | None = None, on_error: Callable[[], None] | None = None):
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.opt = options or RedisOptions()
        self._clock = clock
        self._on_state = on_state
        self._on_error = on_error
        # a blocking pool: a burst waits (briefly, `timeout`) for a free connection instead of failing at once
        pool = BlockingConnectionPool.from_url(
            url, socket_timeout=self.opt.socket_timeout, socket_connect_timeout=self.opt.connect_timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
            max_connections=self.opt.max_connections, timeout=self.opt.socket_timeout)
        self.client = Redis(connection_pool=pool)
        self.up = True  # optimistic until the first failure
        self._open_until = 0.0
        self._backoff = self.opt.backoff
        self._probing = False
        self.errors = 0
        self.skipped = 0  # calls answered "unavailable" by the open breaker without a network round trip

    def available(self) -> bool:
        """True if a call would go to the network now (breaker closed, or half-open with no probe in flight)."""
        if self.up:
            return True
        return self._clock() >= self._open_until and not self._probing

    async def call(self, fn: Callable[[Any], Awaitable[Any]]) -> CallResult:
        """Run `fn(client)` (e.g. `lambda r: r.get(key)`) unless the breaker is open. Never raises."""
        if not self.up:
            if self._clock() < self._open_until or self._probing:
                self.skipped += 1
                return CallResult(False)
            self._probing = True
        try:
            async with asyncio.timeout(self.opt.socket_timeout * 2 + self.opt.connect_timeout):
                value = await fn(self.client)
        except asyncio.CancelledError:
            self._probing = False
            raise
        except Exception as e:  # noqa: BLE001 — any failure means "Redis unavailable", by design
            self._failed(e)
            return CallResult(False)
        self._probing = False
        if not self.up:
            self.up = True
            self._backoff = self.opt.backoff
            log.info("redis %s reachable again", self.url)
            if self._on_state:
                self._on_state(True)
        return CallResult(True, value)

    def _failed(self, e: BaseException) -> None:
        self.errors += 1
        if self._on_error:
            self._on_error()
        self._probing = False
        was_up = self.up
        self.up = False
        self._open_until = self._clock() + self._backoff
        if not was_up:  # a failed probe: back off further
            self._backoff = min(self._backoff * 2, self.opt.max_backoff)
        else:
            log.warning("redis %s unavailable (%s: %s); serving without it", self.url, type(e).__name__, e)
            if self._on_state:
                self._on_state(False)

    async def close(self) -> None:
        try:
            await self.client.aclose()
            await self.client.connection_pool.disconnect()
        except Exception:  # noqa: BLE001
            pass
