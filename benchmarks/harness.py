"""The benchmark harness: the A B A B alternation of the compared systems under the same loads (`alternate`,
`rotate`, `Launcher` for a system started only while it runs) and the per-system ratios over the baseline.

The shared parts of every `python -m benchmarks <scenario>` run live one per module: profiles
(`benchmarks.profiles`), one load run through vLLM's own `vllm bench serve` machinery (`benchmarks.load`),
per-run metrics with goodput and reward-goodput (`benchmarks.run_metrics`), the outputs: JSON, markdown table,
PNG plots, the README section (`benchmarks.report`), process RSS/CPU (`benchmarks.proc_usage`) and side venvs
(`benchmarks.venvs`). The names the scenarios use as `H.<name>` are re-exported here.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from benchmarks.load import Load, run_load
from benchmarks.proc_usage import process_cpu_s, process_rss_mb
from benchmarks.profiles import (PUBLIC_MODEL, Profile, default_model, gateway_env, gpu_present, no_gpu_message,
                                 profile, version_spec)
from benchmarks.report import RESULTS, fmt, new_result, write
from benchmarks.run_metrics import line, med, pct
from benchmarks.venvs import ensure_venv

__all__ = [  # the scenarios' `H.<name>`: the alternation (here) and what it re-exports from the modules above
    "RATIO_METRICS", "Launcher", "alternate", "ratios", "rotate", "round_load", "pooled_ratio_ci",
    "Load", "run_load", "process_cpu_s", "process_rss_mb", "PUBLIC_MODEL", "Profile", "default_model", "gateway_env",
    "gpu_present", "no_gpu_message", "profile", "version_spec", "RESULTS", "fmt", "new_result", "write", "line",
    "med", "ensure_venv",
]

RATIO_METRICS = ("p99_e2el_ms", "p50_e2el_ms", "p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms")


def rotate(names: list[str], rnd: int) -> list[str]:
    """Round r's order: the names rotated by r (A B, B A, ...; A B C, B C A, C A B, ...), so over the rounds every
    system runs in every position and a drift hits all alike. (Until 2026-12-04 this also reversed odd rounds,
    which for two systems undid the rotation: A B every round.)"""
    k = rnd % len(names) if names else 0
    return names[k:] + names[:k]


def round_load(load: Load, rnd: int) -> Load:
    """Round r's load: the same shape with seed base + r, so every round brings new prompts (a repeated prompt set
    leaves only the first round cold) while every system of one round gets the same prompts (the pairing)."""
    return dataclasses.replace(load, seed=load.seed + rnd)


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
    every load on it, and stops it (A: all loads, B: all loads; then B, A; ...); a sweep cannot end early there
    (every load has run on A before B starts), so `stop_after` is refused rather than ignored."""
    names = list(systems)
    if any(isinstance(v, Launcher) for v in systems.values()):
        if stop_after is not None:
            raise ValueError("alternate: stop_after needs the systems running side by side, not Launchers")
        runs = {ld.label or ld.rate: {n: [] for n in names} for ld in loads}
        for rnd in range(rounds):
            for name in rotate(names, rnd):
                sysx = systems[name]
                url = sysx.start() if isinstance(sysx, Launcher) else sysx
                try:
                    for load in loads:
                        pre = before(name, load, rnd) if before else {}
                        s = run_load(url, round_load(load, rnd), tokenizer, work,
                                     f"{name}-{load.label or load.rate}-{rnd}", prof.slo_ms, prof.reward_floor)
                        s.update(pre or {})
                        if after:
                            s.update(after(name, load, rnd) or {})
                        s["round"], s["seed"] = rnd, load.seed + rnd
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
                s = run_load(systems[name], round_load(load, rnd), tokenizer, work,
                             f"{name}-{load.label or load.rate}-{rnd}", prof.slo_ms, prof.reward_floor)
                s.update(pre or {})
                if after:
                    s.update(after(name, load, rnd) or {})
                s["round"], s["seed"] = rnd, load.seed + rnd
                runs[name].append(s)
                print(f"[{load.label or load.rate}] round {rnd} " + line(name, s), flush=True)
        entry = {"label": load.label or f"{load.rate:g} req/s", "rate": load.rate, "load": load.describe(),
                 "runs": runs, "ratio_over_baseline": ratios(runs, baseline)}
        entries.append(entry)
        if stop_after and stop_after(entry):
            break
    return entries


def ratios(runs: dict[str, list], baseline: str) -> dict:
    """Per system, each metric's ratio over the baseline round by round, and the median over rounds (one round
    disturbed by something else on the machine is set aside); and the pooled p99 E2E: every request of every round
    in one distribution per system, the whole run's p99, in which one disturbed round weighs in fully."""
    out = {}
    for n, rs in runs.items():
        if n == baseline:
            continue
        out[n] = {}
        for m in RATIO_METRICS:
            v = [a[m] / b[m] if a.get(m) and b.get(m) else None for a, b in zip(rs, runs[baseline])]
            ok = [x for x in v if x is not None]
            out[n][m] = {"median": statistics.median(ok) if ok else None, "rounds": v}
        mine, base = pooled_p99(rs), pooled_p99(runs[baseline])
        if mine and base:
            lo, hi = pooled_ratio_ci(rs, runs[baseline])
            out[n]["p99_e2el_ms_pooled"] = {"ratio": mine / base, "ci95": [lo, hi], n: mine, baseline: base}
    return out


def pooled_ratio_ci(runs: list[dict], base_runs: list[dict], key: str = "e2el_ms_all", q: float = 99,
                    reps: int = 2000, seed: int = 0) -> tuple[float | None, float | None]:
    """Bootstrap 95% CI of the pooled-p99 ratio (runs over base_runs): each resample draws every round's requests
    with replacement, within the round and system (so a round keeps its weight and the rounds' drift stays in),
    pools them and takes the ratio of the p99s; the 2.5th and 97.5th percentiles of `reps` such ratios. A CI
    wider than a target's margin means this run cannot judge the target."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = [np.asarray(r.get(key, []), dtype=float) for r in runs]
    b = [np.asarray(r.get(key, []), dtype=float) for r in base_runs]
    a, b = [x for x in a if x.size], [x for x in b if x.size]
    if not a or not b:
        return None, None

    def draw(groups: list) -> np.ndarray:
        return np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])

    ratios = [np.percentile(draw(a), q) / np.percentile(draw(b), q) for _ in range(reps)]
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def pooled_p99(runs: list[dict], key: str = "e2el_ms_all") -> float | None:
    return pct([x for r in runs for x in r.get(key, [])], 99)
