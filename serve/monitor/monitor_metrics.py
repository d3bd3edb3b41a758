"""The reward monitor's Prometheus export: `MonitorCollector` reads every version's windows, z, audit agreement,
active alarms and counters at scrape time (the monitor's hot path touches no Prometheus object).

It sees the monitor only through two callables (`serve.monitor.monitor.RewardMonitor` passes them), so this module does
not import the monitor that imports it."""

from __future__ import annotations

import math
from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serve.monitor.monitor_windows import VersionState


class MonitorCollector:
    """Prometheus view of the monitor, computed at scrape time. `states()`: every version's state, its windows
    expired to now; `z(state)`: the window's reward z against its baseline."""

    def __init__(self, states: Callable[[], list[tuple[str, VersionState]]], z: Callable[[VersionState], float]):
        self.states, self.z = states, z

    def describe(self):
        return []

    def collect(self):
        mean = GaugeMetricFamily("aligngate_monitor_window_mean", "Rolling-window mean per version and signal",
                                 labels=["version", "signal"])
        std = GaugeMetricFamily("aligngate_monitor_window_std", "Rolling-window std per version and signal",
                                labels=["version", "signal"])
        cnt = GaugeMetricFamily("aligngate_monitor_window_count", "Observations in the window",
                                labels=["version", "signal"])
        z = GaugeMetricFamily("aligngate_monitor_reward_z", "z of the window mean reward vs the baseline",
                              labels=["version"])
        corr = GaugeMetricFamily("aligngate_monitor_audit_correlation", "Pearson r, value head vs audit reward",
                                 labels=["version"])
        active = GaugeMetricFamily("aligngate_monitor_alarm_active", "1 while an alarm is active",
                                   labels=["version", "alarm"])
        obs = CounterMetricFamily("aligngate_monitor_observations", "Answers observed", labels=["version"])
        flags = CounterMetricFamily("aligngate_monitor_hard_constraint_flags", "Answers flagged, by rule",
                                    labels=["version", "rule"])
        events = CounterMetricFamily("aligngate_monitor_alarm_events", "Alarm events", labels=["version", "alarm", "kind"])
        for v, st in self.states():
            for s, r in st.win.items():
                if r.n:
                    mean.add_metric([v, s], r.mean)
                    std.add_metric([v, s], r.std if r.n > 1 else 0.0)
                cnt.add_metric([v, s], r.n)
            if st.pairs.gap.n:
                mean.add_metric([v, "audit_gap"], st.pairs.gap.mean)
                cnt.add_metric([v, "audit_gap"], st.pairs.gap.n)
                c = st.pairs.corr
                if math.isfinite(c):
                    corr.add_metric([v], c)
            zz = self.z(st)
            if math.isfinite(zz):
                z.add_metric([v], zz)
            for name in st.active:
                active.add_metric([v, name], 1)
            obs.add_metric([v], st.observations)
            for rule, n in st.flags.items():
                flags.add_metric([v, rule], n)
            for (name, kind), n in st.events.items():
                events.add_metric([v, name, kind], n)
        yield from (mean, std, cnt, z, corr, active, obs, flags, events)
