"""Reward monitor: per-version rolling windows over every answer → reward-hacking alarms, metrics and events.

Why: the seeds' reward model quietly learned to love "I love you"; the policy found out, and the rewards looked
*great*. A reward-hacking policy shows up as a reward distribution that is too high, too uniform, or shifted
from the baseline, as collapsing entropy, a large KL to the reference, repetitive text, an audit reward model
that disagrees with the value head, or plain forbidden phrases. This module watches all of these per version.

Parts (one module each): `serve.monitor.monitor_config` (settings, thresholds, reward scale), `serve.monitor.monitor_windows`
(rolling windows and per-version state), `serve.monitor.text_features` (repetition rate, hard-constraint flags),
`serve.monitor.alarm_rules` (the alarms, their thresholds and severity: the list is there), `serve.monitor.monitor_metrics`
(Prometheus export). This module wires them: `RewardMonitor` observes answers, raises and clears alarms, and
emits events.

Cost: `observe()` is O(1) in the window size (running sums; amortised eviction; periodic exact recomputation to
stop float drift) plus O(len(response)) for the text features. It never blocks and never awaits; call it from
the event-loop thread. Metrics are read at scrape time by a collector, so observe touches no Prometheus objects.

The canary controller reads `active_alarms(version)` (the `serve.monitor.alarms.AlarmSource` protocol) or subscribes to events
with `subscribe()` (an `asyncio.Queue` of `AlarmEvent`) or `add_listener(callback)`.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

from prometheus_client import CollectorRegistry

from serve.monitor.alarm_rules import AlarmRules
from serve.monitor.alarms import Alarm, AlarmSource  # noqa: F401  (AlarmSource re-exported)
from serve.monitor.monitor_config import MonitorConfig, RewardScale
from serve.monitor.monitor_metrics import MonitorCollector
from serve.monitor.monitor_windows import Baseline, VersionState
from serve.rewards.review import ReviewItem
from serve.monitor.text_features import HardConstraints, repetition_rate


# --- public records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlarmEvent:
    kind: Literal["raised", "cleared"]
    alarm: Alarm
    time: float


class RewardMonitor:
    """Per-version windows and alarms. `observe()` on the request path; `active_alarms()` for the canary."""

    name = "reward_monitor"

    def __init__(self, config: MonitorConfig | None = None, registry: CollectorRegistry | None = None,
                 review=None, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        """`review`: anything with a non-blocking `submit(ReviewItem)` (serve.rewards.review.ReviewQueue)."""
        self.cfg = config or MonitorConfig()
        self.review = review
        self._clock, self._wall = clock, wall
        self._v: dict[str, VersionState] = {}
        self._queues: list[asyncio.Queue] = []
        self._listeners: list[Callable[[AlarmEvent], None]] = []
        self.dropped_events = 0
        self.constraints = HardConstraints(self.cfg.hard_constraint_phrases, self.cfg.hard_constraint_regexes)
        self.alarm_rules = AlarmRules(self.cfg, self._v)
        self.registry = registry
        if registry is not None:
            registry.register(MonitorCollector(self._scrape, self.alarm_rules.z))

    # --- configuration per version ---------------------------------------------------------------------------
    def _state(self, version: str) -> VersionState:
        st = self._v.get(version)
        if st is None:
            st = self._v[version] = VersionState(self.cfg)
        return st

    def set_reward_scale(self, version: str, scale: RewardScale) -> None:
        self._state(version).scale = scale

    def to01(self, version: str, reward: float) -> float:
        """A reward of `version` on the 0-1 scale the monitor judges it on (its configured reward scale)."""
        return self._state(version).scale.to01(float(reward))

    def set_baseline(self, version: str, mean: float, std: float, n: int) -> None:
        """A fixed baseline (0–1 reward mean/std over n answers), e.g. from the version's offline evaluation."""
        self._state(version).fixed_baseline = Baseline(mean, std, n)

    def use_baseline_of(self, version: str, reference: str | None) -> None:
        """Compare `version`'s window with `reference`'s live window (canary vs stable); None → own baseline."""
        self._state(version).baseline_of = reference

    def forget(self, version: str) -> None:
        """Drop a retired version's state (and its alarms, without events)."""
        self._v.pop(version, None)

    # --- hot path --------------------------------------------------------------------------------------------
    def flags_of(self, response: str) -> list[str]:
        return self.constraints.flags_of(response)

    def observe(self, version: str, prompt: str, response: str, reward: float | None, entropy: float | None = None,
                kl: float | None = None, audit_reward: float | None = None, request_id: str | None = None,
                n_tokens: int | None = None) -> list[str]:
        """Record one answer. Returns its hard-constraint flags (also queued for review). Never raises on input."""
        st = self._state(version)
        now = self._clock()
        w = st.win
        st.observations += 1
        r01 = None
        if reward is not None and math.isfinite(reward):
            r01 = st.scale.to01(float(reward))
            w["reward"].add(now, r01)
            if st.baseline.n < st.baseline.maxlen:
                st.baseline.add(now, r01)
        w["length"].add(now, float(n_tokens if n_tokens is not None else len(response)))
        w["repetition"].add(now, repetition_rate(response, self.cfg.repetition_n, self.cfg.max_text_tokens))
        if entropy is not None and math.isfinite(entropy):
            w["entropy"].add(now, float(entropy))
        if kl is not None and math.isfinite(kl):
            w["kl"].add(now, float(kl))
        flags = self.flags_of(response)
        w["flagged"].add(now, 1.0 if flags else 0.0)
        if flags:
            for f in flags:
                st.flags[f] = st.flags.get(f, 0) + 1
            if self.review is not None:
                try:
                    self.review.submit(ReviewItem(version=version, request_id=request_id, prompt=prompt,
                                                  response=response, reward=r01, flags=flags, time=self._wall(),
                                                  reason="hard_constraint"))
                except Exception:  # noqa: BLE001 — the review queue must never break a request
                    pass
        if audit_reward is not None and r01 is not None and math.isfinite(audit_reward):
            st.pairs.add(now, r01, min(1.0, max(0.0, float(audit_reward))))
        self._evaluate(version, st, now)
        return flags

    def observe_audit(self, version: str, reward: float, audit_reward: float) -> None:
        """An audit score that arrived after `observe()` (the audit runs off the request path)."""
        if not (math.isfinite(reward) and math.isfinite(audit_reward)):
            return
        st = self._state(version)
        now = self._clock()
        st.pairs.add(now, st.scale.to01(float(reward)), min(1.0, max(0.0, float(audit_reward))))
        self._evaluate(version, st, now)

    def _evaluate(self, version: str, st: VersionState, now: float) -> None:
        h = self.cfg.hysteresis
        seen = set()
        for name, direction, cmp, value, thr, n, msg in self.alarm_rules.conditions(st):
            seen.add(name)
            cur = st.active.get(name)
            if cur is None:  # raise on crossing the threshold ...
                on = cmp > thr if direction == "above" else cmp < thr
            else:  # ... clear only once back past it by the hysteresis margin (no flapping at the edge)
                on = cmp > thr - h * abs(thr) if direction == "above" else cmp < thr + h * abs(thr)
            if on and cur is None:
                a = Alarm(version, name, msg, "reward_monitor", since=self._wall(), value=float(value),
                          threshold=float(thr), n=n)
                st.active[name] = a
                self._emit(st, "raised", a)
            elif on:
                st.active[name] = Alarm(version, name, msg, "reward_monitor", since=cur.since, value=float(value),
                                        threshold=float(thr), n=n)
            elif cur is not None:
                del st.active[name]
                self._emit(st, "cleared", Alarm(version, name, msg, "reward_monitor", since=cur.since,
                                                 value=float(value), threshold=float(thr), n=n))
        for name in [k for k in st.active if k not in seen]:  # signal fell below its minimum count
            self._emit(st, "cleared", st.active.pop(name))

    def _expire(self, st: VersionState, now: float) -> None:
        if self.cfg.window_seconds is None:
            return
        for r in st.win.values():
            r.expire(now)
        st.pairs.expire(now)

    def _emit(self, st: VersionState, kind: str, alarm: Alarm) -> None:
        st.events[(alarm.name, kind)] = st.events.get((alarm.name, kind), 0) + 1
        ev = AlarmEvent(kind, alarm, self._wall())  # type: ignore[arg-type]
        for q in self._queues:
            if q.full():
                try:
                    q.get_nowait()
                    self.dropped_events += 1
                except asyncio.QueueEmpty:
                    pass
            q.put_nowait(ev)
        for cb in self._listeners:
            try:
                cb(ev)
            except Exception:  # noqa: BLE001
                pass

    # --- readers ---------------------------------------------------------------------------------------------
    def _scrape(self) -> list[tuple[str, VersionState]]:
        """Every version's state, its windows expired to now (the Prometheus collector's view)."""
        now = self._clock()
        states = list(self._v.items())
        for _, st in states:
            self._expire(st, now)
        return states

    def active_alarms(self, version: str) -> list[Alarm]:
        st = self._v.get(version)
        if st is None:
            return []
        if self.cfg.window_seconds is not None:
            now = self._clock()
            self._expire(st, now)
            self._evaluate(version, st, now)
        return [self.alarm_rules.with_severity(st, a) for a in st.active.values()]

    def subscribe(self) -> asyncio.Queue:
        """A queue of `AlarmEvent`s (bounded; the oldest event is dropped when a slow reader lets it fill)."""
        q: asyncio.Queue = asyncio.Queue(maxsize=self.cfg.event_queue_size)
        self._queues.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        if q in self._queues:
            self._queues.remove(q)

    def add_listener(self, callback: Callable[[AlarmEvent], None]) -> None:
        """Called synchronously, on the observing thread, for every raised/cleared event. Keep it cheap."""
        self._listeners.append(callback)

    def versions(self) -> list[str]:
        return list(self._v)

    def snapshot(self, version: str) -> dict:
        """Window statistics of one version (admin views, tests)."""
        st = self._v.get(version)
        if st is None:
            return {}
        self._expire(st, self._clock())
        out: dict = {s: {"mean": r.mean, "std": r.std, "n": r.n} for s, r in st.win.items()}
        b = self.alarm_rules.baseline_for(st)
        out["baseline"] = {"mean": b.mean, "std": b.std, "n": b.n} if b else None
        out["z"] = self.alarm_rules.z(st)
        out["audit"] = {"gap": st.pairs.gap.mean, "corr": st.pairs.corr, "n": st.pairs.gap.n}
        out["alarms"] = sorted(st.active)
        out["flags"] = dict(st.flags)
        return out
