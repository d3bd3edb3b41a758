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
