"""Per-version rolling windows of request outcomes: the canary gate's inputs.

The request path calls `Stats.record(version, ttft_s, e2e_s, status)` once per finished request: one tuple
appended to a bounded deque (O(1), no locks, no I/O). Rewards arrive later and separately
(`record_reward`), from the value head or the audit reward model. Everything heavier — filtering a time
window, percentiles, means — happens in `summary()`, which the canary controller calls off the hot path.

What counts as an error: a failure that is the version's fault (the engine failed, 5xx). A client mistake
(400) or a client that went away (499) is counted apart and never makes a version look bad.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass

ERROR_STATUSES = frozenset({"500", "502", "503", "504"})
NEUTRAL_STATUSES = frozenset({"400", "499"})


@dataclass
class Summary:
    """One version's outcomes over one time window."""

    requests: int = 0  # requests that finished (ok + errors; client-side outcomes excluded)
    ok: int = 0
    errors: int = 0
    neutral: int = 0  # 400 / 499
    error_rate: float = 0.0
    p50_ttft_s: float | None = None
    p99_ttft_s: float | None = None
    p50_e2e_s: float | None = None
    p99_e2e_s: float | None = None
    reward_n: int = 0
    reward_mean: float | None = None
    reward_std: float | None = None
    since: float = 0.0
    until: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(sorted_xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]) of an already sorted list; None when empty."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, math.ceil(q / 100 * len(sorted_xs)) - 1))
    return sorted_xs[k]


class VersionWindow:
    __slots__ = ("events", "rewards")

    def __init__(self, maxlen: int):
        # (monotonic time, ttft_s or None, e2e_s or None, status)
        self.events: deque[tuple[float, float | None, float | None, str]] = deque(maxlen=maxlen)
        self.rewards: deque[tuple[float, float]] = deque(maxlen=maxlen)


class Stats:
    def __init__(self, maxlen: int = 200_000, clock=time.monotonic, wall=time.time):
        self.maxlen = maxlen
        self.clock = clock
        self.wall = wall
        self._v: dict[str, VersionWindow] = {}
        # with several replicas (serve/rollout/stats_sync.py): what this replica recorded, with wall-clock times, until
        # the sync has shared it; None with one replica
        self.outbox: deque | None = None

    def _window(self, version: str) -> VersionWindow:
        w = self._v.get(version)
        if w is None:
            w = self._v[version] = VersionWindow(self.maxlen)
        return w

    # --- hot path ------------------------------------------------------------------------------------------
    def record(self, version: str, ttft_s: float | None, e2e_s: float | None, status: str = "200") -> None:
        w = self._v.get(version) or self._window(version)
        w.events.append((self.clock(), ttft_s, e2e_s, status))
        if self.outbox is not None:
            self.outbox.append((version, self.wall(), ttft_s, e2e_s, status))

    def record_reward(self, version: str, reward: float) -> None:
        w = self._v.get(version) or self._window(version)
        w.rewards.append((self.clock(), float(reward)))
        if self.outbox is not None:
            self.outbox.append((version, self.wall(), float(reward)))

    def merge(self, records: list) -> None:
        """Another replica's records (serve/rollout/stats_sync.py): (version, wall time, ttft, e2e, status) outcomes and
        (version, wall time, reward) rewards, added to this replica's windows at the matching local time. They
        arrive up to a sync interval late, so a window's newest entries may be slightly out of order: the scans
        below tolerate that (a window starts minutes back, not within the last second)."""
        offset = self.clock() - self.wall()
        for rec in records:
            w = self._v.get(rec[0]) or self._window(rec[0])
            if len(rec) == 5:
                w.events.append((rec[1] + offset, rec[2], rec[3], rec[4]))
            elif len(rec) == 3:
                w.rewards.append((rec[1] + offset, float(rec[2])))

    # --- off the hot path ----------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        return list(self._v)

    def forget(self, version: str) -> None:
        self._v.pop(version, None)

    def summary(self, version: str, since: float = 0.0, until: float | None = None) -> Summary:
        until = self.clock() if until is None else until
        s = Summary(since=since, until=until)
        w = self._v.get(version)
        if w is None:
            return s
        ttfts, e2es = [], []
        for t, ttft, e2e, status in _tail(w.events, since):
            if t > until:
                continue
            if status in NEUTRAL_STATUSES:
                s.neutral += 1
                continue
            s.requests += 1
            if status != "200":  # 5xx and anything else unexpected
                s.errors += 1
                continue
            s.ok += 1
            if ttft is not None:
                ttfts.append(ttft)
            if e2e is not None:
                e2es.append(e2e)
        s.error_rate = s.errors / s.requests if s.requests else 0.0
        ttfts.sort()
        e2es.sort()
        s.p50_ttft_s, s.p99_ttft_s = percentile(ttfts, 50), percentile(ttfts, 99)
        s.p50_e2e_s, s.p99_e2e_s = percentile(e2es, 50), percentile(e2es, 99)
        rs = [r for t, r in _tail(w.rewards, since) if t <= until]
        s.reward_n = len(rs)
        if rs:
            s.reward_mean = sum(rs) / len(rs)
            if len(rs) > 1:
                s.reward_std = math.sqrt(sum((r - s.reward_mean) ** 2 for r in rs) / (len(rs) - 1))
        return s

    def latencies(self, version: str, since: float = 0.0, until: float | None = None) -> dict[str, list[float]]:
        """Successful requests' TTFTs and end-to-end times in the window."""
        until = self.clock() if until is None else until
        w = self._v.get(version)
        out: dict[str, list[float]] = {"ttft": [], "e2e": []}
        for t, ttft, e2e, status in _tail(w.events, since) if w else ():
            if t <= until and status == "200":
                if ttft is not None:
                    out["ttft"].append(ttft)
                if e2e is not None:
                    out["e2e"].append(e2e)
        return out

    def rewards(self, version: str, since: float = 0.0, until: float | None = None) -> list[float]:
        until = self.clock() if until is None else until
        w = self._v.get(version)
        return [r for t, r in _tail(w.rewards, since) if t <= until] if w else []


# Records merged from other replicas arrive up to a sync interval late, so times are in order only to within
# this much: a scan from the right stops at the first item older than `since - SLACK_S`.
SLACK_S = 5.0


def _tail(dq: deque, since: float):
    """Items with time >= since, (nearly) oldest first, scanning from the right (windows are recent)."""
    if not dq or dq[-1][0] < since - SLACK_S:
        return []
    if dq[0][0] >= since:
        return list(dq)
    out = []
    for item in reversed(dq):
        if item[0] < since:
            if item[0] < since - SLACK_S:
                break
            continue
        out.append(item)
    out.reverse()
    return out
