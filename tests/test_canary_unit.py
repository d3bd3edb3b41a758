"""The gate (pure), the Welch test against scipy, the stats windows, and the controller on the memory store
with a stand-in gateway (no engines): auto-advance to promotion, auto-rollback, manual actions, audit."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from serve.admission.admission import Admission
from serve.monitor.alarms import Alarm, InjectedAlarms
from serve.rollout.canary import CanaryController, ControlError
from serve.config import CanarySettings, Settings, VersionSpec
from serve.rollout.gate import evaluate, gate_params, make_plan, welch_one_sided, wilson_lower
from serve.rollout.lifecycle import Lifecycle
from serve.monitor.metrics import Metrics
from serve.monitor.quality import Quality
from serve.rollout.router import Router
from serve.rollout.shadow import Shadow
from serve.rollout.stats import Stats, Summary
from serve.rollout.store import MemoryStore

CFG = CanarySettings(min_requests=20, min_duration_s=0.0, tick_s=0.05, latency_slack_s=0.0)
GATES = gate_params(CFG)
STAGE = {"weight": 0.1, "min_requests": 50, "min_duration_s": 0.0}


def summ(n, errors=0, ttft=0.02, e2e=0.1) -> Summary:
    ok = n - errors
    return Summary(requests=n, ok=ok, errors=errors, error_rate=errors / n if n else 0,
                   p50_ttft_s=ttft if ok else None, p99_ttft_s=ttft * 1.5 if ok else None,
                   p50_e2e_s=e2e if ok else None, p99_e2e_s=e2e * 1.5 if ok else None)


def test_gate_holds_then_advances():
    d = evaluate(summ(30), summ(300), None, [], [], [], STAGE, GATES, 5)
    assert d.action == "hold" and not d.reasons
    d = evaluate(summ(60), summ(600), None, [], [], [], STAGE, GATES, 5)
    assert d.action == "advance" and d.checks["error_rate"]["ok"]


def test_gate_early_rollback_on_errors_latency_alarm():
    d = evaluate(summ(12, errors=12), summ(300), None, [], [], [], STAGE, GATES, 1)
    assert d.action == "rollback" and "error rate" in d.reasons[0]
    d = evaluate(summ(12, errors=1), summ(300), None, [], [], [], STAGE, GATES, 1)
    assert d.action == "hold"  # one error in 12 is not yet clear evidence
    d = evaluate(summ(12, ttft=0.5, e2e=0.6), summ(300), None, [], [], [], STAGE, GATES, 1)
    assert d.action == "rollback" and "ttft median" in d.reasons[0]
    d = evaluate(summ(1), summ(300), None, [], [], [Alarm("canary", "reward_mean_spike", "0.93 > 0.8", "monitor")],
                 STAGE, GATES, 1)
    assert d.action == "rollback" and "alarm: monitor/reward_mean_spike" in d.reasons[0]


def test_gate_at_stage_end_uses_one_sided_tests():
    # errors: H0 "canary rate <= stable + 1 point", exact binomial at alpha 0.05
    d = evaluate(summ(60, errors=1), summ(600), None, [], [], [], STAGE, GATES, 5)
    assert d.action == "advance"  # 1 in 60 is no evidence
    d = evaluate(summ(60, errors=4), summ(600), None, [], [], [], STAGE, GATES, 5)
    assert d.action == "rollback" and "error rate" in d.reasons[0] and d.checks["error_rate"]["p"] < 0.05
    # p99: H0 "at most 1% of canary requests above 1.2x stable p99", exact binomial at alpha 0.05
    limit = 1.2 * 0.15
    one_slow = {"ttft": [0.02] * 60, "e2e": [0.1] * 59 + [limit + 0.1]}
    three_slow = {"ttft": [0.02] * 60, "e2e": [0.1] * 57 + [limit + 0.1] * 3}
    d = evaluate(summ(60), summ(600), None, [], [], [], STAGE, GATES, 5, one_slow)
    assert d.action == "advance", d.reasons
    d = evaluate(summ(60), summ(600), None, [], [], [], {**STAGE, "min_requests": 100}, GATES, 5, three_slow)
    assert d.action == "hold"  # not a clear breach before the stage end
    d = evaluate(summ(60), summ(600), None, [], [], [], STAGE, GATES, 5, three_slow)
    assert d.action == "rollback" and "p99 e2e" in d.reasons[0]


def test_gate_uses_baseline_when_stable_idle():
    base = summ(500).to_dict()
    d = evaluate(summ(60, ttft=0.5, e2e=0.6), summ(0), base, [], [], [], STAGE, GATES, 5)
    assert d.action == "rollback" and d.checks["stable_reference"].startswith("baseline")


def test_welch_matches_scipy():
    from scipy import stats

    rng = random.Random(42)
    a = [rng.gauss(0.50, 0.1) for _ in range(40)]
    b = [rng.gauss(0.55, 0.2) for _ in range(70)]
    t, df, p = welch_one_sided(a, b, margin=0.02)
    ref = stats.ttest_ind([x + 0.02 for x in a], b, equal_var=False, alternative="less")
    assert t == pytest.approx(ref.statistic, rel=1e-9) and p == pytest.approx(ref.pvalue, rel=1e-9)


def test_reward_gate():
    rng = random.Random(1)
    stable = [rng.gauss(0.6, 0.1) for _ in range(200)]
    worse = [rng.gauss(0.4, 0.1) for _ in range(60)]
    same = [rng.gauss(0.6, 0.1) for _ in range(60)]
    d = evaluate(summ(60), summ(600), None, worse, stable, [], STAGE, GATES, 5)
    assert d.action == "rollback" and "reward" in d.reasons[0] and d.checks["reward"]["p"] < 1e-6
    d = evaluate(summ(60), summ(600), None, same, stable, [], STAGE, GATES, 5)
    assert d.action == "advance" and d.checks["reward"]["ok"]


def test_wilson():
    assert wilson_lower(0, 10) == pytest.approx(0, abs=1e-12)
    assert 0.4 < wilson_lower(5, 5) < 0.5
    assert wilson_lower(1, 12) < 0.01


def test_stats_window():
    now = [100.0]
    s = Stats(clock=lambda: now[0])
    for i in range(100):
        now[0] = 100 + i
        s.record("v", 0.01 * (i + 1), 0.1, "200" if i % 10 else "502")
    s.record("v", None, None, "499")
    s.record_reward("v", 0.5)
    w = s.summary("v", since=150)
    assert w.requests == 50 and w.errors == 5 and w.neutral == 1
    assert w.p99_ttft_s == pytest.approx(1.0) and w.reward_n == 1
    assert s.summary("v").requests == 100
    assert make_plan(CFG)[0] == {"weight": 0.01, "min_requests": 20, "min_duration_s": 0.0}
    with pytest.raises(ValueError):
        make_plan(CFG, [0.5, 0.1])


# --- the controller with a stand-in gateway ----------------------------------------------------------------
class FakeEngine:
    def __init__(self, name):
        self.name, self.ready, self.start_error = name, True, None


class FakeGateway:
    """The gateway's per-version parts are real (router, monitor, stats, lifecycle ...); its engines are not."""

    def __init__(self, tmp_path):
        self.settings = Settings(cache_dir=tmp_path)
        specs = [VersionSpec(name="stable", url="http://s", weight=1), VersionSpec(name="canary", url="http://c")]
        self.specs = {s.name: s for s in specs}
        self.engines = {s.name: FakeEngine(s.name) for s in specs}
        self.router = Router("aligngate", list(self.specs), {"stable": 1, "canary": 0})
        self.stats = Stats()
        self.alarm_sources = [InjectedAlarms()]
        self.metrics = Metrics()
        self.quality = Quality(self.settings, self.metrics.registry, lambda: self.router.stable)  # the real monitor
        self.lifecycle = Lifecycle(self.router, self.quality, self.stats, Shadow(self.metrics.registry),
                                   Admission(self.settings.limits), self.metrics)
        for name in self.specs:
            self.lifecycle.add(name)

    def engine_down(self, name):  # the engines here never die (test_chaos kills real ones)
        return None

    def add_version(self, spec):
        self.specs[spec.name] = spec
        self.engines[spec.name] = FakeEngine(spec.name)
        self.lifecycle.add(spec.name)

    async def remove_version(self, name, timeout):
        self.lifecycle.retire(name)
        self.engines.pop(name)
        self.lifecycle.remove(name)

    def traffic(self, n, canary_status="200", canary_ttft=0.01):
        for i in range(n):
            v = self.router.route("aligngate", f"u{random.random()}").version
            bad = v == "canary"
            self.stats.record(v, canary_ttft if bad else 0.01, 0.04 + (canary_ttft if bad else 0.01),
                              canary_status if bad else "200")


