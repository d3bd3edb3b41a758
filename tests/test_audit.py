"""Audit reward model: ONNX == torch == training's scorer on a tiny locally built RM; batching; sampling."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from serve.rewards.audit import AuditConfig, AuditScorer, RewardScorer
from serve.monitor.monitor import RewardMonitor
from serve.monitor.monitor_config import MonitorConfig

ONNX_TOL = 1e-4  # |onnxruntime − torch| on raw scores (measured ~2e-7 here)
PROMPTS = ["add 12 30", "reverse abcd", "héllo wörld", "say <|end|> please", "x" * 200]
RESPONSES = ["42", "dcba I love you!", "ünïcode ✓", "<|end|>", "y" * 250]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> Path:
    """A random-weight tiny reward model, saved by the training module's own helper (HF dir + ONNX + config)."""
    import torch

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("audit") / "rm"
    try:
        from training import reward_model as RM
    except ImportError:  # pragma: no cover — the contract without the training module
        RM = None
    if RM is not None:
        RM.save(RM.ScoreWrapper(RM.new_reward_model(RM.RMConfig(size="tiny"))), d, {"version": "rm-test"})
        return d
    pytest.skip("training.reward_model not importable")  # pragma: no cover


def test_onnx_equals_torch_equals_training(rm_dir):
    onnx, torch_ = RewardScorer(rm_dir, "onnx"), RewardScorer(rm_dir, "torch")
    assert onnx.backend.name == "onnx" and torch_.backend.name == "torch"
    assert RewardScorer(rm_dir).backend.name == "onnx"  # the default (benchmarked ≥ 1.3× faster)
    so, st = onnx.score(PROMPTS, RESPONSES), torch_.score(PROMPTS, RESPONSES)
    assert np.max(np.abs(so - st)) < ONNX_TOL
    from training import reward_model as RM

    ref = RM.RewardModel(rm_dir).score(PROMPTS, RESPONSES)  # training's own encoding and scorer
    assert np.max(np.abs(st - ref)) < 1e-5
    assert onnx.model_version == "rm-test"
    assert abs(onnx.reward01(onnx.mu_ref) - 0.5) < 1e-12


def test_long_sequences_are_truncated_to_max_length(rm_dir):
    s = RewardScorer(rm_dir, "onnx", max_length=64)
    ids, att = s.encoder.encode(["p" * 10, "q"], ["r" * 1000, "ok"])
    assert ids.shape == (2, 64) and att[1].sum() < 64 and ids[0, -1] == s.encoder.ids["end"]
    assert np.isfinite(s.score(["p" * 10], ["r" * 1000])).all()


def test_torch_fallback_without_onnx(rm_dir, tmp_path):
    d = tmp_path / "rm"
    shutil.copytree(rm_dir, d, ignore=shutil.ignore_patterns("*.onnx"))
    s = RewardScorer(d)
    assert s.backend.name == "torch"
    with pytest.raises(FileNotFoundError):
        RewardScorer(d, "onnx")


async def test_burst_is_one_model_call_and_futures_resolve(rm_dir):
    aud = AuditScorer(AuditConfig(rm_dir, fraction=1.0, max_batch=64, max_wait_ms=20))
    ref = aud.scorer.score(PROMPTS * 8, RESPONSES * 8)
    t0 = time.perf_counter()
    futs = [aud.submit(p, r, version="v1", request_id=f"q{i}") for i, (p, r) in enumerate(zip(PROMPTS * 8, RESPONSES * 8))]
    assert time.perf_counter() - t0 < 0.01  # submitting never waits for the model
    res = await asyncio.wait_for(asyncio.gather(*futs), 10)
    assert aud.calls == 1 and all(r.batch_size == 40 for r in res)
    assert np.max(np.abs(np.array([r.score for r in res]) - ref)) < 1e-4  # same scores batched or not
    assert all(0.0 <= r.reward <= 1.0 and r.model_version == "rm-test" for r in res)

    futs = [aud.submit("add 1 1", f"{i}") for i in range(100)]  # more than a batch: ceil(100 / 64) calls
    await asyncio.wait_for(asyncio.gather(*futs), 10)
    assert aud.calls == 3
    await aud.close()


async def test_sampling_listener_and_monitor_hookup(rm_dir):
    mon = RewardMonitor(MonitorConfig(min_samples=20))
    aud = AuditScorer(AuditConfig(rm_dir, fraction=0.25, max_batch=32, max_wait_ms=2))
    ids = [f"req-{i}" for i in range(4000)]
    share = sum(aud.should_audit(i) for i in ids) / len(ids)
    assert 0.22 < share < 0.28 and [aud.should_audit(i) for i in ids[:50]] == [aud.should_audit(i) for i in ids[:50]]
    assert aud.maybe_submit("p", "r", request_id=next(i for i in ids if not aud.should_audit(i))) is None
    forced = aud.maybe_submit("p", "r", request_id=next(i for i in ids if not aud.should_audit(i)), force=True)
    assert forced is not None and (await forced).batch_size >= 1

    # the value head claims 0.99 for everything; the audit RM (random weights, σ around 0.5) disagrees
    aud.add_listener(lambda item, res: mon.observe_audit(item.version, item.meta["value"], res.reward))
    futs = [aud.submit("add 1 1", f"{i} I love you", version="canary", meta={"value": 0.99}) for i in range(40)]
    await asyncio.gather(*futs)
    assert "audit_disagreement" in {a.name for a in mon.active_alarms("canary")}
    await aud.close()


async def test_close_cancels_pending_and_queue_bound(rm_dir):
    aud = AuditScorer(AuditConfig(rm_dir, fraction=1.0, max_pending=3, max_wait_ms=1000, max_batch=64))
    futs = [aud.submit("p", str(i)) for i in range(5)]
    assert futs[3] is None and futs[4] is None and aud.dropped == 2
    await aud.close()
    assert all(f.cancelled() for f in futs[:3])
