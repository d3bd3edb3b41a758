"""Side-by-side serving runs, alternated in one run, load from vLLM's own `vllm bench serve`.

Scenarios (`--scenario`):
  vs-vllm  aligngate (in-process engine) vs vLLM's own OpenAI server, same tiny model and engine settings.
  reward   aligngate with the in-pass reward (value head fused into the logits step) vs the same weights with no
           value head (reward off) vs the "second pass" alternative (reward read by one more engine step over
           prompt + response, `reward_position=eos`).

Load comes from vLLM's own `vllm bench serve` (random dataset, Poisson arrivals, fixed seed, --ignore-eos so
every request produces exactly the asked output length on both systems). For each request rate the systems
run in alternating order (A B, then B A, ...) so slow drifts of this shared machine hit both equally; the
figure of merit is the ratio aligngate / vLLM of each adjacent pair, summarised by the median.

    .venv/bin/python benchmarks/bench_serve.py                    # 20 and 40 req/s, 200 prompts, 3 pairs each
    .venv/bin/python benchmarks/bench_serve.py --smoke            # a handful of requests (the test suite)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_facts  # noqa: E402
from benchmarks.procs import start_aligngate, start_vllm_server  # noqa: E402

METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = ("50", "90", "99")


def run_load(base_url: str, model_name: str, tokenizer: str, rate: float, num_prompts: int, seed: int,
             input_len: int, output_len: int, out_dir: Path, tag: str) -> dict:
    """One `vllm bench serve` run in its own process; returns its result JSON."""
    fname = f"{tag}.json"
    cmd = [sys.executable, "-m", "benchmarks.vllm_bench", "--backend", "vllm", "--base-url", base_url,
           "--endpoint", "/v1/completions", "--model", tokenizer, "--served-model-name", model_name,
           "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(input_len),
           "--random-output-len", str(output_len), "--num-prompts", str(num_prompts), "--request-rate", str(rate),
           "--seed", str(seed), "--ignore-eos", "--percentile-metrics", ",".join(METRICS),
           "--metric-percentiles", ",".join(PERCENTILES), "--save-result", "--result-dir", str(out_dir),
           "--result-filename", fname, "--disable-tqdm", "--ready-check-timeout-sec", "0"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed ({tag}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads((out_dir / fname).read_text())


def summarise(r: dict) -> dict:
    keep = {f"{q}_{m}_ms": r.get(f"{q}_{m}_ms") for m in METRICS for q in ("mean", *(f"p{p}" for p in PERCENTILES))}
    keep.update({k: r.get(k) for k in ("completed", "failed", "request_throughput", "output_throughput",
                                       "total_token_throughput", "duration")})
    return keep


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate"] for r in result["rates"]]
    systems = list(result["rates"][0]["runs"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = ["o-", "s--", "^:", "d-."]
    for ax, metric in zip(axes, ("e2el", "ttft")):
        for system, style in zip(systems, styles):
            for q, alpha in (("p50", 0.5), ("p99", 1.0)):
                ys = [statistics.median(run[f"{q}_{metric}_ms"] for run in r["runs"][system]) for r in result["rates"]]
                ax.plot(rates, ys, style, alpha=alpha, label=f"{system} {q}")
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(f"{metric.upper()} (ms)")
        ax.set_title(f"{metric.upper()} (median over rounds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['scenario']}: {result['load']}\n{result['machine']['cpu']} "
                 f"({result['machine']['cores']} cores)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def without_value_head(model: str, work: Path) -> str:
    """The same weights with no value head: what "reward off" serves."""
    dst = work / "model-no-value-head"
    if not dst.exists():
        shutil.copytree(model, dst, ignore=shutil.ignore_patterns("value_head"))
        cfg = json.loads((dst / "config.json").read_text())
        cfg.pop("aligngate", None)
        (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(dst)


def start_systems(scenario: str, model: str, work: Path, reward_off: bool = False, engine: dict | None = None,
                  server: dict | None = None, only: set[str] | None = None) -> tuple[dict[str, str], list, str]:
    """name -> base URL, the processes, and the baseline system's name. All serve the public model `policy`.
    `engine` overrides the aligngate version's engine fields (dtype, max_num_seqs, ...), `server` the matching
    `start_vllm_server` keywords (`python -m benchmarks --profile ...` passes both; the defaults are the CPU ones);
    `only` starts just those systems (one engine resident at a time on a GPU)."""
    procs, systems = [], {}
    engine = engine or {"max_num_seqs": 128}
    server = server or {}

    def gateway(name: str, model_dir: str, **env: str) -> None:
        if only is not None and name not in only:
            return
        versions = [{"name": "stable", "model": model_dir, "weight": 1, **engine}]
        proc, url = start_aligngate(name, work, env={"ALIGNGATE_VERSIONS": json.dumps(versions),
                                                     "ALIGNGATE_PUBLIC_MODEL": "policy",
                                                     "ALIGNGATE_CACHE_DIR": str(work / name), **env})
        procs.append(proc)
        systems[name] = url

    if scenario == "vs-vllm":
        if only is None or "vllm" in only:
            proc, url = start_vllm_server("vllm", work, model, "policy", "--max-num-seqs",
                                          str(engine.get("max_num_seqs", 128)), *server.pop("extra", []), **server)
            procs.append(proc)
            systems["vllm"] = url
        gateway("aligngate", without_value_head(model, work) if reward_off else model)
        return systems, procs, "vllm"
    if scenario == "reward":
        gateway("reward-off", without_value_head(model, work))
        gateway("reward-on", model)
        gateway("second-pass", model, ALIGNGATE_REWARD_POSITION="eos")
        return systems, procs, "reward-off"
    raise SystemExit(f"unknown scenario {scenario!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["vs-vllm", "reward"], default="vs-vllm")
    ap.add_argument("--rates", type=float, nargs="+", default=[20.0, 40.0])
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per rate; the order of systems rotates")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="HF model dir (default: the embedded default stable policy)")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/<scenario>.json)")
    ap.add_argument("--reward-off", action="store_true",
                    help="vs-vllm: serve the same weights without the value head (the gateway alone, no reward)")
    ap.add_argument("--smoke", action="store_true", help="tiny run for tests: one rate, 8 prompts, one round")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rates, args.num_prompts, args.rounds = [10.0], 8, 1
    suffix = "_reward_off" if args.reward_off else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"serve_{args.scenario.replace('-', '_')}{suffix}.json"

    if args.model is None:
        from serve.config import Settings
        from serve.default_models import ensure_default_models

        args.model = next(v.model for v in ensure_default_models(Settings().cache_dir) if v.name == "stable")
    work = Path(tempfile.mkdtemp(prefix="aligngate-bench-"))
    facts = machine_facts()
    systems, procs, baseline = start_systems(args.scenario, args.model, work, args.reward_off)
    names = list(systems)
    result = {"benchmark": "serve", "scenario": args.scenario, "baseline": baseline, "reward_off": args.reward_off,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python benchmarks/bench_serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "load": f"vllm bench serve, random {args.input_len}-in/{args.output_len}-out, ignore_eos, "
                      f"{args.num_prompts} prompts, Poisson, seed {args.seed}",
              "machine": facts, "model": args.model, "rates": []}
    try:
        for name, url in systems.items():  # warm every system (first requests pay one-off costs)
            run_load(url, "policy", args.model, 10.0, 16, args.seed + 1, args.input_len, args.output_len, work,
                     f"warm-{name}")
        for rate in args.rates:
            runs: dict[str, list] = {n: [] for n in names}
            ratios: dict[str, dict[str, list]] = {n: {m: [] for m in ("p99_e2el_ms", "p50_e2el_ms", "p99_ttft_ms",
                                                                      "p99_tpot_ms", "p99_itl_ms")}
                                                  for n in names if n != baseline}
            for rnd in range(args.rounds):
                order = names[rnd % len(names):] + names[: rnd % len(names)]  # rotate: A B, B A, ...
                if rnd % 2:
                    order = order[::-1]
                got = {}
                for name in order:
                    r = run_load(systems[name], "policy", args.model, rate, args.num_prompts, args.seed,
                                 args.input_len, args.output_len, work, f"{name}-{rate}-{rnd}")
                    got[name] = summarise(r)
                    runs[name].append(got[name])
                    print(f"rate {rate} round {rnd} {name}: p99 e2el {got[name]['p99_e2el_ms']:.1f} ms, "
                          f"p99 ttft {got[name]['p99_ttft_ms']:.1f} ms, p99 tpot {got[name]['p99_tpot_ms']:.2f} ms, "
                          f"failed {got[name]['failed']}", flush=True)
                for n, per_metric in ratios.items():
                    for m in per_metric:
                        per_metric[m].append(got[n][m] / got[baseline][m] if got[baseline][m] else None)
            entry = {"rate": rate, "runs": runs, f"ratio_over_{baseline}": {
                n: {m: {"median": statistics.median([x for x in v if x is not None] or [float("nan")]), "rounds": v}
                    for m, v in per_metric.items()} for n, per_metric in ratios.items()}}
            for n in ratios:  # absolute p99 differences, median over rounds (the reward target is in ms)
                entry.setdefault("p99_e2el_ms_minus_baseline", {})[n] = statistics.median(
                    a["p99_e2el_ms"] - b["p99_e2el_ms"] for a, b in zip(runs[n], runs[baseline]))
            result["rates"].append(entry)
    finally:
        for p in procs:
            p.stop()
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    for r in result["rates"]:
        for n, rr in r[f"ratio_over_{baseline}"].items():
            print(f"rate {r['rate']}: {n}/{baseline} p99 E2EL {rr['p99_e2el_ms']['median']:.3f}, "
                  f"p99 TTFT {rr['p99_ttft_ms']['median']:.3f}, p99 TPOT {rr['p99_tpot_ms']['median']:.3f}, "
                  f"p99 ITL {rr['p99_itl_ms']['median']:.3f}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
