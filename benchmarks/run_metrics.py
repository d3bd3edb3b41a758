"""The metrics of one load run: `summarise` (vLLM's own metrics plus status counts, rewards and reward-goodput
from the per-request join), its one-line form (`line`), and `med`, a metric's median over rounds.

Metric definitions are vLLM's (TTFT, TPOT, ITL, E2EL; goodput = requests/s meeting every SLO). Reward-goodput
is ours: requests/s that meet the same SLOs AND carry a reward ≥ the floor. vLLM's request functions drop the
gateway's reward chunk, so `benchmarks.vllm_bench` captures it with a read-only hook (see its docstring) and
each request's reward is joined to vLLM's per-request record (`--save-detailed`) by its start time. Systems that
return no reward (vLLM's server, LiteLLM, remote-mode aligngate, the reward-off model) have reward-goodput n/a.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = ("50", "90", "99")


def pct(xs: list[float], q: float) -> float | None:
    """The q-th percentile, linear between ranks (numpy's default); None for no data."""
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
    out["reward_p10"] = pct(rewards, 10)
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


def med(runs: list[dict], key: str):
    xs = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(xs) if xs else None
