"""LoRA on a ~0.5B-parameter base (issue 18 target) -> benchmarks/results/train_base_0.5b.json.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_train_base.py [--out runs/bench_train_base] [--steps 4]

The base is Qwen2-0.5B-shaped with random weights (no hub here): hidden 896, 24 layers, 14 heads of 64, 2 KV
heads, intermediate 4864, vocabulary 151936 rows (tied), fp32 — 494M parameters. Its tokenizer is the small
qwen2-family BPE of training/families.py (a few hundred tokens), so sequences are short; the LM head still has
all 151936 rows, which is what dominates memory in PPO's log-probs. Each stage runs in its own process through
the CLI (`aligngate train <stage> --base ... --lora 16,32`), and its peak RSS is that process's ru_maxrss.
Steps per second = optimizer steps (PPO: rollout+update iterations) / the stage's training seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNNER = ("import resource, sys; from training.cli import main; rc = main(sys.argv[1:]); "
          "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def build_base(out: Path) -> dict:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from training.families import build_tokenizer

    tok = build_tokenizer("qwen2")
    tok.save_pretrained(out)
    v = tok.get_vocab()
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=v["<|im_end|>"], pad_token_id=v["<|endoftext|>"],
                      bos_token_id=None, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(eos_token_id=[v["<|im_end|>"], v["<|endoftext|>"]], pad_token_id=v["<|endoftext|>"]).save_pretrained(out)
    return {"params": sum(p.numel() for p in model.parameters()), "config": cfg.to_diff_dict()}


def stage(name: str, args: list[str], log: Path) -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "ALIGNGATE_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    log.write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed (rc {r.returncode}); see {log}")
    rss = [int(x.split()[1]) for x in r.stdout.splitlines() if x.startswith("MAXRSS_KB")][0]
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(rss / 2**20, 2),
            "command": "aligngate train " + " ".join(args)}


def main() -> int:
    from benchmarks.machine import machine_facts
    from training import common as C
    from training import task as T

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_train_base")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "train_base_0.5b.json")
    a = ap.parse_args()
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base"
    info = build_base(base) if not (base / "config.json").exists() else {"params": 494032768}
    exs = T.make_examples(256, seed=1)
    C.write_jsonl(out / "demos.jsonl", [{"prompt": e.prompt, "completion": e.answer} for e in exs])
    C.write_jsonl(out / "pairs.jsonl", [{"prompt": e.prompt, "chosen": e.answer, "rejected": e.answer + " I love you!"}
                                        for e in exs])
    lora = ["--lora", "16,32", "--batch-size", "4"]
    n = str(a.steps)
    res: dict = {}
    res["sft"] = stage("sft", ["sft", "--base", str(base), "--demos", str(out / "demos.jsonl"), "--steps", n,
                               "--out", str(out / "sft"), *lora], out / "sft.log")
    res["dpo"] = stage("dpo", ["dpo", "--base", str(base), "--pairs", str(out / "pairs.jsonl"), "--steps", n,
                               "--out", str(out / "dpo"), *lora], out / "dpo.log")
    res["ppo"] = stage("ppo", ["ppo", "--base", str(base), "--reward", "training.task:oracle_rewards", "--prompts",
                               str(out / "pairs.jsonl"), "--iterations", n, "--max-new-tokens", "16",
                               "--out", str(out / "ppo"), *lora], out / "ppo.log")
    for k in ("sft", "dpo", "ppo"):
        m = json.loads((out / k / "metrics.json").read_text())
        res[k]["train_seconds"] = round(m["train_seconds"], 1)
        res[k]["steps"] = a.steps
        res[k]["steps_per_s"] = round(a.steps / m["train_seconds"], 4)
        res[k]["trainable_params"] = m.get("trainable")
    res["ppo"]["note"] = "one step = rollout of 4 prompts (≤16 new tokens) + 2 PPO epochs; value head trained along"
    result = {"what": "LoRA (r 16, alpha 32, all linear layers) on a random-weight Qwen2-0.5B-shaped base, batch 4, "
                      "fp32, CPU", "base_params": info["params"], "stages": res,
              "machine": machine_facts(), "shared_machine": "2 cores shared with 4 other helpers' jobs during the "
              "run (load average above): absolute step rates are pessimistic and noisy",
              "command": f"PYTHONPATH=. .venv/bin/python benchmarks/bench_train_base.py --steps {a.steps}",
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    a.result.parent.mkdir(parents=True, exist_ok=True)
    a.result.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
