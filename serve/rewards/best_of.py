"""Best-of-n by the in-pass value (issue 20): sample k candidates, return the one the value head rates highest.

How the k candidates are made: k sibling requests (n = 1 each) submitted to the same engine at once, not one
request with vLLM's `n = k`. Why: vLLM's child requests of an n > 1 parent share one request row of the shared
memory value table (serve/vllm_ext/value_table.py), so the fast value read-out is off for n > 1; siblings each get their own
row. Continuous batching runs the siblings in the same engine steps and prefix caching computes the shared prompt
once, so the cost is the same as `n = k`. Siblings also work unchanged on remote versions (serve/engines/engine_remote.py).
Each sibling gets its own seed (the request's seed + i) so a seeded request stays reproducible and sibling 0 is
exactly the plain request (k = 1 answers what a request without `best_of` answers).

The choice rule: `max` (the highest reward) or `max_length_guard` (the highest among candidates no longer than
`ratio` x the candidates' median length: a value head that learnt "longer is better" cannot pick a runaway answer).
Adaptive k: under load k shrinks towards 1 (`effective_k`), from the admission controller's own signals.
The over-optimisation cross-check (`AuditCrossCheck`): a sampled share of the choices is scored by the audit reward
model; a mean value-minus-audit gap above the version's limit is an alarm (the canary gate sees it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serve.monitor.alarms import Alarm
from serve.engines.engine import Delta, Engine, GenerationRequest, Step
from serve.rewards.reward import RewardTracker

RULES = ("max", "max_length_guard")


@dataclass
class Candidate:
    """One sibling's whole answer: its deltas (replayed to a stream or accumulated into a body) and its trace."""

    deltas: list[Delta] = field(default_factory=list)
    tracker: RewardTracker = field(default_factory=lambda: RewardTracker(1, False))
    step: Step = field(default_factory=lambda: Step([], 0, 0, True))
    first_step_s: float | None = None  # perf_counter of the engine's first step

    @property
    def completion_tokens(self) -> int:
        return self.step.completion_tokens

    def text(self) -> str:
        return self.tracker.response_text(0)


def sibling(req: GenerationRequest, i: int) -> GenerationRequest:
    """Candidate i's request: its own id and seed (sibling 0 is the request itself)."""
    if i == 0:
        return req
    return dataclasses.replace(req, request_id=f"{req.request_id}-{i}", n=1,
                               seed=None if req.seed is None else (req.seed + i) % 2**63)


async def _one(engine: Engine, req: GenerationRequest, keep_tokens: bool, keep_values: bool) -> Candidate:
    c = Candidate(tracker=RewardTracker(1, keep_tokens, keep_values))
    agen = engine.generate(req)
    try:
        async for step in agen:
            if c.first_step_s is None:
                c.first_step_s = time.perf_counter()
            for d in step.deltas:
                c.deltas.append(d)
                c.tracker.add(d)
            c.step = step
    finally:  # a cancelled sibling (client gone, deadline, another sibling failed) aborts its engine request
        await agen.aclose()
    return c


