"""The shared parts of every `python -m benchmarks <scenario>` run: profiles, one load run through vLLM's own
`vllm bench serve` machinery, per-run metrics (with goodput and reward-goodput), the A B A B alternation, and
the outputs (JSON, markdown table, PNG plots, the README section).

Load: always vLLM's own load generator (`vllm.benchmarks.serve`, open-loop Poisson arrivals, fixed seed), run
in this process through `benchmarks.vllm_bench` (importing vLLM once instead of once per run). Datasets:
`random` (vLLM's random token prompts, `/v1/completions`) and `chat` (chat-shaped user turns written to a JSONL
file and sent through vLLM's `custom` dataset to `/v1/chat/completions`, the server applying the chat template).

Metric definitions are vLLM's (TTFT, TPOT, ITL, E2EL; goodput = requests/s meeting every SLO). Reward-goodput
is ours: requests/s that meet the same SLOs AND carry a reward ≥ the floor. vLLM's request functions drop the
gateway's reward chunk, so `benchmarks.vllm_bench` captures it with a read-only hook (see its docstring) and
each request's reward is joined to vLLM's per-request record (`--save-detailed`) by its start time. Systems that
return no reward (vLLM's server, LiteLLM, remote-mode aligngate, the reward-off model) have reward-goodput n/a.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = ("50", "90", "99")
PUBLIC_MODEL = "policy"


# --- profiles -----------------------------------------------------------------------------------------------
@dataclass
class Profile:
    name: str
    dtype: str
    max_model_len: int
    max_num_seqs: int
    enforce_eager: bool
    input_len: int
    output_len: int
    rates: list[float]
    num_prompts: int
    rounds: int
    slo_ms: dict[str, float]  # vLLM --goodput keys: ttft, tpot, e2el
    reward_floor: float
    overhead_rates: list[float]
    overhead_seconds: float
    overload_seconds: float
    needs_gpu: bool = False
    server_extra: list[str] = field(default_factory=list)  # extra `vllm serve` flags

    def describe(self) -> dict:
        return asdict(self)


PROFILES = {
    # the tiny default model on CPU: rates where vLLM's own server keeps p99 E2E well under 1 s on 2 cores
    "cpu": Profile(name="cpu", dtype="float32", max_model_len=512, max_num_seqs=128, enforce_eager=True,
                   input_len=64, output_len=32, rates=[20.0, 40.0], num_prompts=200, rounds=2,
                   slo_ms={"ttft": 200.0, "tpot": 20.0, "e2el": 1000.0}, reward_floor=0.0,
                   overhead_rates=[50, 100, 200, 500, 1000, 2000], overhead_seconds=8.0, overload_seconds=15.0),
    # a 0.5B-1B model in fp16 on one 16 GB T4: ~0.9 of memory for weights + KV, 64 sequences in flight,
    # 256-in/128-out, rates around what one T4 sustains for such a model (~8-16 req/s at this shape)
    "t4": Profile(name="t4", dtype="float16", max_model_len=2048, max_num_seqs=64, enforce_eager=False,
                  input_len=256, output_len=128, rates=[2.0, 4.0, 8.0, 16.0], num_prompts=300, rounds=2,
                  slo_ms={"ttft": 250.0, "tpot": 50.0, "e2el": 8000.0}, reward_floor=0.0,
                  overhead_rates=[50, 100, 200, 500, 1000, 2000], overhead_seconds=8.0, overload_seconds=30.0,
                  needs_gpu=True, server_extra=["--gpu-memory-utilization", "0.85"]),
}

SMOKE = {"rates": [8.0], "num_prompts": 6, "rounds": 1, "overhead_rates": [50.0], "overhead_seconds": 0.4,
         "overload_seconds": 1.0}


def profile(name: str, smoke: bool = False) -> Profile:
    p = PROFILES[name]
    return replace(p, **SMOKE) if smoke else replace(p)


def gpu_present() -> tuple[bool, str]:
    """(present, what was checked): CUDA through torch, and nvidia-smi on the PATH."""
    smi = shutil.which("nvidia-smi")
    try:
        import torch

        if torch.cuda.is_available():
            return True, torch.cuda.get_device_name(0)
        torch_says = "torch.cuda.is_available() is False"
    except Exception as e:  # noqa: BLE001 - torch missing or broken: no GPU usable either way
        torch_says = f"torch unusable ({type(e).__name__})"
    return False, f"{torch_says}; nvidia-smi {'found but no CUDA device' if smi else 'not found'}"


def no_gpu_message(checked: str) -> str:
    return (f"--profile t4 needs an NVIDIA GPU (CUDA), and no GPU is present on this machine ({checked}). "
            "Run the same command unchanged on a GPU host (with `pip install -e .[gpu]`), or use --profile cpu here.")


def default_model() -> str:
    from serve.config import Settings
    from serve.default_models import ensure_default_models

    return next(v.model for v in ensure_default_models(Settings().cache_dir) if v.name == "stable")


def version_spec(name: str, prof: Profile, weight: float, model: str | None = None, url: str | None = None) -> dict:
    """One aligngate version in the profile's engine settings (in-process model dir, or a remote server URL)."""
    if url:
        return {"name": name, "url": url, "weight": weight}
    return {"name": name, "model": model, "weight": weight, "max_num_seqs": prof.max_num_seqs, "dtype": prof.dtype,
            "max_model_len": prof.max_model_len, "enforce_eager": prof.enforce_eager}


