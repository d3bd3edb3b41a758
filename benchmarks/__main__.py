"""`python -m benchmarks <scenario>` (also `aligngate bench <scenario>`): side-by-side serving benchmarks.

Every scenario alternates the systems it compares (A B, B A, ...) in one run; load comes from vLLM's own
`vllm bench serve` machinery (open-loop Poisson arrivals, fixed seed; `random` or chat-shaped datasets).
Each run writes <scenario>_<profile>.json (with machine facts), .md (the table) and .png (latency CDFs per
system; p99 vs request rate for sweeps) into --out, and, for full runs into benchmarks/results, refreshes the
scenario's table in benchmarks/README.md.

`python -m benchmarks best-of --pipeline DIR` (benchmarks/bench_best_of.py, its own flags: `best-of --help`):
best-of-n by the in-pass value per k against the oracle, and the reward floor on the incident policy.

Exit codes: 0 done, 2 cannot run here (e.g. --profile t4 without a GPU), 3 scenario skipped (e.g. LiteLLM
would not install).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.scenarios import SCENARIOS

    listing = "\n".join(f"  {name:<11} {desc}" for name, (_, desc) in SCENARIOS.items())
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0] + "\n\nscenarios:\n" + listing
        + "\n  soak        a long run of one gateway under traffic and faults: `python -m benchmarks soak --help`",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=list(SCENARIOS), metavar="scenario", help="one of: " + ", ".join(SCENARIOS))
    p.add_argument("--profile", choices=["cpu", "t4"], default="cpu",
                   help="cpu: the tiny default model on CPU (default); t4: fp16, a 0.5B-1B model (--model), "
                        "rates and max-num-seqs for one 16 GB T4 — needs a GPU")
    p.add_argument("--smoke", action="store_true", help="a handful of requests, one round (the test suite)")
    p.add_argument("--out", type=Path, help="output directory (default benchmarks/results; "
                                            "benchmarks/results/tmp with --smoke)")
    p.add_argument("--model", help="HF model directory (cpu default: the embedded default stable policy; "
                                   "required with --profile t4)")
    p.add_argument("--rates", type=float, nargs="+", help="request rates (req/s) instead of the profile's")
    p.add_argument("--num-prompts", type=int, help="prompts per run instead of the profile's")
    p.add_argument("--rounds", type=int, help="rounds per rate (each round runs every system once)")
    p.add_argument("--seconds", type=float, help="overhead/overload: seconds of load per run")
    p.add_argument("--dataset", choices=["random", "chat"], default=None,
                   help="random token prompts to /v1/completions, or chat-shaped turns to /v1/chat/completions "
                        "(default: random; chat for vs-litellm and cache)")
    p.add_argument("--vllm-url", action="append", default=[],
                   help="vs-litellm, canary/overload --engine remote: use this running vLLM server (repeatable) "
                        "instead of starting one (its first model is used)")
    p.add_argument("--vllm-servers", type=int, default=1, help="vs-litellm: vLLM servers to start (1 or 2)")
    p.add_argument("--engine", choices=["local", "remote"], default="local",
                   help="canary, overload: in-process engine(s) (default) or remote mode over one vLLM server")
    p.add_argument("--reward-off", action="store_true",
                   help="vs-vllm: aligngate serves the same weights without the value head (the gateway alone)")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="start each engine-backed system only while it runs (always on with a GPU profile: two "
                        "engines cannot share one 16 GB T4); rounds then go A: all rates, B: all rates, B, A, ...")
    p.add_argument("--admission", choices=["adaptive", "fifo"], default="adaptive",
                   help="overload: the gateway's latency-bounded admission (limits.adaptive, serve/admission/adaptive.py; "
                        "default) or the plain bounded FIFO queue (limits.max_queue)")
    p.add_argument("--adaptive", default="{}", metavar="JSON",
                   help="overload, --admission adaptive: the limits.adaptive settings, e.g. "
                        "'{\"tolerance\": 1.3, \"queue_wait_share\": 0.25}' (default: the gateway's defaults)")
    p.add_argument("--reward-floor", type=float, help="reward-goodput floor instead of the profile's")
    p.add_argument("--no-readme", action="store_true", help="do not refresh benchmarks/README.md")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["best-of"]:  # its own flags: quality per k and the reward floor, not a load sweep
        from benchmarks.bench_best_of import main as best_of

        return best_of(argv[1:])
    if argv[:1] == ["soak"]:  # its own flags and --help: a long run of one gateway, not a side-by-side comparison
        from benchmarks.soak import main as soak_main

        return soak_main(argv[1:])
    args = build_parser().parse_args(argv)
    from benchmarks import harness as H

    prof = H.profile(args.profile, args.smoke)
    if prof.needs_gpu:
        present, checked = H.gpu_present()
        if not present:
            print(H.no_gpu_message(checked), file=sys.stderr)
            return 2
        if not args.model:
            print(f"--profile {prof.name} needs --model PATH: a 0.5B-1B class HF model directory (fp16)",
                  file=sys.stderr)
            return 2
    for key, attr in (("rates", "rates"), ("num_prompts", "num_prompts"), ("rounds", "rounds"),
                      ("reward_floor", "reward_floor")):
        if getattr(args, key) is not None:
            setattr(prof, attr, getattr(args, key))
    if args.rates and args.scenario == "overhead":
        prof.overhead_rates = args.rates
    if args.seconds is not None:
        prof.overhead_seconds = prof.overload_seconds = args.seconds
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from benchmarks.context import Ctx, Skip
    from benchmarks.scenarios import SCENARIOS

    default_out = H.RESULTS / "tmp" if args.smoke else H.RESULTS
    out = (args.out or default_out).resolve()
    ctx = Ctx(scenario=args.scenario, prof=prof, smoke=args.smoke, model=args.model or H.default_model(), out=out,
              argv=argv, dataset=args.dataset or ("chat" if args.scenario in ("vs-litellm", "cache") else "random"),
              vllm_urls=[u.rstrip("/") for u in args.vllm_url], engine=args.engine, vllm_servers=args.vllm_servers,
              exclusive=args.one_at_a_time or prof.needs_gpu, reward_off=args.reward_off,
              admission=args.admission, adaptive=args.adaptive)
    try:
        result = SCENARIOS[args.scenario][0](ctx)
    except Skip as e:
        print(f"SKIPPED: {e}", file=sys.stderr)
        return 3
    finally:
        ctx.stop()
    result["dataset"] = ctx.dataset
    if args.reward_off and args.scenario == "vs-vllm":
        result["scenario"] += "-reward-off"  # its own files and README block
    H.write(result, out, update_readme=not args.smoke and not args.no_readme and out == H.RESULTS.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
