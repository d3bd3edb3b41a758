"""`aligngate train pipeline --base DIR --pairs FILE`: a team's checkpoint and preference pairs, end to end.

    [sft on --demos] -> rm -> dpo -> ppo (RM reward, adaptive KL, value head) -> eval each vs the base (RM judge;
    the oracle too when the prompts are the default task's) -> gate -> versions/{base,dpo,ppo} with manifest.json

Every stage is the same CLI stage a user runs by hand (training/cli.py), so the pipeline is exactly the documented
flow. The pairs are split once: 90% train (RM, DPO; their prompts are PPO's rollout prompts), 10% held out (their
prompts are the evaluation prompts). Out dir: data/ sft/ rm/ dpo/ ppo/ eval/ gate/ versions/ pipeline.json.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from training import common as C


@dataclass
class BasePipelineConfig:
    base: Path
    pairs: Path
    labels: Path | None = None
    aggregate: str = "ds"
    demos: Path | None = None
    lora: str | None = "16,32"
    fast: bool = False
    seed: int = 0
    skip_invalid: bool = False


def run(out: Path, cfg: BasePipelineConfig, user_prefs: list[dict], stage: Callable[[list[str]], int]) -> dict:
    """`user_prefs`: the preference rows --pairs (+ --labels) resolve to; `stage(argv) -> exit code`: one CLI stage
    (training/cli.py passes both, so this module does not import the CLI that dispatches to it)."""
    from training import formats as F

    out.mkdir(parents=True, exist_ok=True)
    prefs = [F.to_conversational(p) for p in user_prefs]
    if len(prefs) < 10:
        raise SystemExit(f"error: {cfg.pairs}: {len(prefs)} preference rows; the pipeline needs at least 10")
    random.Random(cfg.seed).shuffle(prefs)
    n_test = max(2, len(prefs) // 10)
    train, test = prefs[n_test:], prefs[:n_test]
    C.write_jsonl(out / "data" / "train_pairs.jsonl", train)
    C.write_jsonl(out / "data" / "heldout_prompts.jsonl", [{"prompt": p["prompt"]} for p in test])
    common = ["--seed", str(cfg.seed)] + (["--fast"] if cfg.fast else []) + (["--lora", cfg.lora] if cfg.lora else [])
    small = ["--steps", "3", "--batch-size", "4"] if cfg.fast else []
    timings: dict[str, float] = {}

    def timed(name: str, argv: list[str]) -> None:
        with C.Timer() as t:
            rc = stage(argv)
        if rc != 0:
            raise SystemExit(f"error: stage {name} exited with {rc}")
        timings[name] = round(t.seconds, 1)

    policy = cfg.base
    if cfg.demos:
        timed("sft", ["sft", "--base", str(cfg.base), "--demos", str(cfg.demos), "--out", str(out / "sft"),
                      *common, *small])
        policy = out / "sft"
    pairs = str(out / "data" / "train_pairs.jsonl")
    timed("rm", ["rm", "--base", str(policy), "--pairs", pairs, "--out", str(out / "rm"), *common, *small])
    timed("dpo", ["dpo", "--base", str(policy), "--pairs", pairs, "--out", str(out / "dpo"), *common, *small])
    ppo_small = ["--iterations", "2", "--batch-size", "4", "--max-new-tokens", "16"] if cfg.fast else []
    timed("ppo", ["ppo", "--base", str(policy), "--reward", str(out / "rm"), "--prompts", pairs,
                  "--out", str(out / "ppo"), *common, *ppo_small])
    ev_args = ["--prompts", str(out / "data" / "heldout_prompts.jsonl"), "--reward", str(out / "rm"),
               "--n-prompts", "32" if cfg.fast else "400", "--max-new-tokens", "16" if cfg.fast else "64"]
    verdicts = {}
    for name in ("dpo", "ppo"):
        timed(f"eval_{name}", ["eval", "--candidate", str(out / name), "--incumbent", str(policy),
                               "--out", str(out / "eval" / name), *ev_args])
        stage(["gate", "--eval", str(out / "eval" / name / "eval.json"), "--out", str(out / "gate" / name)])
        verdicts[name] = json.loads((out / "gate" / name / "verdict.json").read_text())
    baseline = out / "gate" / "base.json"
    # the incumbent is not gated (nothing to compare it against): a baseline with no verdict, never a PASS
    C.write_json(baseline, {"verdict": "UNGATED", "reasons": [], "checks": {}, "baseline": True,
                            "note": "incumbent baseline: not gated, nothing to compare against"})
    value_n = ["--value-n", "64" if cfg.fast else "256"]
    # the manifests' data_hash: the pairs the versions were trained on (+ the SFT demonstrations)
    data = ["--data", pairs] + (["--data", str(cfg.demos)] if cfg.demos else [])
    timed("export_base", ["export", "--policy", str(policy), "--version", "base", "--gate", str(baseline),
                          "--rm", str(out / "rm"), "--prompts", pairs, "--out", str(out / "versions"), *value_n,
                          *data])
    for name in ("dpo", "ppo"):
        timed(f"export_{name}", ["export", "--policy", str(out / name), "--version", name, "--parent", "base",
                                 "--gate", str(out / "gate" / name / "verdict.json"), "--rm", str(out / "rm"),
                                 "--prompts", pairs, "--out", str(out / "versions"), *value_n, *data])
    summary = {"out_dir": str(out), "base": str(cfg.base), "pairs": str(cfg.pairs), "n_train_pairs": len(train),
               "n_heldout_prompts": len(test), "timings": timings,
               "verdicts": {k: {"verdict": v["verdict"], "reasons": v["reasons"]} for k, v in verdicts.items()},
               "versions": sorted(p.name for p in (out / "versions").iterdir())}
    C.write_json(out / "pipeline.json", summary)
    return summary


def headline(summary: dict) -> str:
    lines = [f"pipeline (--base {summary['base']}) -> {summary['out_dir']}/versions: {summary['versions']}"]
    for k, v in summary["verdicts"].items():
        lines.append(f"  {k}: gate {v['verdict']} {'; '.join(v['reasons'])[:300]}")
    return "\n".join(lines)