def gateway_env(versions: list[dict], work: Path, name: str, **extra: str) -> dict[str, str]:
    env = {"ALIGNGATE_VERSIONS": json.dumps(versions), "ALIGNGATE_PUBLIC_MODEL": PUBLIC_MODEL,
           "ALIGNGATE_CACHE_DIR": str(work / name), "ALIGNGATE_LOG_LEVEL": "warning"}
    env.update(extra)
    return env


# --- one load run -------------------------------------------------------------------------------------------
@dataclass
class Load:
    rate: float
    num_prompts: int
    input_len: int
    output_len: int
    seed: int = 0
    dataset: str = "random"  # random | chat
    temperature: float | None = None
    label: str = ""

    def describe(self) -> str:
        shape = (f"random {self.input_len}-in" if self.dataset == "random" else "chat-shaped turns (custom JSONL)")
        t = "" if self.temperature is None else f", temperature {self.temperature}"
        rate = "burst (rate inf)" if math.isinf(self.rate) else f"{self.rate:g} req/s Poisson"
        return (f"vllm bench serve: {shape}/{self.output_len}-out, ignore_eos, {self.num_prompts} prompts, "
                f"{rate}, seed {self.seed}{t}")


CHAT_TOPICS = ["What is {a}+{b}?", "Reverse the word '{w}'.", "Is {a} larger than {b}? Answer yes or no.",
               "Spell '{w}' backwards, then give its length.", "Add {a} and {b}, then double it.",
               "Write one short sentence about {w}.", "Compute {a}-{b} and explain in one line."]
WORDS = ["reward", "policy", "canary", "gateway", "vector", "kernel", "token", "stable", "latency", "river"]


def chat_dataset(path: Path, n: int = 2000, seed: int = 0) -> Path:
    """Chat-shaped user turns (short task questions, like the default task's), one JSON line each; a file per
    seed, so a new seed brings new questions (the `cache` scenario's cold passes need them)."""
    if path.exists():
        return path
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            q = rng.choice(CHAT_TOPICS).format(a=rng.randint(0, 99), b=rng.randint(0, 99), w=rng.choice(WORDS))
            if rng.random() < 0.3:
                q = "You are a careful assistant. " + q
            q = f"Question {i + 1} of session {seed}: {q}"  # every prompt distinct, within and across seeds
            f.write(json.dumps({"prompt": q}) + "\n")
    return path


_BENCH_READY = False


def _bench(argv: list[str], capture: Path) -> dict:
    """vLLM's `vllm bench serve` in this process (the capture hook installed once)."""
    global _BENCH_READY
    from benchmarks import vllm_bench

    if not _BENCH_READY:
        vllm_bench.RECORDS = vllm_bench._install_capture(str(capture))
        _BENCH_READY = True
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    vllm_bench.RECORDS.clear()
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    with open(capture.with_suffix(".log"), "w") as log, contextlib.redirect_stdout(log):  # vLLM's own report
        bench_main(parser.parse_args(argv))
    with open(capture, "w") as f:
        for rec in vllm_bench.RECORDS:
            f.write(json.dumps(rec) + "\n")
    return {}


