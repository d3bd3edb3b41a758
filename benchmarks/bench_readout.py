"""What reading the in-pass value costs per decode step: the engine alone, the same batch, read-out on vs off.

The `reward` scenario measures the whole gateway under Poisson load, where one run's p99 moves by more than the
effect. This isolates the read-out: one vLLM `AsyncLLM` serving the value-head model, a closed batch of N
requests (same 64-token prompts, `ignore_eos`, T new tokens), and rounds alternating between requests that ask
for the value slots' logprobs (`logprob_token_ids`, what `serve.engines.engine_vllm` sends when the reward is on) and
requests that do not (the value is still computed in `compute_logits`, just not returned). Same engine, same
batch, interleaved: the difference is the read-out and nothing else. Per request, TPOT = (last token time - first
token time) / (T - 1); a round's figure is the median over the batch; the result is the median over rounds, and
the minimum over rounds (`*_min`: other jobs on a shared machine only ever add time, so the minimum is the least
noisy estimate of the intrinsic cost).

Engines, one after the other:
  no-value-head   the same weights without the head (the floor: what a policy without a reward pays)
  vllm-gather     the value-head model with vLLM's own `Sampler.gather_specific_token_logprobs` (a Python loop)
  patched         the slots' logprobs with `serve.vllm_ext.vllm_patches.apply_sampler` (one broadcast index)
  shm             the shared-memory table (`serve.vllm_ext.value_table`; no logprobs at all; aligngate's default on CPU):
                  "on" rounds hold a table row per request and read each new position as the output arrives

    .venv/bin/python -m benchmarks.bench_readout                                   # tiny default model
    .venv/bin/python -m benchmarks.bench_readout --model .cache/step-model --out benchmarks/results/readout_step.json
Results: benchmarks/results/readout.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.machine import machine_facts  # noqa: E402
from benchmarks.run_metrics import pct  # noqa: E402

ENGINES = ("no-value-head", "vllm-gather", "patched", "shm")


async def _run_engine(name: str, model: str, batches: list[int], tokens: int, rounds: int) -> dict:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    from serve.vllm_ext import vllm_patches
    from serve.engines.engine_vllm import value_params
    from serve.vllm_ext.value_slots import read_value_slots
    from serve.vllm_ext.value_table import ValueTable

    slots = read_value_slots(model)
    os.environ[vllm_patches.SAMPLER_PATCH_ENV] = "0" if name == "vllm-gather" else "1"  # read by the worker
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    vllm_patches.apply()
    over = {"hf_overrides": {"architectures": ["LlamaForCausalLMWithValueHead"]}} if slots else {}
    llm = await asyncio.to_thread(AsyncLLM.from_engine_args, AsyncEngineArgs(
        model=model, max_model_len=512, max_num_seqs=max(batches), disable_log_stats=True,
        enable_prefix_caching=False, **over))

    table = ValueTable(name, rows=2 * max(batches), positions=512) if name == "shm" and slots else None

    def params(read: bool, row: int | None) -> SamplingParams:  # what the gateway's engine sends, reward on or off
        if row is not None:
            return SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=1.0, output_kind=RequestOutputKind.DELTA,
                                  **value_params(slots, False), extra_args=table.extra_args(row))
        return SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=1.0,
                              output_kind=RequestOutputKind.DELTA, **value_params(slots, read))

    async def one(i: int, read: bool) -> tuple[float, float]:
        """(TPOT, end-to-end) of one request, ms."""
        prompt = [5 + (i * 7 + j) % 200 for j in range(64)]
        first = last = None
        sent = time.perf_counter()
        row = table.acquire() if table is not None and read else None
        done = 0
        try:
            async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt), params(read, row),
                                          f"r{i}-{os.urandom(4).hex()}"):
                if row is not None:  # the gateway's read of the new positions
                    n_new = len(out.outputs[0].token_ids)
                    table.read(row, done, done + n_new)
                    done += n_new
                last = time.perf_counter()
                first = first or last
        finally:
            if row is not None:
                table.release(row)
        return (last - first) / (tokens - 1) * 1e3, (last - sent) * 1e3

    async def batch(n: int, read: bool) -> list[tuple[float, float]]:
        return await asyncio.gather(*(one(i, read) for i in range(n)))

    modes = (False, True) if slots is not None else (False,)
    out: dict = {}
    try:
        for n in batches:
            for read in modes:  # warm-up: first batches of a shape compile / allocate
                await batch(n, read)
            per = {m: [] for m in modes}
            for r in range(rounds):
                for read in (modes if r % 2 == 0 else modes[::-1]):
                    per[read].append(await batch(n, read))
            entry = summarise(per)
            out[str(n)] = entry
            print(f"{name} batch {n}: " + ", ".join(f"{k} {v:.4g}" for k, v in entry.items()
                                                    if not k.startswith("rounds")), flush=True)
    finally:
        await asyncio.to_thread(llm.shutdown)
        if table is not None:
            table.close()
    return out


def _p99(xs: list[float]) -> float:
    return pct(xs, 99)


def summarise(per: dict[bool, list[list[tuple[float, float]]]]) -> dict:
    """Per batch size, read-out off (and on): a round's TPOT is its batch's median, and the median and minimum over
    rounds are reported with their difference and ratio; then every request of every round pooled, for the p99 TPOT
    and p99 end-to-end (submit to last token) on vs off that the issue's target names."""
    tpot = {m: [statistics.median(t for t, _ in rnd) for rnd in rounds] for m, rounds in per.items()}
    pooled = {m: ([t for rnd in rounds for t, _ in rnd], [e for rnd in rounds for _, e in rnd])
              for m, rounds in per.items()}
    entry = {"tpot_ms_off": statistics.median(tpot[False]), "tpot_ms_off_min": min(tpot[False]),
             "rounds_off": tpot[False], "p99_tpot_ms_off": _p99(pooled[False][0]),
             "p99_e2e_ms_off": _p99(pooled[False][1]), "p50_e2e_ms_off": statistics.median(pooled[False][1])}
    if per.get(True):
        on, on_min = statistics.median(tpot[True]), min(tpot[True])
        entry.update(tpot_ms_on=on, tpot_ms_on_min=on_min, rounds_on=tpot[True],
                     readout_ms_per_step=on - entry["tpot_ms_off"], readout_ms_per_step_min=on_min - entry["tpot_ms_off_min"],
                     ratio_on_off=statistics.median([b / a for a, b in zip(tpot[False], tpot[True])]),
                     ratio_on_off_min=on_min / entry["tpot_ms_off_min"],
                     p99_tpot_ms_on=_p99(pooled[True][0]), p99_e2e_ms_on=_p99(pooled[True][1]),
                     p50_e2e_ms_on=statistics.median(pooled[True][1]))
        entry.update(p99_tpot_ratio=entry["p99_tpot_ms_on"] / entry["p99_tpot_ms_off"],
                     p99_e2e_added_ms=entry["p99_e2e_ms_on"] - entry["p99_e2e_ms_off"],
                     p50_e2e_added_ms=entry["p50_e2e_ms_on"] - entry["p50_e2e_ms_off"])
    return entry


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = result["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, n in zip(axes[0], batches):
        labels, vals = [], []
        for eng in ENGINES:
            e = result["engines"].get(eng, {}).get(str(n))
            if not e:
                continue
            labels.append(f"{eng}\nread off")
            vals.append(e["tpot_ms_off"])
            if "tpot_ms_on" in e:
                labels.append(f"{eng}\nread on")
                vals.append(e["tpot_ms_on"])
        ax.bar(range(len(vals)), vals, color=["#999" if "off" in lab else "#c44" for lab in labels])
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        ax.set_ylabel("median TPOT per request, ms")
        ax.set_title(f"batch {n}, {result['tokens']} new tokens")
    fig.suptitle(f"value read-out cost per decode step — {Path(result['model']).name}, {result['machine']['cpu']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="value-head model dir (default: the embedded default stable policy)")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64], help="concurrent requests per batch")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    ap.add_argument("--rounds", type=int, default=20, help="rounds per batch size (read off/on alternated)")
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "readout.json")
    ap.add_argument("--smoke", action="store_true", help="tests: batch 4, 8 tokens, 2 rounds, shm engine only")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.tokens, args.rounds, args.engines = [4], 8, 2, ["shm"]
    if args.model is None:
        from serve.config import Settings
        from serve.default_models import ensure_default_models

        args.model = next(v.model for v in ensure_default_models(Settings().cache_dir) if v.name == "stable")
    import serve.vllm_ext.vllm_plugin  # noqa: F401  (the value-head class; vLLM also loads it by entry point)

    result = {"benchmark": "readout", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python -m benchmarks.bench_readout " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_facts(), "model": args.model, "batches": args.batch, "tokens": args.tokens,
              "rounds": args.rounds, "engines": {}}
    work = Path(tempfile.mkdtemp(prefix="aligngate-readout-"))
    for name in args.engines:
        model = args.model
        if name == "no-value-head":
            from benchmarks.systems import without_value_head

            model = without_value_head(args.model, work)
        result["engines"][name] = asyncio.run(_run_engine(name, model, args.batch, args.tokens, args.rounds))
    summary = {}
    for n in map(str, args.batch):
        base = result["engines"].get("no-value-head", {}).get(n)
        for name in ("vllm-gather", "patched", "shm"):
            e = result["engines"].get(name, {}).get(n)
            if e:
                summary[f"{name} batch {n}"] = {
                    **{k: round(e[k], 4) for k in ("readout_ms_per_step", "ratio_on_off", "readout_ms_per_step_min",
                                                   "ratio_on_off_min", "p99_tpot_ratio", "p99_e2e_added_ms",
                                                   "p50_e2e_added_ms")},
                    **({"ratio_on_vs_no_value_head": round(e["tpot_ms_on"] / base["tpot_ms_off"], 4),
                        "p99_tpot_ratio_vs_no_value_head": round(e["p99_tpot_ms_on"] / base["p99_tpot_ms_off"], 4),
                        "p99_e2e_added_ms_vs_no_value_head": round(e["p99_e2e_ms_on"] - base["p99_e2e_ms_off"], 4)}
                       if base else {})}
    result["summary"] = summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
