"""Alarms, and the protocol of anything that raises them (the reward monitor, SLO checks, test injection).

The canary controller polls every `AlarmSource` in `gateway.alarm_sources` each tick (off the request path);
any active alarm on the canary fails its gate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Alarm:
    version: str
    name: str
    message: str = ""
    source: str = ""
    severity: str = "critical"
    since: float = field(default_factory=time.time)  # wall-clock time raised
    value: float | None = None  # the measured statistic and the threshold it crossed, when there is one
    threshold: float | None = None
    n: int | None = None  # observations behind the value

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class AlarmSource(Protocol):
    """Anything that can say which alarms are active for a version. Register with
    `gateway.alarm_sources.append(src)`."""

    name: str

    def active_alarms(self, version: str) -> list[Alarm]: ...


class InjectedAlarms:
    """Alarms raised by hand (the test-only fault endpoint): a stand-in for the monitor in tests."""

    name = "injected"

    def __init__(self) -> None:
        self.alarms: dict[str, list[Alarm]] = {}

    def raise_alarm(self, version: str, name: str, message: str = "") -> None:
        self.alarms.setdefault(version, []).append(Alarm(version, name, message, self.name))

    def clear(self, version: str) -> None:
        self.alarms.pop(version, None)

    def active_alarms(self, version: str) -> list[Alarm]:
        return list(self.alarms.get(version, ()))


class ThresholdAlarms:
    """Absolute SLO alarms on a version's recent outcomes (last `window_s`): error rate and p99 end-to-end.
    Off unless a threshold is set."""

    name = "slo"

    def __init__(self, stats, window_s: float = 30.0, max_error_rate: float | None = None,
                 max_p99_e2e_s: float | None = None, min_requests: int = 10):
        self.stats, self.window_s = stats, window_s
        self.max_error_rate, self.max_p99_e2e_s, self.min_requests = max_error_rate, max_p99_e2e_s, min_requests

    def active_alarms(self, version: str) -> list[Alarm]:
        if self.max_error_rate is None and self.max_p99_e2e_s is None:
            return []
        s = self.stats.summary(version, since=self.stats.clock() - self.window_s)
        out = []
        if s.requests >= self.min_requests:
            if self.max_error_rate is not None and s.error_rate > self.max_error_rate:
                out.append(Alarm(version, "error_rate", f"{s.error_rate:.3f} > {self.max_error_rate}", self.name,
                                 value=s.error_rate, threshold=self.max_error_rate, n=s.requests))
            if self.max_p99_e2e_s is not None and s.p99_e2e_s is not None and s.p99_e2e_s > self.max_p99_e2e_s:
                out.append(Alarm(version, "p99_e2e", f"{s.p99_e2e_s:.3f}s > {self.max_p99_e2e_s}s", self.name,
                                 value=s.p99_e2e_s, threshold=self.max_p99_e2e_s, n=s.requests))
        return out