def run_load(url: str, load: Load, tokenizer: str, work: Path, tag: str, slo_ms: dict[str, float],
             reward_floor: float, endpoint_model: str = PUBLIC_MODEL) -> dict:
    """One `vllm bench serve` run against `url`; returns the run's summary (see `summarise`)."""
    out_dir = work / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9._+-]+", "_", tag)
    fname = f"{tag}.json"
    argv = ["--base-url", url, "--model", tokenizer, "--served-model-name", endpoint_model, "--tokenizer", tokenizer,
            "--num-prompts", str(load.num_prompts), "--request-rate", str(load.rate), "--seed", str(load.seed),
            "--ignore-eos", "--percentile-metrics", ",".join(METRICS), "--metric-percentiles", ",".join(PERCENTILES),
            "--goodput", *[f"{k}:{v:g}" for k, v in slo_ms.items()], "--save-result", "--save-detailed",
            "--result-dir", str(out_dir), "--result-filename", fname, "--disable-tqdm",
            "--ready-check-timeout-sec", "0"]
    if load.dataset == "chat":
        data = chat_dataset(work / f"chat_prompts_{load.seed}.jsonl", seed=load.seed)
        argv += ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--dataset-name", "custom",
                 "--dataset-path", str(data), "--custom-output-len", str(load.output_len), "--skip-chat-template"]
    else:
        argv += ["--backend", "vllm", "--endpoint", "/v1/completions", "--dataset-name", "random",
                 "--random-input-len", str(load.input_len), "--random-output-len", str(load.output_len)]
    if load.temperature is not None:
        argv += ["--temperature", str(load.temperature)]
    capture = out_dir / f"{tag}.capture.jsonl"
    _bench(argv, capture)
    r = json.loads((out_dir / fname).read_text())
    recs = [json.loads(x) for x in capture.read_text().splitlines() if x.strip()]
    return summarise(r, recs, slo_ms, reward_floor)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarise(r: dict, recs: list[dict], slo_ms: dict[str, float], reward_floor: float) -> dict:
    """vLLM's own metrics for the run, plus status counts, rewards and reward-goodput from the per-request join."""
    out = {f"{q}_{m}_ms": r.get(f"{q}_{m}_ms") for m in METRICS for q in ("mean", *(f"p{p}" for p in PERCENTILES))}
    out.update({k: r.get(k) for k in ("completed", "failed", "request_throughput", "request_goodput",
                                      "output_throughput", "total_token_throughput", "duration",
                                      "max_concurrent_requests")})
    by_start = {rec["start_time"]: rec for rec in recs}
    ttfts, lats, olens, starts = r.get("ttfts", []), r.get("latencies", []), r.get("output_lens", []), \
        r.get("start_times", [])
    errors = r.get("errors", [""] * len(ttfts))
    statuses: Counter = Counter()
    e2el_ms, ttft_ms, rewards, versions = [], [], [], Counter()
    good = good_reward = cached = 0
    for i in range(len(ttfts)):
        rec = by_start.get(starts[i] if i < len(starts) else None, {})
        ok = not errors[i]
        statuses[str(rec.get("status", 200 if ok else 0))] += 1
        if rec.get("version"):
            versions[rec["version"]] += 1
        if not ok:
            continue
        e2el_ms.append(lats[i] * 1000)
        ttft_ms.append(ttfts[i] * 1000)
        tpot = (lats[i] - ttfts[i]) / (olens[i] - 1) * 1000 if olens[i] > 1 else 0.0
        meets = (ttfts[i] * 1000 <= slo_ms.get("ttft", math.inf) and tpot <= slo_ms.get("tpot", math.inf)
                 and lats[i] * 1000 <= slo_ms.get("e2el", math.inf))
        good += meets
        reward = rec.get("reward")
        cached += bool(rec.get("reward_cached"))
        if reward is not None:
            rewards.append(reward)
            good_reward += meets and reward >= reward_floor
    dur = r.get("duration") or float("nan")
    out["status_counts"] = dict(statuses)
    out["refused_429_503"] = statuses.get("429", 0) + statuses.get("503", 0)
    out["goodput_recomputed"] = good / dur  # must equal vLLM's request_goodput: a check on the join
    out["rewards_seen"] = len(rewards)
    out["reward_cached"] = cached
    out["reward_mean"] = statistics.fmean(rewards) if rewards else None
    out["reward_p10"] = _pct(rewards, 10)
    out["reward_goodput"] = good_reward / dur if rewards else None
    out["reward_goodput_share"] = good_reward / len(ttfts) if rewards and ttfts else None
    out["mean_output_tokens"] = statistics.fmean(o for o, e in zip(olens, errors) if not e) if e2el_ms else None
    if versions:
        out["versions"] = dict(versions)
    out["e2el_ms_all"] = [round(x, 2) for x in e2el_ms]
    out["ttft_ms_all"] = [round(x, 2) for x in ttft_ms]
    return out


