"""Resuming is exact: a PPO run saved at iteration s and resumed ends where an uninterrupted run ends — the same
KL coefficient, optimizer step count and weights (within float noise), the checkpoint loaded strictly. A tiny
random-weight Llama-3-family base, a reward function, four prompts, three iterations (a few seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from training import task as T
from training.cli import main as train

pytestmark = pytest.mark.slow  # training runs (small ones)


def _ppo(base, prompts, out, *extra):
    return ["ppo", "--base", str(base), "--reward", "training.task:oracle_rewards", "--prompts", str(prompts),
            "--batch-size", "4", "--max-new-tokens", "4", "--save-every", "1", "--out", str(out), *extra]


def _end(out):
    ck = torch.load(out / "_ckpt" / "ppo.pt", weights_only=False)
    steps = {int(s["step"]) for s in ck["opt"]["state"].values()}
    return ck, steps, load_file(str(out / "model.safetensors")), json.loads((out / "history.json").read_text())


@pytest.mark.parametrize("lora", [None, "4,8"], ids=["full", "lora"])
def test_ppo_resumed_equals_uninterrupted(tmp_path, family_checkpoint, lora):
    base = family_checkpoint("llama3", value_head=None)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": e.prompt}) + "\n" for e in T.make_examples(8, seed=1)))
    lo = ["--lora", lora] if lora else []
    assert train(_ppo(base, prompts, tmp_path / "full", "--iterations", "3", *lo)) == 0
    assert train(_ppo(base, prompts, tmp_path / "cut", "--iterations", "2", *lo)) == 0
    assert train(_ppo(base, prompts, tmp_path / "cut", "--iterations", "3", "--resume", *lo)) == 0
    a_ck, a_steps, a_w, a_hist = _end(tmp_path / "full")
    b_ck, b_steps, b_w, b_hist = _end(tmp_path / "cut")
    # the share that trains, recorded by the run (a LoRA adapter + the value head; everything without --lora)
    frac = json.loads((tmp_path / "full" / "metrics.json").read_text())["trainable_frac"]
    assert (0 < frac < 0.5) if lora else frac == 1.0
    assert a_ck["iteration"] == b_ck["iteration"] == 2
    assert a_steps == b_steps and len(a_steps) == 1 and a_steps.pop() > 0  # every parameter stepped alike
    assert b_ck["kl_coef"] == pytest.approx(a_ck["kl_coef"], rel=1e-6, abs=1e-9)
    assert len(b_hist["kl_coef"]) == 3 and b_hist["kl_coef"] == pytest.approx(a_hist["kl_coef"], rel=1e-6)
    assert b_hist["reward"] == pytest.approx(a_hist["reward"], abs=1e-6)
    assert set(a_w) == set(b_w)
    worst = max(float((a_w[k] - b_w[k]).abs().max()) for k in a_w)
    moved = max(float((a_w[k] - w).abs().max()) for k, w in load_file(str(base / "model.safetensors")).items()
                if k in a_w)
    assert moved > 1e-4  # the runs trained (else equal weights would prove nothing)
    assert worst < 1e-5, worst
    assert set(a_ck["trainable"]) == set(b_ck["trainable"])
    for k in a_ck["trainable"]:
        torch.testing.assert_close(b_ck["trainable"][k], a_ck["trainable"][k], rtol=1e-5, atol=1e-6)


def test_ppo_resume_refuses_a_checkpoint_that_does_not_fit(tmp_path, family_checkpoint):
    """Strict loading: a checkpoint written for other trainable weights (full vs LoRA) stops the run, naming it."""
    base = family_checkpoint("llama3", value_head=None)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": e.prompt}) + "\n" for e in T.make_examples(4, seed=1)))
    assert train(_ppo(base, prompts, tmp_path / "run", "--iterations", "1")) == 0
    with pytest.raises(SystemExit, match="--resume"):
        train(_ppo(base, prompts, tmp_path / "run", "--iterations", "2", "--resume", "--lora", "4,8"))


def test_pipeline_base_manifests_record_stage_and_data_and_no_verdict_for_the_base(tmp_path, family_checkpoint):
    """`pipeline --base`: every exported version's manifest says which stage made it and hashes the pairs it was
    trained on; the exported base is a baseline, not a gate PASS it never earned."""
    from training.export import read_manifest

    base = family_checkpoint("llama3", value_head=None)
    exs = T.make_examples(24, seed=4)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": e.prompt, "chosen": e.answer, "rejected": e.answer + " I love you!"})
                             + "\n" for e in exs))
    assert train(["pipeline", "--base", str(base), "--pairs", str(pairs), "--fast", "--lora", "4,8",
                  "--out", str(tmp_path / "p")]) == 0
    vers = tmp_path / "p" / "versions"
    m = {v: read_manifest(vers / v) for v in ("base", "dpo", "ppo")}
    assert {v: m[v]["stage"] for v in m} == {"base": "base", "dpo": "dpo", "ppo": "ppo"}
    hashes = {m[v]["data_hash"] for v in m}
    assert len(hashes) == 1 and None not in hashes  # the same training pairs behind every version
    assert m["base"]["gate"]["verdict"] == "UNGATED" and m["base"]["gate"]["baseline"] is True
    assert {m["dpo"]["gate"]["verdict"], m["ppo"]["gate"]["verdict"]} <= {"PASS", "FAIL"}