async def _until(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_controller_auto_advance_to_promotion(tmp_path):
    gw = FakeGateway(tmp_path)
    c = CanaryController(gw, MemoryStore(), CFG)
    await c.start()
    try:
        await c.start_rollout("canary", "admin", "try it", stages=[0.2, 0.5, 1.0], min_requests=20)
        assert gw.router.weights["canary"] == pytest.approx(0.2)
        seen = []
        for _ in range(200):
            gw.traffic(100)
            await asyncio.sleep(0.06)
            ro = c.state["rollout"]
            seen.append(ro["stage"])
            if ro["state"] == "promoted":
                break
        assert c.state["rollout"]["state"] == "promoted", c.last_decision
        assert gw.router.stable == "canary" and gw.router.weights["canary"] == 1.0
        # the monitor follows the promotion: the former stable, and any version registered later, are judged
        # against the new stable; the new stable against its own baseline (it was once captured at start-up)
        monitor = gw.quality.monitor
        assert gw.quality.stable == "canary"
        assert monitor._state("stable").baseline_of == "canary" and monitor._state("canary").baseline_of is None
        gw.quality.watch_version("v3")
        assert monitor._state("v3").baseline_of == "canary"
        actions = [e["action"] for e in await c.store.audit()]
        assert actions[0] == "start" and actions.count("advance") == 3
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_controller_auto_rollback_and_manual_actions(tmp_path):
    gw = FakeGateway(tmp_path)
    c = CanaryController(gw, MemoryStore(), CFG)
    await c.start()
    try:
        await c.start_rollout("canary", "ops", None, stages=[0.3, 1.0], min_requests=10_000)
        with pytest.raises(ControlError):
            await c.start_rollout("canary", "ops", None)  # one at a time
        for _ in range(100):
            gw.traffic(50, canary_status="502")
            await asyncio.sleep(0.06)
            if c.state["rollout"]["state"] == "rolled_back":
                break
        ro = c.state["rollout"]
        assert ro["state"] == "rolled_back" and "error rate" in ro["reason"] and ro["rolled_back_by"] == "controller"
        assert gw.router.weights["canary"] == 0
        # manual: start, pause (no advance), set-weight, resume, promote, rollback
        await c.start_rollout("canary", "ops", "again", stages=[0.1, 0.5, 1.0], min_requests=0)
        await c.pause("ops", "look first")
        gw.traffic(50)
        await asyncio.sleep(0.2)
        assert c.state["rollout"]["stage"] == 0 and c.state["rollout"]["state"] == "paused"
        await c.set_weight("canary", 0.25, "ops", "bit more")
        assert gw.router.weights["canary"] == pytest.approx(0.25)
        await c.promote("ops", "manual")
        assert c.state["rollout"]["stage"] == 1 and gw.router.weights["canary"] == pytest.approx(0.5)
        await c.rollback("ops", "changed my mind")
        assert c.state["rollout"]["reason"] == "changed my mind" and gw.router.weights["canary"] == 0
        audit = await c.store.audit()
        assert [e["action"] for e in audit][-5:] == ["start", "pause", "set-weight", "promote", "rollback"]
        assert all(e["who"] == "ops" for e in audit[-5:]) and audit[-1]["why"] == "changed my mind"
    finally:
        await c.stop()


@pytest.mark.asyncio
async def test_controller_alarm_rollback_and_register_gate(tmp_path):
    gw = FakeGateway(tmp_path)
    c = CanaryController(gw, MemoryStore(), CFG)
    await c.start()
    try:
        # a FAIL verdict blocks registration unless forced; the override is audited
        d = tmp_path / "v2"
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "manifest.json").write_text(json.dumps({"gate": {"verdict": "FAIL", "reasons": ["win rate 0.41 < 0.5"]}}))
        with pytest.raises(ControlError) as e:
            await c.register(VersionSpec(name="v2", model=str(d)), False, "ops", None)
        assert e.value.status == 409 and "win rate" in e.value.message
        await c.register(VersionSpec(name="v2", model=str(d)), True, "ops", "hotfix")
        assert "v2" in gw.engines and "v2" in gw.router.order
        last = (await c.store.audit())[-1]
        assert last["action"] == "register-forced" and last["why"] == "hotfix"
        await c.unload("v2", "ops", "done")
        await _until(lambda: "v2" not in gw.engines)
        assert "v2" not in gw.router.order
        # an alarm from any registered source rolls back at once
        await c.start_rollout("canary", "ops", None, stages=[0.1, 1.0], min_requests=10_000)
        gw.alarm_sources[0].raise_alarm("canary", "reward_hacking", "I love you x40")
        await _until(lambda: c.state["rollout"]["state"] == "rolled_back")
        assert "reward_hacking" in c.state["rollout"]["reason"]
    finally:
        await c.stop()


