"""serve/rollout/lifecycle.py, the one owner of a version's life on a replica, over the gateway's real per-version parts
(router, reward monitor, gate stats, admission slots, shadow shares, Prometheus metrics, supervisor); the engine is
a stand-in that never generates (the engines' own lifecycle is tests/test_canary_e2e.py's)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serve.admission.admission import Admission
from serve.config import Settings
from serve.engines.engine import Engine
from serve.rollout.lifecycle import Lifecycle
from serve.monitor.metrics import Metrics
from serve.monitor.quality import Quality
from serve.rollout.router import Router
from serve.rollout.shadow import Shadow
from serve.rollout.stats import Stats
from serve.engines.supervisor import Supervisor


class UpEngine(Engine):
    """Up and alive; never asked to generate."""

    def __init__(self, name: str):
        super().__init__(name)
        self.ready = True

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        self.ready = False

    def generate(self, req):
        raise NotImplementedError

    async def probe(self, timeout_s: float) -> None:
        raise NotImplementedError

    async def alive(self) -> bool:
        return True


def parts(tmp_path) -> SimpleNamespace:
    settings = Settings(cache_dir=tmp_path)
    router = Router("aligngate", ["v1", "v2"], {"v1": 1.0, "v2": 0.0})
    metrics = Metrics()
    gw = SimpleNamespace(engines={"v1": UpEngine("v1"), "v2": UpEngine("v2")}, metrics=metrics)
    p = SimpleNamespace(router=router, metrics=metrics, gw=gw, stats=Stats(), shadow=Shadow(metrics.registry),
                        admission=Admission(settings.limits), supervisor=Supervisor(gw),
                        quality=Quality(settings, metrics.registry, lambda: router.stable))
    p.lifecycle = Lifecycle(p.router, p.quality, p.stats, p.shadow, p.admission, p.metrics, p.supervisor)
    for name in router.order:
        p.lifecycle.add(name)
    return p


def serve_some(p, version: str) -> None:
    """What the request path and the shadow leave behind for a version."""
    p.quality.monitor.observe(version, "q", "an answer", 0.7, entropy=1.0)
    p.stats.record(version, 0.01, 0.05, "200")
    p.stats.record_reward(version, 0.7)
    p.admission.for_version(version, None)
    vm = p.metrics.version(version)
    vm.in_flight.inc()
    vm.in_flight.dec()
    p.metrics.requests.labels(version, "chat", "200").inc()


def series_of(p, version: str) -> list[str]:
    return [line for line in p.metrics.render().decode().splitlines()
            if not line.startswith("#") and f'version="{version}"' in line]


@pytest.mark.asyncio
async def test_removing_a_version_clears_every_part_of_its_state(tmp_path):
    p = parts(tmp_path)
    for v in ("v1", "v2"):
        serve_some(p, v)
    p.shadow.set_share("v2", 0.5)
    await p.supervisor.tick()  # the supervisor sees both up
    assert p.supervisor.status("v2") == {"state": "up", "restarts": 0, "reason": None}
    assert series_of(p, "v2") and "v2" in p.quality.monitor.versions() and "v2" in p.stats.versions()

    p.lifecycle.retire("v2")  # draining: no new requests by name or by weight, the state is still there
    assert "v2" not in p.router.order and "v2" in p.stats.versions()
    p.gw.engines.pop("v2")
    p.lifecycle.remove("v2")

    assert "v2" not in p.quality.monitor.versions() and p.quality.monitor.snapshot("v2") == {}
    assert "v2" not in p.stats.versions() and p.stats.summary("v2").requests == 0
    assert "v2" not in p.admission.slots
    assert "v2" not in p.shadow.shares
    assert p.supervisor.status("v2") is None
    assert series_of(p, "v2") == []  # requests, latencies, in flight, monitor windows, engine up: all gone
    # the other version keeps everything
    assert "v1" in p.quality.monitor.versions() and p.stats.summary("v1").requests == 1
    assert "v1" in p.admission.slots and p.supervisor.status("v1")["state"] == "up"
    assert any(line.startswith("aligngate_requests_total") for line in series_of(p, "v1"))
    assert any(line.startswith("aligngate_engine_up") for line in series_of(p, "v1"))


def test_stable_is_held_once_and_a_promotion_rebases_the_monitor(tmp_path):
    p = parts(tmp_path)
    mon = p.quality.monitor
    assert p.quality.stable == "v1" and mon._state("v2").baseline_of == "v1"

    p.lifecycle.promote("v2")
    assert p.router.stable == "v2" and p.quality.stable == "v2"  # read from the router, not a copy
    assert mon._state("v1").baseline_of == "v2" and mon._state("v2").baseline_of is None
    p.lifecycle.add("v3")  # a version registered after the promotion is judged against the new stable
    assert mon._state("v3").baseline_of == "v2" and p.router.weights["v3"] == 0.0
    p.lifecycle.promote("v2")  # the same stable again (every controller tick asks): nothing moves
    assert p.router.order == ["v2", "v1", "v3"]
    with pytest.raises(ValueError):
        p.lifecycle.retire("v2")  # the stable version cannot be retired: promote another first