def line(name: str, s: dict) -> str:
    def f(x, d=1):
        return "n/a" if x is None else f"{x:.{d}f}"

    return (f"{name}: p50/p99 E2E {f(s['p50_e2el_ms'])}/{f(s['p99_e2el_ms'])} ms, p99 TTFT {f(s['p99_ttft_ms'])} ms, "
            f"p99 TPOT {f(s['p99_tpot_ms'], 2)} ms, {f(s['request_throughput'])} req/s, goodput "
            f"{f(s['request_goodput'])}, reward-goodput {f(s['reward_goodput'])}, status {s['status_counts']}")


# --- alternation --------------------------------------------------------------------------------------------
RATIO_METRICS = ("p99_e2el_ms", "p50_e2el_ms", "p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms")


def rotate(names: list[str], rnd: int) -> list[str]:
    """Round r's order: A B, B A, ... (rotated and reversed on odd rounds) so drifts hit every system alike."""
    order = names[rnd % len(names):] + names[: rnd % len(names)]
    return order[::-1] if rnd % 2 else order


class Launcher:
    """A system started only while it runs (exclusive mode, e.g. two engines cannot share one 16 GB T4):
    `start()` returns its URL (and warms it), `stop()` stops its processes."""

    def __init__(self, start, warm=None):
        self._start, self._warm, self.procs = start, warm, []

    def start(self) -> str:
        url, self.procs = self._start()
        if self._warm:
            self._warm(url)
        return url

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs = []


def alternate(systems: dict, loads: list[Load], rounds: int, baseline: str, tokenizer: str, work: Path,
              prof: Profile, before=None, after=None, stop_after=None) -> list[dict]:
    """For each load, `rounds` rounds of every system in rotating order. `before/after(name, load, rnd)` may
    return dicts merged into the run's summary (e.g. RSS); `stop_after(entry)` ends a sweep early.
    Systems given as `Launcher`s run one at a time: round r starts each system in turn (rotated order), runs
    every load on it, and stops it (A: all loads, B: all loads; then B, A; ...)."""
    names = list(systems)
    if any(isinstance(v, Launcher) for v in systems.values()):
        runs = {ld.label or ld.rate: {n: [] for n in names} for ld in loads}
        for rnd in range(rounds):
            for name in rotate(names, rnd):
                sysx = systems[name]
                url = sysx.start() if isinstance(sysx, Launcher) else sysx
                try:
                    for load in loads:
                        s = run_load(url, load, tokenizer, work, f"{name}-{load.label or load.rate}-{rnd}",
                                     prof.slo_ms, prof.reward_floor)
                        s["round"] = rnd
                        runs[load.label or load.rate][name].append(s)
                        print(f"[{load.label or load.rate}] round {rnd} " + line(name, s), flush=True)
                finally:
                    if isinstance(sysx, Launcher):
                        sysx.stop()
        return [{"label": ld.label or f"{ld.rate:g} req/s", "rate": ld.rate, "load": ld.describe(),
                 "runs": runs[ld.label or ld.rate], "ratio_over_baseline": ratios(runs[ld.label or ld.rate], baseline)}
                for ld in loads]
    entries = []
    for load in loads:
        runs: dict[str, list] = {n: [] for n in names}
        for rnd in range(rounds):
            for name in rotate(names, rnd):
                pre = before(name, load, rnd) if before else {}
                s = run_load(systems[name], load, tokenizer, work, f"{name}-{load.label or load.rate}-{rnd}",
                             prof.slo_ms, prof.reward_floor)
                s.update(pre or {})
                if after:
                    s.update(after(name, load, rnd) or {})
                s["round"] = rnd
                runs[name].append(s)
                print(f"[{load.label or load.rate}] round {rnd} " + line(name, s), flush=True)
        entry = {"label": load.label or f"{load.rate:g} req/s", "rate": load.rate, "load": load.describe(),
                 "runs": runs, "ratio_over_baseline": ratios(runs, baseline)}
        entries.append(entry)
        if stop_after and stop_after(entry):
            break
    return entries