def test_gate_verdict_of_an_unusable_path_is_none_not_an_error():
    """schemathesis found a 500: a `model` path with a component over 255 bytes made `Path.is_file` raise."""
    from serve.rollout.canary import read_gate_verdict

    assert read_gate_verdict("x" * 300)["verdict"] == "NONE"


@pytest.mark.asyncio
async def test_a_replica_adopts_the_stored_stable_and_judges_against_it(tmp_path):
    """Two replicas on one store: one promotes, the other adopts the new stable on its next tick — its router and
    its reward monitor (a new version there is judged against the new stable, not the one it started with)."""
    store = MemoryStore()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = FakeGateway(tmp_path / "a"), FakeGateway(tmp_path / "b")
    ca, cb = CanaryController(a, store, CFG), CanaryController(b, store, CFG)
    await ca.start()
    await cb.start()
    try:
        await ca.start_rollout("canary", "ops", None, stages=[0.5, 1.0], min_requests=10_000)
        await ca.promote("ops", "ship it", full=True)
        assert ca.state["rollout"]["state"] == "promoted" and a.router.stable == "canary"
        await _until(lambda: b.router.stable == "canary")
        monitor = b.quality.monitor
        assert b.quality.stable == "canary" and b.router.weights["canary"] == 1.0
        assert monitor._state("stable").baseline_of == "canary" and monitor._state("canary").baseline_of is None
        b.add_version(VersionSpec(name="v3", url="http://v3"))
        assert monitor._state("v3").baseline_of == "canary"
    finally:
        await ca.stop()
        await cb.stop()
