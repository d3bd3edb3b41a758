"""Fast tests of the reward-guided serving logic (issue 20): the choice rule, adaptive k, the floor and its gate
alarm, the audit cross-check alarm, the config and request checks. The engine tests are in test_best_of.py."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from serve.rewards.best_of import AuditCrossCheck, BestOfMetrics, choose, effective_k, sibling
from serve.config import VersionSpec
from serve.engines.engine import GenerationRequest
from serve.rewards.reward_floor import FallbackReport, FloorHits, below_floor
from serve.api.schemas import ChatCompletionRequest, CompletionRequest


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_choose_max_and_ties_and_missing_scores():
    assert choose([0.1, 0.9, 0.5], [3, 3, 3]) == 1
    assert choose([0.7, 0.7], [3, 3]) == 0  # a tie goes to the lower index
    assert choose([None, 0.2, float("nan")], [1, 1, 1]) == 1  # unscored candidates are never preferred
    assert choose([None, None], [1, 1]) == 0


def test_choose_length_guard_drops_runaway_answers():
    scores, lengths = [0.5, 0.6, 0.99], [10, 11, 40]
    assert choose(scores, lengths, "max") == 2
    assert choose(scores, lengths, "max_length_guard", length_ratio=1.5) == 1
    assert choose([0.1, 0.2], [50, 50], "max_length_guard") == 1  # nothing is over the median: plain max
    with pytest.raises(ValueError):
        choose([0.1], [1], "min")


@pytest.mark.parametrize("active,waiting,limit,ceiling,expected", [
    (1, 0, 8, 8, 4),   # alone: the k asked for
    (5, 0, 8, 8, 2),   # 4 others in 8 slots: half
    (8, 0, 8, 8, 1),   # full
    (1, 3, 8, 8, 1),   # a queue: saturated
    (1, 0, 4, 8, 2),   # the adaptive limit halved (latency grew): half
])
def test_effective_k_shrinks_with_load(active, waiting, limit, ceiling, expected):
    assert effective_k(4, active, waiting, limit, ceiling) == expected


def test_effective_k_never_above_asked_or_below_one():
    for active in range(0, 20):
        for waiting in (0, 1):
            k = effective_k(8, active, waiting, 10, 10)
            assert 1 <= k <= 8
    assert effective_k(1, 0, 0, 10, 10) == 1


def test_sibling_seeds_and_ids():
    req = GenerationRequest(request_id="r", kind="completion", prompt="x", seed=7)
    assert sibling(req, 0) is req  # sibling 0 is the plain request: k = 1 answers what a plain request answers
    s = sibling(req, 2)
    assert (s.request_id, s.seed, s.n) == ("r-2", 9, 1)
    assert sibling(GenerationRequest(request_id="r", kind="completion", prompt="x"), 1).seed is None


def test_floor_and_gate_alarm():
    assert below_floor(0.1, 0.5) and not below_floor(0.6, 0.5)
    assert not below_floor(None, 0.5) and not below_floor(0.1, None) and not below_floor(float("nan"), 0.5)
    clock, reg = Clock(), CollectorRegistry()
    hits = FloorHits(reg, window_s=60, min_n=10, clock=clock)
    for i in range(9):
        hits.record("canary", True, 0.2)
    assert hits.active_alarms("canary") == []  # fewer than min_n answers: no verdict
    hits.record("canary", False, 0.2)
    (alarm,) = hits.active_alarms("canary")
    assert alarm.name == "reward_floor_fallbacks" and alarm.value == pytest.approx(0.9) and alarm.n == 10
    assert hits.active_alarms("stable") == []
    clock.t += 61  # out of the window
    assert hits.active_alarms("canary") == []
    hits.record("off", True, None)
    assert hits.active_alarms("off") == []  # fallback_share_max: null turns the gate input off
    text = generate_latest(reg).decode()
    assert 'aligngate_reward_floor_hits_total{outcome="fallback",version="canary"} 9.0' in text
    rep = FallbackReport("canary", "stable", 0.5, 0.1, True).as_dict()
    assert rep == {"from": "canary", "to": "stable", "floor": 0.5, "reward": 0.1, "source": "value",
                   "answered_by_fallback": True}


def test_audit_cross_check_alarm_and_metrics():
    clock, reg = Clock(), CollectorRegistry()
    m = BestOfMetrics(reg)
    cc = AuditCrossCheck(m, window_s=60, min_n=5, clock=clock)
    for _ in range(5):
        cc.record("v", 0.9, 0.8, gap_max=0.3)  # a small gap: fine
    assert cc.active_alarms("v") == []
    for _ in range(20):
        cc.record("v", 0.95, 0.2, gap_max=0.3)
    (alarm,) = cc.active_alarms("v")
    assert alarm.name == "best_of_overoptimisation" and alarm.value > 0.3
    m.record("v", 4, 2)
    text = generate_latest(reg).decode()
    assert 'aligngate_best_of_k_last{version="v"} 2.0' in text
    assert 'aligngate_best_of_shrunk_total{version="v"} 1.0' in text
    assert "aligngate_best_of_audit_gap" in text


def test_version_config():
    v = VersionSpec(name="c", model="/m", best_of=4, best_of_max=4, reward_floor=0.2, fallback_version="stable")
    assert (v.best_of, v.best_of_rule, v.fallback_budget_s) == (4, "max", 10.0)
    with pytest.raises(ValidationError, match="exceeds best_of_max"):
        VersionSpec(name="c", model="/m", best_of=5, best_of_max=4)
    with pytest.raises(ValidationError):
        VersionSpec(name="c", model="/m", best_of_rule="min")


def test_request_best_of_is_an_integer():
    msg = [{"role": "user", "content": "hi"}]
    assert ChatCompletionRequest.model_validate({"model": "m", "messages": msg, "best_of": 4}).best_of == 4
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "best_of": 2.0}).best_of == 2
    for bad in ("4", True, 2.5):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({"model": "m", "messages": msg, "best_of": bad})


def _plan(best_of=None, n=1, stream=False, value_head=True, **spec_kw):
    """`serve.api.completions._best_of_k` against a gateway's specs and an engine's flag (plain stand-ins: the check
    reads nothing else)."""
    from types import SimpleNamespace

    from serve.api.completions import _best_of_k

    spec = VersionSpec(name="v", model="/m", **spec_kw)
    gw = SimpleNamespace(specs={"v": spec})
    engine = SimpleNamespace(name="v", has_value_head=value_head)
    body = ChatCompletionRequest.model_validate({"model": "v", "messages": [{"role": "user", "content": "x"}],
                                                 "best_of": best_of, "n": n, "stream": stream,
                                                 **({"temperature": 1.0} if n > 1 else {})})
    return _best_of_k(gw, body, engine)


def test_best_of_request_checks():
    from serve.api.errors import APIError

    assert _plan() is None  # plain path
    assert _plan(best_of=3) == 3
    assert _plan(best_of_max=8, best_of=4) == 4
    assert _plan(**{"best_of": None}, value_head=True) is None
    assert _plan(reward_floor=0.1) == 1  # the floor takes non-stream requests through the guided path
    assert _plan(reward_floor=0.1, stream=True) is None  # ... but never a plain stream
    for kw, needle in [({"best_of": 0}, "k >= 1"), ({"best_of": 9}, "at most 8"),
                       ({"best_of": 2, "n": 2}, "cannot be combined with n = 2"),
                       ({"best_of": 2, "value_head": False}, "has no value head")]:
        with pytest.raises(APIError) as e:
            _plan(**kw)
        assert e.value.status == 400 and needle in str(e.value.message), kw


def test_version_default_best_of_applies_without_a_request_value():
    from types import SimpleNamespace

    from serve.api.completions import _best_of_k

    spec = VersionSpec(name="v", model="/m", best_of=4)
    body = ChatCompletionRequest.model_validate({"model": "v", "messages": [{"role": "user", "content": "x"}]})
    assert _best_of_k(SimpleNamespace(specs={"v": spec}), body, SimpleNamespace(name="v", has_value_head=True)) == 4
    # a version without a value head has nothing to choose by: its default does not apply
    assert _best_of_k(SimpleNamespace(specs={"v": spec}), body, SimpleNamespace(name="v", has_value_head=False)) is None
