"""Training targets (issue 3) -> benchmarks/results/training.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py [--out runs/bench_training] [--skip-full] [--skip-vllm]

(1 thread on a shared 2-core machine: with 2 threads under load a training step was measured ~10x slower.)

Measures:
- pipeline wall time, --fast and full;
- RM held-out accuracy vs the oracle at 30% noisy raters: Dawid–Skene, majority vote, and no aggregation (one
  random rater's label per pair; and every raw label as its own pair) — same data, same budget;
- DPO and PPO oracle win rate vs SFT (95% bootstrap CI), from the full pipeline's eval;
- distillation: student/teacher oracle-score ratio and parameter ratio, decoding tokens/s in vLLM for both;
- the incident: RM reward (the biased RM it was trained on) up and oracle score down vs SFT, with CIs.

Win rates: per held-out prompt, candidate vs incumbent by oracle score — win 1, tie ½, loss 0 (ties are mostly
both answers exact); mean and 95% bootstrap CI (training/evaluate.py). The tie share is reported next to it, with
the ceiling (an always-exact candidate's tie-½ rate: 1 − ½ × SFT's exact share) and the decisive win rate (ties
left out). Both DPO checks are written: `dpo_oracle_win_rate` (tie ½) and `dpo_oracle_win_rate_decisive`.
Threads: torch uses $OMP_NUM_THREADS when set (recorded with the load averages under "machine").
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

TARGETS = {"rm_accuracy_aggregated": 0.90, "dpo_oracle_win_rate": 0.70, "student_ratio": 0.90,
           "student_param_ratio": 0.25, "pipeline_fast_s": 120, "pipeline_full_s": 900}

VLLM_SCRIPT = r'''
import json, os, sys, time
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    sys.path.insert(0, sys.argv[2])
    from training import task as T
    llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=512, enforce_eager=True)
    msgs = [[{"role": "user", "content": p}] for p in T.make_prompts(256, seed=5)]
    sp = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True, seed=0)
    llm.chat(msgs[:16], sp)  # warm-up
    runs = []
    for _ in range(5):  # the machine is shared: report every round and the median
        t = time.perf_counter()
        outs = llm.chat(msgs, sp)
        dt = time.perf_counter() - t
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        runs.append(n / dt)
    runs.sort()
    print("RESULT " + json.dumps({"tokens_per_round": n, "tokens_per_s": runs[len(runs) // 2], "rounds": runs,
                                  "concurrent": len(msgs), "max_tokens": 24, "load_avg": os.getloadavg()}))
'''


def vllm_tokens_per_s(model_dir: Path) -> dict:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    p = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(model_dir), str(ROOT)], capture_output=True, text=True,
                       env=env, timeout=600)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (p.stderr or p.stdout)[-1500:]}


def rm_aggregation_study(run_dir: Path, seed: int = 0) -> dict:
    """RMs trained on the same pairs with each aggregation, same steps; accuracy vs the oracle on held-out pairs.

    "ds" is the pipeline's own RM (Dawid–Skene labels); "mv" majority vote (agreement >= 0.6); without
    aggregation: "single" (one random rater's label per pair) and "all" (every raw label its own pair). Every RM
    uses the pipeline RM's recipe (RMConfig read back from rm/metrics.json)."""
    from training import common as C
    from training import reward_model as RM

    test = C.read_jsonl(run_dir / "data" / "pairs_test.jsonl")
    ds = C.read_json(run_dir / "rm" / "metrics.json")
    steps = ds["config"]["steps"]
    label_acc = C.read_json(run_dir / "data" / "metrics.json")["label_accuracy_vs_oracle"]
    out = {"ds": {"accuracy_vs_oracle": ds["heldout_accuracy_vs_oracle"], "n_train_pairs": ds["n_train_pairs"],
                  "steps": steps, "label_accuracy_vs_oracle": label_acc["ds"]["accuracy"]}}
    for name in ("mv", "single", "all"):
        prefs = C.read_jsonl(run_dir / "data" / f"prefs_{name}.jsonl")
        # the pipeline RM's own recipe (depth, auxiliary loss, steps), only the labels differ
        cfg = RM.RMConfig(**{**ds["config"], "seed": seed, "init_from": str(run_dir / "sft"), "onnx": False})
        m = RM.run(run_dir / "rm_study" / name, prefs, test, cfg, name=f"rm_{name}")
        out[name] = {"accuracy_vs_oracle": m["heldout_accuracy_vs_oracle"], "n_train_pairs": len(prefs),
                     "steps": steps, "label_accuracy_vs_oracle": label_acc.get(name, {}).get("accuracy")}
    return out


def copy_curves(run_dir: Path, dest: Path) -> None:
    """The stages' curves.png (loss, reward, KL, entropy per step) next to the results, one per stage."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for png in sorted(run_dir.glob("*/curves.png")):
        shutil.copy2(png, dest / f"{png.parent.name}_curves.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_training")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "training.json")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("ALIGNGATE_NO_PROGRESS", "1")
    from training import pipeline as PL
    from training.common import configure_threads

    threads = configure_threads()
    res: dict = {"targets": TARGETS, "command": "benchmarks/bench_training.py " + " ".join(argv or sys.argv[1:]),
                 "machine": {"cpus": os.cpu_count(), "torch_threads": threads,
                             "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
                 "win_rate_definition": "oracle score per prompt: win 1, tie 0.5, loss 0; mean, 95% bootstrap CI",
                 "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "load_avg_start": os.getloadavg(), "load_avg": {}}

    def phase_load(name: str, t0: float) -> None:  # 1-min load average at the end of each phase + its wall time
        res["load_avg"][name] = {"end": os.getloadavg(), "seconds": round(time.perf_counter() - t0, 1)}

    def save():
        args.results.parent.mkdir(parents=True, exist_ok=True)
        res["load_avg_now"] = os.getloadavg()
        from training.common import to_jsonable

        args.results.write_text(json.dumps(to_jsonable(res), indent=2) + "\n")

    t0 = time.perf_counter()
    fast = PL.run(args.out / "fast", PL.PipelineConfig.make(fast=True, seed=args.seed))
    phase_load("pipeline_fast", t0)
    res["pipeline_fast"] = {"seconds": fast["timings"]["total"], "timings": fast["timings"],
                            "candidates": fast.get("candidates"), "rm_accuracy_vs_oracle": fast["rm_accuracy_vs_oracle"]}
    save()
    if not args.skip_full:
        t0 = time.perf_counter()
        full = PL.run(args.out / "full", PL.PipelineConfig.make(fast=False, seed=args.seed))
        phase_load("pipeline_full", t0)
        res["pipeline_full"] = {"seconds": full["timings"]["total"], "timings": full["timings"],
                                "rm_accuracy_vs_oracle": full["rm_accuracy_vs_oracle"], "sft": full.get("sft")}
        c = full.get("candidates", {})
        res["dpo_vs_sft"] = c.get("dpo")
        res["ppo_vs_sft"] = c.get("ppo")
        res["incident_vs_sft"] = c.get("incident")
        res["distill"] = full.get("distill")
        if res["distill"]:
            dm = json.loads((args.out / "full" / "distill" / "metrics.json").read_text())
            res["distill"].update({k: dm[k] for k in ("teacher_params", "student_params", "teacher_oracle",
                                                      "warm_start_oracle", "methods")})
        copy_curves(args.out / "full", args.results.with_suffix(""))
        res["label_accuracy_vs_oracle"] = full.get("label_accuracy_vs_oracle")
        res["agreement"] = full.get("agreement")
        save()
        t0 = time.perf_counter()
        res["rm_aggregation"] = rm_aggregation_study(args.out / "full", args.seed)
        phase_load("rm_aggregation", t0)
        save()
        if not args.skip_vllm and (args.out / "full" / "versions" / "student").exists():
            t0 = time.perf_counter()
            teacher = full.get("distill", {}).get("teacher_version", "dpo")
            res["vllm_decode"] = {"teacher_version": teacher,
                                  "teacher": vllm_tokens_per_s(args.out / "full" / "versions" / teacher),
                                  "student": vllm_tokens_per_s(args.out / "full" / "versions" / "student")}
            phase_load("vllm_decode", t0)
            save()
    run = res.get("pipeline_full") and res
    checks = {"pipeline_fast_s": res["pipeline_fast"]["seconds"] <= TARGETS["pipeline_fast_s"]}
    if run:
        checks["pipeline_full_s"] = res["pipeline_full"]["seconds"] <= TARGETS["pipeline_full_s"]
        agg = res["rm_aggregation"]["ds"]["accuracy_vs_oracle"]["accuracy"]
        checks["rm_accuracy_aggregated"] = agg >= TARGETS["rm_accuracy_aggregated"]
        if res.get("dpo_vs_sft"):
            w = res["dpo_vs_sft"]["oracle_win_rate"]
            checks["dpo_oracle_win_rate"] = w["mean"] >= TARGETS["dpo_oracle_win_rate"]
            if "decisive" in w:
                checks["dpo_oracle_win_rate_decisive"] = w["decisive"]["mean"] >= TARGETS["dpo_oracle_win_rate"]
        if res.get("distill"):
            checks["student_ratio"] = res["distill"]["student_ratio_to_teacher"] >= TARGETS["student_ratio"]
            checks["student_param_ratio"] = res["distill"]["param_ratio"] <= TARGETS["student_param_ratio"]
        vd = res.get("vllm_decode", {})
        if "tokens_per_s" in vd.get("teacher", {}) and "tokens_per_s" in vd.get("student", {}):
            checks["student_decodes_faster_in_vllm"] = vd["student"]["tokens_per_s"] > vd["teacher"]["tokens_per_s"]
        inc = res.get("incident_vs_sft")
        if inc:
            checks["incident_rm_up_outside_ci"] = inc["rm_reward01"]["ci95"][0] > inc["incumbent_rm_reward01"]["ci95"][1]
            checks["incident_oracle_down_outside_ci"] = inc["oracle_score"]["ci95"][1] < inc["incumbent_oracle_score"]["ci95"][0]
    res["checks"] = checks
    res["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    print(json.dumps(checks, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