async def sample(engine: Engine, req: GenerationRequest, k: int, keep_tokens: bool = False,
                 keep_values: bool = False) -> list[Candidate]:
    """k candidates from `engine`, sampled concurrently; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(_one(engine, sibling(req, i), keep_tokens, keep_values)) for i in range(k)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def choose(scores: list[float | None], lengths: list[int], rule: str = "max", length_ratio: float = 1.5) -> int:
    """The chosen candidate's index. A candidate without a score is never preferred to one with a score; with no
    score at all, candidate 0 (the plain request's answer). Ties go to the lower index (deterministic)."""
    if rule not in RULES:
        raise ValueError(f"unknown best_of rule {rule!r}; use one of {RULES}")
    eligible = [i for i, s in enumerate(scores) if s is not None and s == s]
    if rule == "max_length_guard" and eligible:
        limit = length_ratio * statistics.median(lengths)
        guarded = [i for i in eligible if lengths[i] <= limit]
        eligible = guarded or eligible  # all too long: the guard has no opinion
    if not eligible:
        return 0
    return max(eligible, key=lambda i: (scores[i], -i))


def effective_k(requested: int, active: int, waiting: int, limit: int, ceiling: int) -> int:
    """k under load, from the admission controller's signals for the version (serve/admission/admission.py Slots):
    `active` requests in flight (this one included), `waiting` in its queue, its current `limit` and the configured
    `ceiling` (an adaptive limit below its ceiling means the controller already saw latency grow).

    Each extra candidate is one more sequence in the engine's batch, so k shrinks with the occupancy of the
    version: load = (other requests in flight + queued) / limit; k = requested x (1 - load) x limit / ceiling,
    at least 1. A queue that is not empty means the version is saturated: k = 1."""
    if requested <= 1:
        return 1
    if waiting > 0:
        return 1
    limit = max(1, limit)
    load = min(1.0, max(0, active - 1) / limit)
    headroom = (1.0 - load) * min(1.0, limit / max(1, ceiling))
    return max(1, min(requested, int(requested * headroom + 1e-9)))


class BestOfMetrics:
    """Prometheus series: the k actually used per version (and the k asked for), choices, the audit gap."""

    def __init__(self, registry: CollectorRegistry):
        self.k_used = Histogram("aligngate_best_of_k", "Candidates sampled per best_of request (after adaptive k)",
                                ["version"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=registry)
        self.k_last = Gauge("aligngate_best_of_k_last", "k used by the last best_of request", ["version"],
                            registry=registry)
        self.shrunk = Counter("aligngate_best_of_shrunk", "best_of requests whose k was lowered under load",
                              ["version"], registry=registry)
        self.audit_gap = Gauge("aligngate_best_of_audit_gap", "Mean (value - audit) gap of audited best_of choices, "
                               "both on 0-1 (over-optimisation of the value head)", ["version"], registry=registry)

    def record(self, version: str, requested: int, used: int) -> None:
        self.k_used.labels(version).observe(used)
        self.k_last.labels(version).set(used)
        if used < requested:
            self.shrunk.labels(version).inc()


class AuditCrossCheck:
    """An `AlarmSource` (serve/monitor/alarms.py): the audited best-of choices' value-minus-audit gap per version."""

    name = "best_of_audit"

    def __init__(self, metrics: BestOfMetrics | None = None, window_s: float = 600.0, min_n: int = 5,
                 clock: Callable[[], float] = time.monotonic):
        self.metrics, self.window_s, self.min_n, self.clock = metrics, window_s, min_n, clock
        self.gaps: dict[str, deque] = {}
        self.limits: dict[str, float] = {}

    def record(self, version: str, value01: float, audit01: float, gap_max: float) -> None:
        if not (value01 == value01 and audit01 == audit01):  # NaN
            return
        dq = self.gaps.setdefault(version, deque(maxlen=4096))
        dq.append((self.clock(), value01 - audit01))
        self.limits[version] = gap_max
        if self.metrics is not None:
            mean = self.mean_gap(version)
            if mean is not None:
                self.metrics.audit_gap.labels(version).set(mean)

    def _recent(self, version: str) -> list[float]:
        dq = self.gaps.get(version)
        if not dq:
            return []
        since = self.clock() - self.window_s
        while dq and dq[0][0] < since:
            dq.popleft()
        return [g for _, g in dq]

    def mean_gap(self, version: str) -> float | None:
        xs = self._recent(version)
        return sum(xs) / len(xs) if xs else None

    def active_alarms(self, version: str) -> list[Alarm]:
        xs = self._recent(version)
        limit = self.limits.get(version)
        if limit is None or len(xs) < self.min_n:
            return []
        mean = sum(xs) / len(xs)
        if mean <= limit:
            return []
        return [Alarm(version, "best_of_overoptimisation",
                      f"the value head rates its best-of-n choices {mean:.2f} above the audit model (limit {limit})",
                      self.name, value=mean, threshold=limit, n=len(xs))]
