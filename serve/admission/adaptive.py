"""Latency-bounded admission for one version: an adaptive concurrency limit and a queue wait tied to latency.

A fixed `max_concurrency` is either too high (at 2x capacity every request in the engine's batch slows down,
and the p99 of the admitted ones grows with the offered load) or too low (throughput left on the table). This
controller keeps the version's time per output token (TPOT, vLLM's definition: (E2E - TTFT) / (tokens - 1))
within `tolerance` x its baseline, the best TPOT the version has shown recently:

- every `interval_s`, the median TPOT of the requests that finished in that interval is compared with the
  baseline (the 10th percentile of those interval medians over the last `baseline_window_s`: a low-load
  reference that one lucky interval on a noisy machine does not set);
- above `tolerance` x baseline: the limit shrinks multiplicatively, at most once per interval, by the overshoot
  (x tolerated / observed, the "gradient" of Netflix's concurrency-limits; at least x `decrease`, at most halved):
  a burst at 2x capacity is met within a second or two, where a fixed x 0.9 took ~10 s to come down from 32;
- the same for the engine's own time to first token (TTFT minus the gateway's queue wait, against its own
  baseline, with `ttft_tolerance`): requests admitted beyond what the engine schedules at once wait inside the
  engine, where TPOT does not show it but TTFT does (vLLM queues past `max_num_seqs`; a burst of prefills
  stretches every step). The queue wait is left out so that the gateway's own line cannot feed the limit;
- otherwise, if the limit was reached during the interval (it is what holds traffic back), it grows additively
  (+ max(1, limit / 8)) up to the configured `max_concurrency`.

A queued request waits at most `queue_wait_share` x the version's recent median decode time (E2E - TTFT: the
service time without any queue wait, so a growing queue cannot feed its own bound; never more than
`limits.queue_timeout_s`): beyond that the queue cannot drain in time and a 503 now serves the client better
than a late answer. The TCP-Vegas / Netflix "gradient" family of limiters works the same way on RTT;
none of the libraries we use exposes one for asyncio (aiolimiter is a fixed-rate bucket), hence this module.

Off by default (`limits.adaptive: null`): a plain bounded FIFO queue (serve/admission/admission.py) keeps throughput
first; turn it on when the admitted requests' latency matters more than the share refused.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class AdaptiveLimit:
    ceiling: int  # the configured max_concurrency
    floor: int = 8
    tolerance: float = 1.2
    ttft_tolerance: float = 2.0
    decrease: float = 0.9  # the least shrink on a slow interval
    max_decrease: float = 0.5  # the most
    interval_s: float = 0.5
    min_samples: int = 8
    baseline_window_s: float = 300.0
    queue_wait_share: float = 0.1
    clock: Callable[[], float] = time.monotonic
    limit: int = 0  # the current limit; starts at `start` (a cold start must not let a burst of `ceiling` in)
    start: int = 32
    saturated: bool = False  # the limit held a request back during the current interval
    _tpots: list[float] = field(default_factory=list)
    _ttfts: list[float] = field(default_factory=list)
    _ttft_medians: deque = field(default_factory=deque)  # (time, median engine TTFT of one interval)
    _decodes: deque = field(default_factory=lambda: deque(maxlen=256))
    _decode_median: float | None = None  # of _decodes, refreshed once per interval (not per queued request)
    _medians: deque = field(default_factory=deque)  # (time, median TPOT of one interval)
    _next: float = 0.0

    def __post_init__(self) -> None:
        self.floor = max(1, min(self.floor, self.ceiling))
        self.limit = self.limit or max(self.floor, min(self.start, self.ceiling))
        self._next = self.clock() + self.interval_s

    @property
    def baseline(self) -> float | None:
        return _low(self._medians)

    @property
    def ttft_baseline(self) -> float | None:
        return _low(self._ttft_medians)

    def queue_wait_s(self, cap_s: float) -> float:
        """How long a request may wait for a slot now."""
        if self._decode_median is None:
            return cap_s
        return min(cap_s, self.queue_wait_share * self._decode_median)

    def observe(self, tpot_s: float | None, decode_s: float | None, ttft_s: float | None = None) -> None:
        """A finished request's TPOT, decode time (E2E - TTFT) and engine TTFT (TTFT - queue wait); None when it
        had < 2 tokens or failed."""
        if tpot_s is not None and tpot_s > 0:
            self._tpots.append(tpot_s)
        if ttft_s is not None and ttft_s > 0:
            self._ttfts.append(ttft_s)
        if decode_s is not None:
            self._decodes.append(decode_s)
        now = self.clock()
        if now >= self._next:
            self._update(now)

    def _update(self, now: float) -> None:
        self._next = now + self.interval_s
        saturated, self.saturated = self.saturated, False
        if self._decodes:
            self._decode_median = statistics.median(self._decodes)
        if len(self._tpots) < self.min_samples:
            return
        recent = _roll(self._tpots, self._medians, now, self.baseline_window_s)
        recent_ttft = _roll(self._ttfts, self._ttft_medians, now, self.baseline_window_s) \
            if len(self._ttfts) >= self.min_samples else None
        base, base_ttft = self.baseline, self.ttft_baseline
        slow = base is not None and recent > self.tolerance * base
        late = recent_ttft is not None and base_ttft is not None and recent_ttft > self.ttft_tolerance * base_ttft
        if slow or late:
            over = max(recent / (self.tolerance * base) if slow else 0.0,
                       recent_ttft / (self.ttft_tolerance * base_ttft) if late else 0.0)
            factor = max(self.max_decrease, min(self.decrease, 1.0 / over))
            self.limit = max(self.floor, int(self.limit * factor))
        elif saturated:
            self.limit = min(self.ceiling, self.limit + max(1, self.limit // 8))


def _roll(samples: list[float], medians: deque, now: float, window_s: float) -> float:
    """The interval's median (samples cleared), appended to the window of interval medians."""
    recent = statistics.median(samples)
    samples.clear()
    medians.append((now, recent))
    while medians and medians[0][0] < now - window_s:
        medians.popleft()
    return recent


def _low(medians: deque) -> float | None:
    """The baseline: the 10th percentile of the window's interval medians."""
    if not medians:
        return None
    ms = sorted(m for _, m in medians)
    return ms[len(ms) // 10]
