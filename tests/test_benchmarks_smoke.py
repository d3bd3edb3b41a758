"""The serving benchmark scripts run end to end in smoke mode (a handful of requests), so they cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.procs import ROOT


@pytest.mark.parametrize("scenario,systems", [("vs-vllm", {"vllm", "aligngate"}),
                                              ("reward", {"reward-off", "reward-on", "second-pass"})])
def test_bench_serve_smoke(tmp_path, cache_dir, scenario, systems):
    out = tmp_path / f"{scenario}.json"
    model = str(cache_dir / "models" / "default-stable")
    proc = subprocess.run([sys.executable, "benchmarks/bench_serve.py", "--smoke", "--scenario", scenario,
                           "--model", model, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rate = result["rates"][0]
    assert set(rate["runs"]) == systems
    assert all(run["failed"] == 0 and run["completed"] == 8 for runs in rate["runs"].values() for run in runs)
    assert out.with_suffix(".png").exists()