def ratios(runs: dict[str, list], baseline: str) -> dict:
    out = {}
    for n, rs in runs.items():
        if n == baseline:
            continue
        out[n] = {}
        for m in RATIO_METRICS:
            v = [a[m] / b[m] if a.get(m) and b.get(m) else None for a, b in zip(rs, runs[baseline])]
            ok = [x for x in v if x is not None]
            out[n][m] = {"median": statistics.median(ok) if ok else None, "rounds": v}
    return out


def med(runs: list[dict], key: str):
    xs = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


# --- outputs ------------------------------------------------------------------------------------------------
def new_result(scenario: str, prof: Profile, smoke: bool, model: str, systems: dict[str, str], baseline: str,
               argv: list[str]) -> dict:
    from benchmarks.machine import machine_facts

    return {"benchmark": "aligngate", "scenario": scenario, "profile": prof.name, "smoke": smoke,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m benchmarks " + " ".join(argv), "machine": machine_facts(), "model": model,
            "slo_ms": prof.slo_ms, "reward_floor": prof.reward_floor, "profile_settings": prof.describe(),
            "systems": systems, "baseline": baseline, "entries": [], "notes": []}


def fmt(x, d=1) -> str:
    return "n/a" if x is None else (f"{x:.{d}f}" if isinstance(x, (int, float)) else str(x))


def markdown(result: dict) -> str:
    """The run's table: medians over rounds, per load and system."""
    slo = ", ".join(f"{k} ≤ {v:g} ms" for k, v in result["slo_ms"].items())
    m = result["machine"]
    head = [f"**{result['scenario']}** — profile `{result['profile']}`{' (smoke)' if result['smoke'] else ''}, "
            f"{result['created']}; {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}, load average at start "
            f"{m['loadavg_at_start'][0]:.1f}. SLOs for goodput: {slo}; reward floor {result['reward_floor']:g}. "
            f"Medians over rounds (systems alternated A B / B A in one run).", "",
            "| load | system | TTFT p50/p90/p99 ms | TPOT p50/p90/p99 ms | ITL p50/p90/p99 ms | E2E p50/p90/p99 ms "
            "| req/s | goodput | reward-goodput | ok / refused / failed | p99 E2E vs baseline |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["entries"]:
        for name, runs in e["runs"].items():
            trip = {mt: "/".join(fmt(med(runs, f"p{p}_{mt}_ms"), 1 if mt != "tpot" else 2) for p in PERCENTILES)
                    for mt in METRICS}
            refused = med(runs, "refused_429_503")
            ratio = "baseline" if name == result["baseline"] else fmt(
                (e["ratio_over_baseline"].get(name, {}).get("p99_e2el_ms") or {}).get("median"), 3)
            head.append(f"| {e['label']} | {name} | {trip['ttft']} | {trip['tpot']} | {trip['itl']} | {trip['e2el']} | "
                        f"{fmt(med(runs, 'request_throughput'))} | {fmt(med(runs, 'request_goodput'))} | "
                        f"{fmt(med(runs, 'reward_goodput'))} | {fmt(med(runs, 'completed'), 0)} / {fmt(refused, 0)} / "
                        f"{fmt(med(runs, 'failed'), 0)} | {ratio} |")
    for k, v in result.get("summary", {}).items():
        head.append(f"\n- **{k}**: {v}")
    for n in result.get("notes", []):
        head.append(f"\n- {n}")
    return "\n".join(head) + "\n"


def plot(result: dict, path: Path) -> None:
    """Latency CDFs per system (E2E, pooled over rounds; the last entries), and p99 E2E vs request rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    def plain(axis) -> None:
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())

    entries = result["entries"][-3:]
    rates = [e["rate"] for e in result["entries"]]
    sweep = len(set(rates)) >= 2 and all(r is not None and not math.isinf(r) for r in rates)
    ncols = len(entries) + (1 if sweep else 0)
    fig, axes = plt.subplots(1, max(ncols, 1), figsize=(4.6 * max(ncols, 1), 4), squeeze=False)
    axes = axes[0]
    for ax, e in zip(axes, entries):
        lo, hi = math.inf, 0.0
        for name, runs in e["runs"].items():
            xs = sorted(x for r in runs for x in r.get("e2el_ms_all", []))
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=name)
                lo, hi = min(lo, max(xs[0], 1e-3)), max(hi, xs[-1])
        wide = hi / lo > 20 if hi else False
        if wide:
            ax.set_xscale("log")
            plain(ax.xaxis)
        ax.set_xlabel(f"end-to-end latency (ms{', log' if wide else ''})")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"E2E CDF, {e['label']}", fontsize=9)
        ax.axhline(0.99, color="grey", lw=0.5, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if sweep:
        ax = axes[-1]
        names = list(result["entries"][0]["runs"])
        ys = []
        for name in names:
            pts = [(e["rate"], med(e["runs"][name], "p99_e2el_ms")) for e in result["entries"] if name in e["runs"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{name} p99")
            ys += [p[1] for p in pts if p[1]]
        ax.set_xlabel("offered request rate (req/s)")
        ax.set_ylabel("p99 E2E (ms)")
        if max(rates) / min(rates) > 20:
            ax.set_xscale("log")
            plain(ax.xaxis)
        if ys and max(ys) / max(min(ys), 1e-3) > 20:
            ax.set_yscale("log")
            plain(ax.yaxis)
        ax.set_title("p99 vs request rate", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    m = result["machine"]
    fig.suptitle(f"{result['scenario']} ({result['profile']} profile) — {m['cpu']}, {m['cores']} cores, "
                 f"GPU {m['gpu'] or 'none'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(result: dict, out_dir: Path, update_readme: bool) -> Path:
    """JSON + markdown + PNG into out_dir (named after scenario and profile); the README section if asked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['scenario'].replace('-', '_')}_{result['profile']}{'_smoke' if result['smoke'] else ''}"
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (out_dir / f"{stem}.md").write_text(md)
    try:
        plot(result, out_dir / f"{stem}.png")
    except Exception as e:  # noqa: BLE001 - a plot must not lose a finished run
        print(f"plot failed: {e!r}", file=sys.stderr)
    if update_readme:
        readme_section(result["scenario"], md, result["command"], js.relative_to(ROOT) if js.is_relative_to(ROOT)
                       else js)
    print(md)
    print(f"wrote {js}, {js.with_suffix('.md').name}, {js.with_suffix('.png').name}")
    return js


