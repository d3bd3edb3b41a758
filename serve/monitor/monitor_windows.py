"""The reward monitor's rolling windows: `Rolling` (mean/std over the last N values, or the last N seconds) and
`RollingPairs` (value-head vs audit reward), and `VersionState`, the windows, baseline and alarms of one version.

Cost: O(1) per observation in the window size (running sums; amortised eviction; periodic exact recomputation
to stop float drift).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from serve.monitor.alarms import Alarm
from serve.monitor.monitor_config import MonitorConfig, RewardScale

SIGNALS = ("reward", "length", "repetition", "entropy", "kl", "flagged", "audit_gap")


class Rolling:
    """Mean/std over the last `maxlen` values (and, if `horizon`, only those newer than `horizon` seconds)."""

    __slots__ = ("maxlen", "horizon", "q", "s", "ss", "_evicted")

    def __init__(self, maxlen: int, horizon: float | None = None):
        self.maxlen, self.horizon = maxlen, horizon
        self.q: deque[tuple[float, float]] = deque()
        self.s = self.ss = 0.0
        self._evicted = 0

    def add(self, t: float, x: float) -> None:
        self.q.append((t, x))
        self.s += x
        self.ss += x * x
        self.expire(t)

    def expire(self, now: float) -> None:
        q = self.q
        while len(q) > self.maxlen or (q and self.horizon is not None and q[0][0] < now - self.horizon):
            _, x = q.popleft()
            self.s -= x
            self.ss -= x * x
            self._evicted += 1
        if self._evicted >= self.maxlen:  # amortised exact recomputation: no float drift
            self._evicted = 0
            self.s = sum(x for _, x in q)
            self.ss = sum(x * x for _, x in q)

    @property
    def n(self) -> int:
        return len(self.q)

    @property
    def mean(self) -> float:
        return self.s / len(self.q) if self.q else float("nan")

    @property
    def std(self) -> float:
        n = len(self.q)
        if n < 2:
            return float("nan")
        var = (self.ss - self.s * self.s / n) / (n - 1)
        return math.sqrt(var) if var > 0 else 0.0


class RollingPairs:
    """Mean |x − y| and Pearson r of (x, y) pairs over a window (value-head vs audit reward)."""

    __slots__ = ("gap", "x", "y", "xy")

    def __init__(self, maxlen: int, horizon: float | None = None):
        self.gap, self.x, self.y, self.xy = (Rolling(maxlen, horizon) for _ in range(4))

    def add(self, t: float, x: float, y: float) -> None:
        self.gap.add(t, abs(x - y))
        self.x.add(t, x)
        self.y.add(t, y)
        self.xy.add(t, x * y)

    def expire(self, now: float) -> None:
        for r in (self.gap, self.x, self.y, self.xy):
            r.expire(now)

    @property
    def corr(self) -> float:
        n = self.x.n
        if n < 3:
            return float("nan")
        cov = self.xy.s / n - self.x.mean * self.y.mean
        vx = self.x.ss / n - self.x.mean ** 2
        vy = self.y.ss / n - self.y.mean ** 2
        if vx <= 1e-12 or vy <= 1e-12:
            return float("nan")
        return max(-1.0, min(1.0, cov / math.sqrt(vx * vy)))


@dataclass
class Baseline:
    mean: float
    std: float
    n: int


class VersionState:
    """One version's windows (one per signal, and the value-head/audit pairs), its own frozen baseline, the
    baseline it is compared with instead (fixed numbers or another version's), its active alarms and counters."""

    def __init__(self, cfg: MonitorConfig):
        w, h = cfg.window, cfg.window_seconds
        self.win = {s: Rolling(w, h) for s in SIGNALS if s != "audit_gap"}
        self.pairs = RollingPairs(w, h)
        self.baseline = Rolling(cfg.baseline_size)  # fills once, then frozen
        self.fixed_baseline: Baseline | None = None
        self.baseline_of: str | None = None
        self.scale: RewardScale = cfg.reward_scale
        self.active: dict[str, Alarm] = {}
        self.observations = 0
        self.flags: dict[str, int] = {}
        self.events: dict[tuple[str, str], int] = {}
        self.last_z = float("nan")
