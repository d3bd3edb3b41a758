"""Faults, the supervisor: detection of a dead engine, restart with doubling capped backoff, and remote versions
probed rather than restarted (driven tick by tick on a fake clock; fake engines)."""

from __future__ import annotations

import asyncio

from types import SimpleNamespace

import pytest

from serve.engines.engine import Engine
from serve.monitor.metrics import Metrics
from serve.engines.supervisor import Supervisor


def metric(text: str, name: str, **labels) -> float | None:
    """One series' value from Prometheus text (None when absent)."""
    import re

    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return None



class FakeEngine(Engine):
    """Just what the supervisor reads: ready, alive(), restart() (failing the first `fail` times); it never
    generates."""

    def __init__(self, name: str, restartable: bool = True, fail: int = 0):
        super().__init__(name)
        self.restartable, self.fail = restartable, fail
        self.dead, self.restart_calls = False, 0

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def generate(self, req):
        raise NotImplementedError

    async def probe(self, timeout_s: float) -> None:
        raise NotImplementedError

    async def alive(self) -> bool:
        return not self.dead

    async def restart(self) -> None:
        self.restart_calls += 1
        if self.fail:
            self.fail -= 1
            raise RuntimeError("engine core failed to start")
        self.dead, self.ready = False, True


def _gateway(*engines) -> SimpleNamespace:
    return SimpleNamespace(engines={e.name: e for e in engines}, metrics=Metrics())


async def _tick(sup: Supervisor) -> None:
    await sup.tick()
    for w in sup.watches.values():  # let a recovery started by this tick run to its end
        if w.task is not None and not w.task.done():
            await w.task


@pytest.mark.asyncio
async def test_supervisor_restarts_a_dead_engine_with_backoff():
    now = [100.0]
    e = FakeEngine("canary", fail=2)
    gw = _gateway(e)
    sup = Supervisor(gw, backoff_s=1.0, backoff_max_s=4.0, clock=lambda: now[0])
    await _tick(sup)
    assert sup.watches["canary"].state == "starting"  # not up yet: starting engines are not supervised
    e.ready = True
    await _tick(sup)
    assert sup.watches["canary"].state == "up" and e.restart_calls == 0

    e.dead = True  # the engine core died
    await _tick(sup)  # noticed: out of service, first restart at once — it fails
    assert e.ready is False and e.restart_calls == 1 and sup.watches["canary"].state == "down"
    now[0] += 0.9
    await _tick(sup)
    assert e.restart_calls == 1  # backoff 1 s not over
    now[0] += 0.1
    await _tick(sup)
    assert e.restart_calls == 2 and sup.watches["canary"].state == "down"  # failed again: backoff now 2 s
    now[0] += 1.9
    await _tick(sup)
    assert e.restart_calls == 2
    now[0] += 0.1
    await _tick(sup)
    assert e.restart_calls == 3 and e.ready and sup.watches["canary"].state == "up"
    text = gw.metrics.render().decode()
    assert metric(text, "aligngate_engine_restarts_total", version="canary") == 3
    assert metric(text, "aligngate_engine_up", version="canary") == 1
    assert sup.status("canary")["restarts"] == 3


@pytest.mark.asyncio
async def test_supervisor_backoff_is_capped_and_remote_versions_are_probed_not_restarted():
    now = [0.0]
    local = FakeEngine("local", fail=1000)
    remote = FakeEngine("remote", restartable=False)
    local.ready = remote.ready = True
    sup = Supervisor(_gateway(local, remote), backoff_s=1.0, backoff_max_s=4.0, clock=lambda: now[0])
    await _tick(sup)
    local.dead = remote.dead = True
    await _tick(sup)
    gaps, last = [], now[0]
    for _ in range(60):  # 30 s of 0.5 s ticks
        now[0] += 0.5
        before = local.restart_calls
        await _tick(sup)
        if local.restart_calls > before:
            gaps.append(now[0] - last)
            last = now[0]
    assert gaps[:3] == [1.0, 2.0, 4.0] and all(g == 4.0 for g in gaps[3:])  # doubling, capped at 4 s
    assert remote.ready is False and sup.watches["remote"].state == "down"
    remote.dead = False  # its server answers again: the next probe brings it back, nothing restarted
    for _ in range(12):
        now[0] += 0.5
        await _tick(sup)
    assert remote.ready and sup.watches["remote"].state == "up" and remote.restart_calls == 0
    text = sup.gw.metrics.render().decode()
    assert metric(text, "aligngate_engine_restarts_total", version="remote") is None
    assert metric(text, "aligngate_engine_up", version="local") == 0


class HangsOnRestart(FakeEngine):
    """Its first `hangs` restarts never return (a restart stalled like issue 21's starts); later ones come up."""

    def __init__(self, name: str, hangs: int):
        super().__init__(name)
        self.hangs, self.stops = hangs, 0

    async def restart(self) -> None:
        self.restart_calls += 1
        if self.hangs:
            self.hangs -= 1
            await asyncio.Event().wait()
        self.dead, self.ready = False, True

    async def stop(self) -> None:
        self.stops += 1


@pytest.mark.asyncio
async def test_a_hung_restart_meets_the_deadline_is_killed_and_retried_without_holding_up_others():
    now = [0.0]
    hung, other = HangsOnRestart("canary", hangs=1), FakeEngine("stable")
    hung.ready = other.ready = True
    killed = []
    sup = Supervisor(_gateway(hung, other), backoff_s=1.0, backoff_max_s=4.0, clock=lambda: now[0],
                     deadline_s=lambda name: 0.3, kill=lambda name: killed.append(name) or [4242])
    await _tick(sup)
    hung.dead = other.dead = True  # both engine cores died
    await sup.tick()
    await asyncio.sleep(0.05)
    # the other version's restart is not held up by the hung one
    assert other.ready and sup.watches["stable"].state == "up"
    assert sup.watches["canary"].state == "recovering"
    await sup.watches["canary"].task  # ends at the deadline, not never
    w = sup.watches["canary"]
    assert w.state == "down" and "deadline of 0.3 s" in w.reason and "[4242]" in w.reason, w.reason
    assert killed == ["canary"] and hung.stops == 1 and not hung.ready
    now[0] += 1.0  # the backoff: the next restart comes up
    await _tick(sup)
    assert hung.ready and sup.watches["canary"].state == "up" and hung.restart_calls == 2
