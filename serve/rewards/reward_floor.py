"""The reward floor (issue 20): an answer whose in-pass reward is below its version's floor is not shown; the
request is answered again on the fallback version (stable unless `fallback_version` names another) within
`fallback_budget_s`, and the response says so (`aligngate.fallback`).

Non-stream requests only (and best_of streams, whose answer is chosen before any byte is sent): a plain stream has
sent its tokens before the reward exists, and a stream is never switched to another answer.

Floor hits are counted per version (`aligngate_reward_floor_hits_total`) and are a canary gate input: `FloorHits`
is an `AlarmSource` (serve/monitor/alarms.py) raising `reward_floor_fallbacks` while more than the version's
`fallback_share_max` of its answers fell back, so a canary that needs many fallbacks is never promoted (any
active alarm on the canary fails its gate and rolls it back: serve/rollout/gate.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from serve.monitor.alarms import Alarm


def below_floor(score: float | None, floor: float | None) -> bool:
    """A floor applies to a scored answer only: no reward (no value head) is never a floor hit."""
    return floor is not None and score is not None and score == score and score < floor


@dataclass
class FallbackReport:
    """What `aligngate.fallback` says."""

    from_version: str
    to_version: str
    floor: float
    reward: float  # the refused answer's reward
    answered: bool  # False: the fallback did not finish within its budget (or failed): the original is returned
    source: str = "value"  # what `reward` is: the in-pass value or the audit model's 0-1 score
    reason: str = ""

    def as_dict(self) -> dict:
        out = {"from": self.from_version, "to": self.to_version, "floor": self.floor, "reward": self.reward,
               "source": self.source, "answered_by_fallback": self.answered}
        if self.reason:
            out["reason"] = self.reason
        return out


class FloorHits:
    """Per version: answers checked against a floor and the hits, in a time window; the gate's alarm."""

    name = "reward_floor"

    def __init__(self, registry: CollectorRegistry | None = None, window_s: float = 600.0, min_n: int = 10,
                 clock: Callable[[], float] = time.monotonic):
        self.window_s, self.min_n, self.clock = window_s, min_n, clock
        self.events: dict[str, deque] = {}
        self.share_max: dict[str, float | None] = {}
        self.hits = self.checked = None
        if registry is not None:
            self.hits = Counter("aligngate_reward_floor_hits", "Answers below their version's reward floor, by "
                                "version and outcome (fallback: answered by the fallback version; kept: the "
                                "fallback failed or ran out of budget)", ["version", "outcome"], registry=registry)
            self.checked = Counter("aligngate_reward_floor_checked", "Answers checked against a reward floor",
                                   ["version"], registry=registry)

    def record(self, version: str, hit: bool, share_max: float | None, outcome: str = "fallback") -> None:
        dq = self.events.setdefault(version, deque(maxlen=100_000))
        dq.append((self.clock(), hit))
        self.share_max[version] = share_max
        if self.checked is not None:
            self.checked.labels(version).inc()
            if hit:
                self.hits.labels(version, outcome).inc()

    def share(self, version: str) -> tuple[float | None, int]:
        """(share of floor hits, answers checked) over the window."""
        dq = self.events.get(version)
        if not dq:
            return None, 0
        since = self.clock() - self.window_s
        while dq and dq[0][0] < since:
            dq.popleft()
        n = len(dq)
        return (sum(1 for _, h in dq if h) / n if n else None), n

    def active_alarms(self, version: str) -> list[Alarm]:
        limit = self.share_max.get(version)
        share, n = self.share(version)
        if limit is None or share is None or n < self.min_n or share <= limit:
            return []
        return [Alarm(version, "reward_floor_fallbacks",
                      f"{share:.0%} of {n} answers fell below the reward floor and were answered by the fallback "
                      f"version (limit {limit:.0%})", self.name, value=share, threshold=limit, n=n)]
