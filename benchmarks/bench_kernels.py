"""Benchmark the fused policy heads against their unfused alternative (Liger-Kernel style).

Providers (each does the work a serving step needs from the last hidden states, except the first):
  lm_head_only  final RMSNorm + LM head: the floor, what a policy without a value head pays.
  unfused       RMSNorm + LM head, then a separate value pass (TRL-style `ValueHead` over the post-norm hidden
                states, read again) and a separate textbook entropy `-(softmax * log_softmax).sum(-1)`.
  fused_torch   `kernels.fused_torch`: norm once, LM head GEMM + fp32 value GEMV, chunked one-exp entropy.
  fused_torch_cat  the same with one GEMM against [W; w] (value = column V; fp32 only) — measured, not default.
  triton        `kernels.triton_fused` — only where CUDA is present (the CPU interpreter is for correctness only).

Time: p50/p20/p80 in ms. GPU: `triton.testing.do_bench`. CPU: a timed loop after warm-up, providers interleaved
round-robin so that load from other jobs on a shared machine hits them alike.
Peak memory: GPU: `torch.cuda.max_memory_allocated` above the pre-call level. CPU: peak of live torch allocations
during one call above the level at its start, from torch.profiler's allocation events (`peak_cpu_mib`). Both
include the outputs and every temporary, and exclude the inputs and weights.
Every provider's value and entropy are also checked against the fp32 reference (`kernels.reference`).
CPU threads default to 1: on a 2-core machine shared with other jobs, 2 OpenMP threads stall in barriers whenever
one is descheduled (p50 went from 0.1 ms to 24-48 ms at the tiny shape). Use --threads 2 on an idle machine.

    .venv/bin/python benchmarks/bench_kernels.py                       # default shapes, fp32, writes results
    .venv/bin/python benchmarks/bench_kernels.py --shapes 64x128x320 --min-time 0.5
Results: benchmarks/results/kernels.{csv,json}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.machine import machine_facts  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.fused_torch import fused_heads_torch  # noqa: E402
from kernels.reference import heads_reference  # noqa: E402
from kernels.value_head import ValueHead  # noqa: E402
from kernels.weights import HeadWeights  # noqa: E402

PROVIDERS = ("lm_head_only", "unfused", "fused_torch", "fused_torch_cat", "triton")
# (T, H, V): tiny policy x 64 sequences; the odd test shape; a Llama-sized vocabulary at decode; a prefill
DEFAULT_SHAPES = "64x128x320,7x96x263,64x1024x32000,512x512x8192"
QUANTILES = (0.5, 0.2, 0.8)
EPS = 1e-5
CPU_MEM_METHOD = "peak live torch CPU allocations during one call (torch.profiler profile_memory events)"
GPU_MEM_METHOD = "torch.cuda.max_memory_allocated above the pre-call level"

Shape = tuple[int, int, int]


def parse_shapes(text: str) -> list[Shape]:
    shapes = []
    for part in text.split(","):
        t, h, v = (int(x) for x in part.lower().split("x"))
        shapes.append((t, h, v))
    return shapes


# --- inputs and providers -------------------------------------------------------------------------------------


def build_inputs(shape: Shape, dtype: torch.dtype, device: str, seed: int = 42) -> dict:
    T, H, V = shape
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(T, H, generator=gen) * 3.0
    g = 0.5 + torch.rand(H, generator=gen)
    W = torch.randn(V, H, generator=gen) * 2.0 / H**0.5
    w = torch.randn(1, H, generator=gen) / H**0.5
    b = torch.randn(1, generator=gen)
    vh = ValueHead(H).to(device)
    with torch.no_grad():
        vh.summary.weight.copy_(w)
        vh.summary.bias.copy_(b)
    h, g, W = (x.to(device=device, dtype=dtype) for x in (h, g, W))
    w, b = w.to(device), b.to(device)
    cat = HeadWeights.prepare(g, EPS, W, w, b, concat=True) if dtype == torch.float32 else None
    return dict(h=h, g=g, W=W, w=w, b=b, value_head=vh, weights=HeadWeights.prepare(g, EPS, W, w, b), weights_cat=cat)


def make_provider(name: str, inp: dict) -> Callable[[], tuple] | None:
    """A zero-argument callable for `name`, or None where it does not apply (fused_torch_cat needs fp32)."""
    h, g, W, vh, weights = inp["h"], inp["g"], inp["W"], inp["value_head"], inp["weights"]
    H = h.shape[-1]

    def norm(x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (H,), g.float(), EPS)

    if name == "lm_head_only":
        return lambda: (F.linear(norm(h).to(W.dtype), W), None, None)
    if name == "unfused":

        def unfused():
            x = norm(h)
            logits = F.linear(x.to(W.dtype), W)
            value = vh(x)  # a separate module over the post-norm hidden states
            logp = torch.log_softmax(logits.float(), -1)
            entropy = -(logp.exp() * logp).sum(-1)
            return logits, value, entropy

        return unfused
    if name == "fused_torch":
        return lambda: tuple(fused_heads_torch(h, weights))
    if name == "fused_torch_cat":
        cat = inp["weights_cat"]
        return None if cat is None else (lambda: tuple(fused_heads_torch(h, cat)))
    if name == "triton":
        from kernels.triton_fused import fused_heads_triton

        return lambda: tuple(fused_heads_triton(h, weights))
    raise ValueError(name)


def check_against_reference(fn: Callable[[], tuple], inp: dict) -> dict:
    """Max |value - fp32 reference| and |entropy - reference in the same dtype| (None where not computed)."""
    logits, value, entropy = fn()
    h, g, W, w, b = inp["h"], inp["g"], inp["W"], inp["w"], inp["b"]
    ref32 = heads_reference(h.float(), g.float(), EPS, W.float(), w, b, logits_dtype=torch.float32)
    ref = heads_reference(h, g, EPS, W, w, b)
    return {
        "max_value_err": None if value is None else float((value.float() - ref32.value).abs().max()),
        "max_entropy_err": None if entropy is None else float((entropy - ref.entropy).abs().max()),
        "max_logit_err": float((logits.float() - ref.logits.float()).abs().max()),
    }


# --- timing ---------------------------------------------------------------------------------------------------


def quantiles_ms(samples_s: list[float]) -> list[float]:
    t = torch.tensor(samples_s, dtype=torch.float64) * 1e3
    return [float(torch.quantile(t, q)) for q in QUANTILES]


def time_cpu(fns: dict[str, Callable], min_time: float, min_reps: int, max_reps: int) -> dict[str, dict]:
    """Round-robin timed loop: one call of each provider per round until min_time (per provider) or max_reps."""
    for fn in fns.values():  # warm-up (oneDNN primitive caches, allocator)
        fn()
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    spent = 0.0
    while True:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            samples[k].append(dt)
            spent += dt
        n = len(next(iter(samples.values())))
        if n >= max_reps or (n >= min_reps and spent >= min_time * len(fns)):
            break
    return {k: {"p50_ms": q[0], "p20_ms": q[1], "p80_ms": q[2], "reps": len(v)}
            for k, v in samples.items() for q in [quantiles_ms(v)]}  # fmt: skip


def time_gpu(fn: Callable) -> dict:
    import triton.testing

    p50, p20, p80 = triton.testing.do_bench(fn, quantiles=list(QUANTILES), rep=200)
    return {"p50_ms": p50, "p20_ms": p20, "p80_ms": p80, "reps": None}


# --- memory ---------------------------------------------------------------------------------------------------


def peak_cpu_mib(fn: Callable) -> float:
    """Peak of live torch CPU allocations during one call, above the level at its start (exact, byte-level).

    Read from the profiler's allocation events (`profile_memory=True`): every alloc/free the CPU allocator
    reports, including temporaries freed inside an op. tracemalloc cannot see torch's C++ allocations and RSS
    moves in pages and lags (Linux batches its RSS counters), so neither resolves a 80 KB logits tensor.
    """
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up outside the window
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def peak_gpu_mib(fn: Callable) -> float:
    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return (peak - base) / 2**20


# --- machine facts --------------------------------------------------------------------------------------------


# --- main -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                 epilog="Providers: " + ", ".join(PROVIDERS))  # fmt: skip
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"comma-separated TxHxV (default {DEFAULT_SHAPES})")
    ap.add_argument("--dtypes", default="float32", help="comma-separated model dtypes (float32, bfloat16, float16)")
    ap.add_argument("--providers", default=",".join(PROVIDERS), help="subset of providers")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see the docstring)")
    ap.add_argument("--min-time", type=float, default=1.0, help="CPU: seconds of timing per provider and case")
    ap.add_argument("--min-reps", type=int, default=10)
    ap.add_argument("--max-reps", type=int, default=200)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch.inference_mode():  # serving runs without autograd; otherwise the ValueHead would build a graph
        return _run(args)


def _run(args: argparse.Namespace) -> int:

    device = args.device
    providers = [p for p in args.providers.split(",") if p]
    skipped = {}
    if "triton" in providers and device != "cuda":
        providers.remove("triton")
        skipped["triton"] = "no CUDA device: Triton runs here only under TRITON_INTERPRET=1, for correctness"
        print(f"triton: SKIPPED — {skipped['triton']} (see tests/test_kernels_fused.py)")
    facts = machine_facts()

    rows = []
    for shape in parse_shapes(args.shapes):
        for dname in args.dtypes.split(","):
            inp = build_inputs(shape, getattr(torch, dname), device)
            fns = {p: fn for p in providers if (fn := make_provider(p, inp)) is not None}
            checks = {p: check_against_reference(fn, inp) for p, fn in fns.items()}
            if device == "cpu":
                timings = time_cpu(fns, args.min_time, args.min_reps, args.max_reps)
                mems = {p: None if args.no_memory else peak_cpu_mib(fn) for p, fn in fns.items()}
            else:
                timings = {p: time_gpu(fn) for p, fn in fns.items()}
                mems = {p: None if args.no_memory else peak_gpu_mib(fn) for p, fn in fns.items()}
            for p in fns:
                T, H, V = shape
                rows.append({"T": T, "H": H, "V": V, "dtype": dname, "provider": p, "device": device,
                             **{k: round(v, 4) if isinstance(v, float) else v for k, v in timings[p].items()},
                             "peak_mem_mib": None if mems[p] is None else round(mems[p], 3), **checks[p]})  # fmt: skip
            del inp, fns

    facts["loadavg_1m_end"] = os.getloadavg()[0]
    summary = summarize(rows)
    out = {"machine": facts, "memory_method": CPU_MEM_METHOD if device == "cpu" else GPU_MEM_METHOD,
           "time_method": "timed loop, providers interleaved" if device == "cpu" else "triton.testing.do_bench",
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "quantiles": list(QUANTILES), "skipped": skipped, "results": rows, "summary": summary}  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "kernels.json").write_text(json.dumps(out, indent=2))
    with open(args.out_dir / "kernels.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    print_table(rows, summary)
    print(f"wrote {args.out_dir / 'kernels.csv'} and kernels.json")
    return 0


def summarize(rows: list[dict]) -> list[dict]:
    """Per case: fused vs unfused p50, and whether the issue's targets hold (time, value within 1e-3)."""
    out = []
    cases = {(r["T"], r["H"], r["V"], r["dtype"]) for r in rows}
    for case in sorted(cases):
        by = {r["provider"]: r for r in rows if (r["T"], r["H"], r["V"], r["dtype"]) == case}
        if "fused_torch" not in by or "unfused" not in by:
            continue
        f, u = by["fused_torch"], by["unfused"]
        s = {"shape": "x".join(map(str, case[:3])), "dtype": case[3],
             "fused_over_unfused_p50": round(f["p50_ms"] / u["p50_ms"], 3),
             "fused_le_unfused": f["p50_ms"] <= u["p50_ms"],
             "value_within_1e-3": f["max_value_err"] <= 1e-3}  # fmt: skip
        if "lm_head_only" in by:
            s["fused_overhead_over_lm_head_p50_ms"] = round(f["p50_ms"] - by["lm_head_only"]["p50_ms"], 4)
        out.append(s)
    return out


def print_table(rows: list[dict], summary: list[dict]) -> None:
    cols = ("shape", "dtype", "provider", "p50 ms", "p20 ms", "p80 ms", "mem MiB", "|dv|")
    print(("{:>16} {:>8} {:>15} " + "{:>9} " * 4 + "{:>8}").format(*cols))
    for r in rows:
        mem = "-" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.2f}"
        dv = "-" if r["max_value_err"] is None else f"{r['max_value_err']:.1e}"
        shape = f"{r['T']}x{r['H']}x{r['V']}"
        print(f"{shape:>16} {r['dtype']:>8} {r['provider']:>15} {r['p50_ms']:9.4f} {r['p20_ms']:9.4f} "
              f"{r['p80_ms']:9.4f} {mem:>9} {dv:>8}")  # fmt: skip
    for s in summary:
        print(s)


if __name__ == "__main__":
    sys.exit(main())
