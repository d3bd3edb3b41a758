"""benchmarks.harness.alternate's orchestration (the load itself — `vllm bench serve` — is replaced by a recorder
here: this checks which system runs which load in which order and what the hooks add; the real load runs in
tests/test_benchmarks_smoke.py)."""

from __future__ import annotations

import pytest

from benchmarks import harness as H
from benchmarks.load import Load
from benchmarks.profiles import profile


@pytest.fixture
def recorded(monkeypatch):
    calls = []

    def run_load(url, load, tokenizer, work, label, slo, floor):
        calls.append((url, load.rate))
        return {"p99_e2el_ms": 10.0 if url.endswith("a") else 12.0, "p50_e2el_ms": 5.0, "status_counts": {}}

    monkeypatch.setattr(H, "run_load", run_load)
    monkeypatch.setattr(H, "line", lambda name, s: name)
    return calls


def _loads():
    return [Load(rate=r, num_prompts=4, input_len=8, output_len=4) for r in (1.0, 2.0)]


def test_launchers_run_one_at_a_time_with_the_hooks(recorded, tmp_path):
    events = []

    def launcher(name):
        def start():
            events.append(f"start {name}")
            return f"http://{name}", []
        return H.Launcher(start)

    entries = H.alternate({"a": launcher("a"), "b": launcher("b")}, _loads(), 2, "a", "tok", tmp_path, profile("cpu"),
                          before=lambda n, ld, r: {"pre": n}, after=lambda n, ld, r: {"post": ld.rate})
    assert events == ["start a", "start b", "start b", "start a"]  # A B, then B A
    assert recorded[:2] == [("http://a", 1.0), ("http://a", 2.0)]  # every load on A before B starts
    run = entries[1]["runs"]["b"][0]
    assert run["pre"] == "b" and run["post"] == 2.0 and run["round"] == 0
    assert entries[0]["ratio_over_baseline"]["b"]["p99_e2el_ms"]["median"] == pytest.approx(1.2)


def test_launchers_refuse_an_early_stop(recorded, tmp_path):
    with pytest.raises(ValueError, match="stop_after"):
        H.alternate({"a": H.Launcher(lambda: ("http://a", []))}, _loads(), 1, "a", "tok", tmp_path, profile("cpu"),
                    stop_after=lambda entry: True)
    assert recorded == []


def test_side_by_side_sweep_ends_early(recorded, tmp_path):
    entries = H.alternate({"a": "http://a", "b": "http://b"}, _loads(), 1, "a", "tok", tmp_path, profile("cpu"),
                          stop_after=lambda entry: entry["rate"] >= 1.0)
    assert len(entries) == 1 and len(recorded) == 2


def test_rotation_puts_every_system_in_every_position():
    assert [H.rotate(["a", "b"], r) for r in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    orders = [H.rotate(["a", "b", "c"], r) for r in range(3)]
    assert all(sorted(o[i] for o in orders) == ["a", "b", "c"] for i in range(3))


def test_every_round_brings_new_prompts_and_pairs_the_systems(monkeypatch, tmp_path):
    seeds = []

    def run_load(url, load, tokenizer, work, label, slo, floor):
        seeds.append((url, load.seed))
        return {"p99_e2el_ms": 10.0, "p50_e2el_ms": 5.0, "status_counts": {}}

    monkeypatch.setattr(H, "run_load", run_load)
    monkeypatch.setattr(H, "line", lambda name, s: name)
    load = Load(rate=1.0, num_prompts=4, input_len=8, output_len=4, seed=100)
    entries = H.alternate({"a": "http://a", "b": "http://b"}, [load], 3, "a", "tok", tmp_path, profile("cpu"))
    assert sorted(seeds) == sorted([(u, 100 + r) for r in range(3) for u in ("http://a", "http://b")])
    assert [r["seed"] for r in entries[0]["runs"]["b"]] == [100, 101, 102]
    assert load.seed == 100  # the caller's load is left alone


def test_pooled_ratio_ci_brackets_the_ratio_and_narrows_with_more_requests():
    import random

    rng = random.Random(0)

    def runs(scale, n):
        return [{"e2el_ms_all": [rng.lognormvariate(0, 0.5) * scale for _ in range(n)]} for _ in range(3)]

    small_a, small_b = runs(1.2, 100), runs(1.0, 100)
    lo, hi = H.pooled_ratio_ci(small_a, small_b)
    ratio = H.pooled_p99(small_a) / H.pooled_p99(small_b)
    assert lo < ratio < hi
    big_lo, big_hi = H.pooled_ratio_ci(runs(1.2, 3000), runs(1.0, 3000))
    assert big_lo < 1.2 < big_hi and big_lo > 1.0  # a real 1.2× difference is seen with enough requests
    assert (big_hi - big_lo) < (hi - lo)
    assert H.pooled_ratio_ci([{"e2el_ms_all": []}], small_b) == (None, None)
    r = H.ratios({"a": small_b, "b": small_a}, "a")["b"]["p99_e2el_ms_pooled"]
    assert r["ci95"][0] < r["ratio"] < r["ci95"][1]
