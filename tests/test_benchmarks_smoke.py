"""Every benchmark scenario runs end to end in smoke mode (a handful of requests, one round), so the scripts
cannot rot; plus the t4 profile's "no GPU here" exit. Speed targets live in the benchmarks, never here.

Cost control (the smoke total should stay near ~3 minutes on a quiet 2-core machine): one tiny model for
all (the session's default stable policy); scenarios whose systems sit in front of a vLLM server (vs-litellm,
canary and overload in remote mode) reuse the session's `vllm_server` instead of starting their own; the
in-process scenarios (vs-vllm, reward, cache) must start their own engines — that is what they measure.

vs-litellm: the smoke run installs LiteLLM into `.cache/bench-venvs/litellm` (gitignored) the first time, about
a minute here, then reuses it. We chose install-once over skipping when the venv is missing: a test that skips on
every fresh CI checkout would never catch the scenario rotting, and CI reaches the package registries. If the
install fails (no network), the scenario exits 3 with the reason and this test is skipped with that reason.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.procs import ROOT


def run_bench(tmp_path, cache_dir, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    model = str(cache_dir / "models" / "default-stable")
    return subprocess.run([sys.executable, "-m", "benchmarks", *args, "--smoke", "--model", model, "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check(proc: subprocess.CompletedProcess, tmp_path, stem: str, systems: set[str]) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / f"{stem}_cpu_smoke.json").read_text())
    assert result["machine"]["cores"] and "versions" in result["machine"]
    assert (tmp_path / f"{stem}_cpu_smoke.md").read_text().startswith(f"**{result['scenario']}**")
    assert (tmp_path / f"{stem}_cpu_smoke.png").exists()
    for e in result["entries"]:
        assert set(e["runs"]) == systems
        for runs in e["runs"].values():
            for run in runs:
                for m in ("p50_ttft_ms", "p99_tpot_ms", "p90_itl_ms", "p99_e2el_ms", "request_throughput"):
                    assert run[m] is not None, m
                assert run["request_goodput"] is not None
                # the per-request join (reward capture ↔ vLLM's detailed record) is exact
                assert abs(run["goodput_recomputed"] - run["request_goodput"]) < 1e-6
    return result


def ok_runs(result: dict):
    return [run for e in result["entries"] for runs in e["runs"].values() for run in runs]


@pytest.mark.parametrize("scenario,systems", [("vs-vllm", {"vllm", "aligngate"}),
                                              ("reward", {"reward-off", "reward-on", "second-pass"})])
def test_serve_scenarios_smoke(tmp_path, cache_dir, scenario, systems):
    # reward runs one system at a time (the GPU profiles' mode; same engine starts as side by side in a smoke run)
    extra = ("--one-at-a-time",) if scenario == "reward" else ()
    result = check(run_bench(tmp_path, cache_dir, scenario, *extra), tmp_path, scenario.replace("-", "_"), systems)
    assert result["one_system_at_a_time"] == bool(extra)
    assert all(r["failed"] == 0 and r["completed"] == 6 for r in ok_runs(result))
    runs = result["entries"][0]["runs"]
    with_reward = "aligngate" if scenario == "vs-vllm" else "reward-on"
    assert all(r["rewards_seen"] == 6 and r["reward_goodput"] is not None for r in runs[with_reward])
    no_reward = "vllm" if scenario == "vs-vllm" else "reward-off"
    assert all(r["reward_goodput"] is None for r in runs[no_reward])
    settings = result["engine_settings"]  # both sides' engine settings are recorded, stats logging included
    assert settings["aligngate_version"]["log_stats"] is False and settings["vllm_server"]["log_stats"] is False
    assert "--disable-log-stats" in settings["vllm_server"]["extra"]


def test_overhead_smoke(tmp_path, cache_dir):
    result = check(run_bench(tmp_path, cache_dir, "overhead"), tmp_path, "overhead", {"direct", "aligngate"})
    assert result["own_latency_ms"] and "p99_e2el_added_ms" in result["own_latency_ms"][0]
    assert all(r["failed"] == 0 for r in ok_runs(result))
    assert "stand-in" in (ROOT / "benchmarks" / "fake_upstream.py").read_text().split('"""')[1].lower()


def test_canary_smoke(tmp_path, cache_dir, vllm_server):
    proc = run_bench(tmp_path, cache_dir, "canary", "--engine", "remote", "--vllm-url", vllm_server)
    result = check(proc, tmp_path, "canary", {"no-canary", "canary-10"})
    assert all(r["failed"] == 0 for r in ok_runs(result))
    assert set(result["entries"][0]["runs"]["no-canary"][0]["versions"]) == {"stable"}


def test_overload_smoke(tmp_path, cache_dir, vllm_server):
    proc = run_bench(tmp_path, cache_dir, "overload", "--engine", "remote", "--vllm-url", vllm_server)
    result = check(proc, tmp_path, "overload", {"unloaded", "2x-capacity"})
    assert result["capacity"]["req_s"] > 0
    assert result["summary"]["gateway alive at the end"] is True
    assert isinstance(result["summary"]["target met"], bool)  # p99 judged together with goodput / capacity
    assert "goodput at 2× (req/s within every SLO) / capacity" in result["summary"]
    for r in ok_runs(result):  # every request is either answered or refused (status counted), none lost
        assert sum(r["status_counts"].values()) == r["completed"] + r["failed"]
        assert r["rss_after_mb"]["rss_mb"] > 0


def test_cache_smoke(tmp_path, cache_dir):
    result = check(run_bench(tmp_path, cache_dir, "cache"), tmp_path, "cache", {"lru-only", "lru+redis"})
    assert [e["label"] for e in result["entries"]] == ["cold", "warm"]
    cold, warm = result["entries"]
    for name in ("lru-only", "lru+redis"):  # greedy + same seed: the warm pass finds the cold pass's rewards
        assert warm["runs"][name][0]["reward_cached"] >= 1
        assert cold["runs"][name][0]["rewards_seen"] == 6
    assert result["micro"]["lru"]["get_lru"]["n"] > 0


def test_vs_litellm_smoke(tmp_path, cache_dir, vllm_server):
    proc = run_bench(tmp_path, cache_dir, "vs-litellm", "--vllm-url", vllm_server)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    result = check(proc, tmp_path, "vs_litellm", {"litellm", "aligngate"})
    assert all(r["failed"] == 0 and r["completed"] == 6 for r in ok_runs(result))


def test_t4_profile_without_gpu_says_so():
    from benchmarks.profiles import gpu_present

    if gpu_present()[0]:
        pytest.skip("a GPU is present: the t4 profile would run")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "vs-vllm", "--profile", "t4", "--model", "/nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no GPU is present on this machine" in proc.stderr and "--profile t4" in proc.stderr


def test_help_lists_scenarios():
    proc = subprocess.run([sys.executable, "-m", "serve.cli", "bench", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for s in ("vs-vllm", "vs-litellm", "canary", "reward", "cache", "overhead", "overload"):
        assert f"  {s}" in proc.stdout


def test_readout_smoke(tmp_path, cache_dir):
    """benchmarks.bench_readout: one engine, read-out on and off alternated; it writes figures and a plot."""
    model = str(cache_dir / "models" / "default-stable")
    out = tmp_path / "readout.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_readout", "--smoke", "--model", model, "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    entry = result["engines"]["shm"]["4"]
    assert len(entry["rounds_on"]) == len(entry["rounds_off"]) == 2
    assert entry["tpot_ms_on"] > 0 and entry["tpot_ms_off"] > 0
    assert "shm batch 4" in result["summary"] and out.with_suffix(".png").stat().st_size > 0
