"""The quarantine in tests/test_scale_out.py skips only on the known stall's own signature (tests/stall.py): shown
on log lines in the shape a real gateway writes them (taken from a real start-up here)."""

from __future__ import annotations

from datetime import datetime

from tests.stall import stall_signature

START = ('{"version": "valued", "model": "/m/default-stable", "value_head": true, "event": "engine_starting", '
         '"level": "info", "timestamp": "2026-12-05T08:13:24.659039Z"}')
CORE = [
    "(EngineCore pid=16901) INFO 12-05 08:13:39 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: x",
    "(EngineCore pid=16901) INFO 12-05 08:13:39 [ompmultiprocessing.py:185] OpenMP thread binding info: ",
    "(EngineCore pid=16901) INFO 12-05 08:13:39 [ompmultiprocessing.py:185] \tlocal_rank=0, core ids=[0]",
    "(EngineCore pid=16901) INFO 12-05 08:13:39 [ompmultiprocessing.py:185] \treserved_cpus=[1]",
]
WORKER = ["(Worker pid=16969) WARNING 12-05 08:13:48 [cpu_worker.py:114] libtcmalloc is not found in LD_PRELOAD.",
          "(Worker pid=16969) INFO 12-05 08:13:49 [cpu_model_runner.py:68] Starting to load model /m..."]
READY = '{"version": "valued", "max_model_len": 512, "event": "engine_ready", "level": "info"}'


def test_the_stall_matches():
    sig = stall_signature("\n".join(["earlier", START, *CORE]))
    assert sig is not None and "16901" in sig and "[0]" in sig


def test_other_outcomes_do_not_match():
    assert stall_signature("\n".join([START, *CORE, *WORKER])) is None  # slow, but the worker is going
    assert stall_signature("\n".join([START, *CORE, *WORKER, READY])) is None
    assert stall_signature("\n".join([START, *CORE, "Traceback (most recent call last):", "ValueError: x"])) is None
    assert stall_signature("\n".join([START, CORE[0]])) is None  # stuck before the worker plan: another failure
    assert stall_signature("\n".join(CORE)) is None  # no engine start in the log at all
    # an earlier version's healthy start does not hide a later start that stalls, nor the other way round
    assert stall_signature("\n".join([START, *CORE, *WORKER, READY, START, *CORE])) is not None
    assert stall_signature("\n".join([START, *CORE, START, *CORE, *WORKER])) is None


def test_a_recent_plan_is_a_slow_start_not_the_stall():
    log = "\n".join([START, *CORE])
    assert stall_signature(log, now=datetime(2026, 12, 5, 8, 13, 59)) is None  # 20 s of silence only
    sig = stall_signature(log, now=datetime(2026, 12, 5, 8, 20, 0))
    assert sig is not None and "381 s" in sig