def readme_section(scenario: str, md: str, command: str, path) -> None:
    """Replace the scenario's block in benchmarks/README.md (between its markers) with the latest table."""
    start, end = f"<!-- result:{scenario} -->", f"<!-- /result:{scenario} -->"
    block = f"{start}\nReproduce: `{command}` → `{path}` (+ `.md`, `.png`)\n\n{md}{end}"
    text = README.read_text() if README.exists() else ""
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += f"\n### {scenario}\n\n{block}\n"
    README.write_text(text)


def process_rss_mb(pid: int) -> dict:
    """RSS of a process and of its whole tree (the gateway and, in-process, its engine children), MiB."""
    import psutil

    try:
        p = psutil.Process(pid)
        own = p.memory_info().rss
        tree = own + sum(c.memory_info().rss for c in p.children(recursive=True))
    except psutil.NoSuchProcess:
        return {"rss_mb": None, "rss_tree_mb": None}
    return {"rss_mb": round(own / 2**20, 1), "rss_tree_mb": round(tree / 2**20, 1)}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0.0
    for q in procs:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, requirement: str, probe: str, timeout: float = 900) -> tuple[bool, str]:
    """A separate venv with `requirement` pip-installed (once); returns (ok, message)."""
    py = venv_python(venv)
    if py.exists() and subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0:
        return True, f"using {venv}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=300)
        p = subprocess.run([str(py), "-m", "pip", "install", "-q", requirement], capture_output=True, text=True,
                           timeout=timeout)
    except (subprocess.SubprocessError, OSError) as e:
        return False, f"could not create {venv}: {e!r}"
    if p.returncode != 0:
        return False, f"`pip install {requirement}` failed:\n{p.stderr[-2000:]}"
    if subprocess.run([str(py), "-c", probe], capture_output=True).returncode != 0:
        return False, f"installed {requirement} but `{probe}` fails"
    return True, f"installed {requirement} into {venv} in {time.monotonic() - t0:.0f} s"
