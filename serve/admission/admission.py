"""Overload protection per version: at most `max_concurrency` requests in flight and `max_queue` waiting (FIFO);
a request beyond that, or one that waits longer than `queue_timeout_s`, gets a 503 with Retry-After at once
instead of joining an unbounded line (latency that grows without limit helps nobody; a 503 lets a client or a
load balancer go elsewhere). Process-local on purpose: it protects this replica's engines.
"""

from __future__ import annotations

import asyncio
from collections import deque

from serve.admission.adaptive import AdaptiveLimit
from serve.config import Limits, VersionSpec


class Overloaded(Exception):
    pass


class Slots:
    """A FIFO semaphore with a bounded wait line. A released slot is handed to the oldest waiter directly, so a
    newcomer cannot overtake the queue."""

    def __init__(self, limit: int, max_queue: int, adaptive: AdaptiveLimit | None = None):
        self.max_limit, self.max_queue = limit, max_queue
        self.adaptive = adaptive  # latency-bounded mode (serve/admission/adaptive.py): the limit and the wait move
        self.active = 0
        self.waiters: deque[asyncio.Future] = deque()

    @property
    def limit(self) -> int:
        return self.adaptive.limit if self.adaptive is not None else self.max_limit

    async def acquire(self, timeout_s: float) -> None:
        if self.active < self.limit and not self.waiters:
            self.active += 1
            return
        if self.adaptive is not None:
            self.adaptive.saturated = True
            timeout_s = self.adaptive.queue_wait_s(timeout_s)
        if len(self.waiters) >= self.max_queue:
            raise Overloaded(f"{self.active} requests in flight and {len(self.waiters)} waiting (the limits)")
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except BaseException as e:
            if fut.done() and not fut.cancelled():
                self._hand_over()  # the slot was handed over just as we gave up: pass it on
            else:
                fut.cancel()
                try:
                    self.waiters.remove(fut)
                except ValueError:
                    pass
            if isinstance(e, TimeoutError):
                raise Overloaded(f"no slot freed within {timeout_s:g} s") from None
            raise

    def release(self, tpot_s: float | None = None, decode_s: float | None = None, ttft_s: float | None = None) -> None:
        """A request is done (its TPOT, decode time and engine TTFT feed the adaptive limit, when on)."""
        if self.adaptive is not None:
            self.adaptive.observe(tpot_s, decode_s, ttft_s)
            if self.active > self.limit:  # the limit shrank: this slot is retired, not handed on
                self.active -= 1
                return
        self._hand_over()
        if self.adaptive is not None:
            self._wake()

    def _hand_over(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to this waiter: `active` stays the same
                return
        self.active = max(0, self.active - 1)

    def _wake(self) -> None:
        """The limit grew: hand the new slots to the oldest waiters."""
        while self.waiters and self.active < self.limit:
            fut = self.waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)


class Admission:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.slots: dict[str, Slots] = {}

    def forget(self, name: str) -> None:
        """A removed version: its slots go (a request still holding one keeps its own reference)."""
        self.slots.pop(name, None)

    def for_version(self, name: str, spec: VersionSpec | None) -> Slots:
        s = self.slots.get(name)
        if s is None:
            conc = (spec.max_concurrency if spec else None) or self.limits.max_concurrency
            queue = spec.max_queue if spec and spec.max_queue is not None else self.limits.max_queue
            a = self.limits.adaptive
            adaptive = None if a is None else AdaptiveLimit(conc, a.min_concurrency, a.tolerance, a.ttft_tolerance,
                                                            queue_wait_share=a.queue_wait_share)
            s = self.slots[name] = Slots(conc, queue, adaptive)
        return s
