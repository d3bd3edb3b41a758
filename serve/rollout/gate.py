"""The rollout plan and the gate each stage must pass (pure functions: statistics, no I/O).

Plan. Stages are canary traffic shares (default 1% → 10% → 50% → 100%), each with a minimum number of canary
requests and a minimum duration. The plan is stored with the rollout, so every replica uses the same one.

Gate. Canary and stable are compared over the same window — from the stage's start (at most `window_s` back) —
on the outcomes in `serve.rollout.stats` (this replica's; with Redis, every replica's, through `serve.rollout.stats_sync`):
- latency: canary p99 TTFT and p99 end-to-end ≤ `latency_ratio` (1.2) × stable's, plus `latency_slack_s`
  (a small absolute floor against timer and scheduler noise on a loaded host; 0 makes it the bare ratio);
- errors: canary error rate ≤ stable error rate + `error_margin` (1 point);
- reward (when both sides have ≥ `reward_min_samples` rewards): one-sided Welch t-test of
  H0: mean_canary ≥ mean_stable − margin against H1: mean_canary < mean_stable − margin, at α = 0.05, with a
  practical margin of 0.02 on the reward scale; the canary fails when p < α;
- alarms: no active alarm on the canary from any registered `AlarmSource` (the reward monitor plugs in here).

When a stage has its minimum requests and duration, the gate is judged with one-sided tests (the p99 limit as a
binomial test of the canary requests over it, the error margin, the reward Welch test): all pass → advance
(the last stage passing → promoted: the canary becomes the stable version), any fails → rollback. Before that,
a breach that is already clear rolls back at once, so a bad canary is cut within seconds: an alarm; a canary
error rate whose 99% Wilson lower bound exceeds the limit; a canary *median* latency above the stable's p99
limit (once `breach_min_requests` canary requests are in); a reward drop with p < `reward_alpha_early`.
Paused rollouts do not advance but still roll back on a breach. Rollback = canary weight 0, reason recorded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from serve.monitor.alarms import Alarm
from serve.config import CanarySettings
from serve.rollout.stats import Summary


# --- plan and gate -----------------------------------------------------------------------------------------
def make_plan(cfg: CanarySettings, stages: list[float] | None = None, min_requests: int | None = None,
              min_duration_s: float | None = None) -> list[dict]:
    weights = stages or cfg.stages
    if not weights or any(not 0 < w <= 1 for w in weights) or list(weights) != sorted(weights):
        raise ValueError(f"stages must be increasing shares in (0, 1], got {weights}")
    return [{"weight": float(w),
             "min_requests": cfg.min_requests if min_requests is None else int(min_requests),
             "min_duration_s": cfg.min_duration_s if min_duration_s is None else float(min_duration_s)}
            for w in weights]


def gate_params(cfg: CanarySettings) -> dict:
    return {k: getattr(cfg, k) for k in ("latency_ratio", "latency_slack_s", "error_margin", "gate_alpha", "reward_alpha",
                                         "reward_alpha_early", "reward_margin", "reward_min_samples",
                                         "breach_min_requests", "window_s")}


def wilson_lower(k: int, n: int, z: float = 2.576) -> float:
    if n == 0:
        return 0.0
    p = k / n
    den = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / den)


def welch_one_sided(canary: list[float], stable: list[float], margin: float) -> tuple[float, float, float]:
    """H0: mean(canary) >= mean(stable) - margin; H1: it is lower. Returns (t, df, p) (p small = canary worse)."""
    nc, ns = len(canary), len(stable)
    mc, ms = sum(canary) / nc, sum(stable) / ns
    vc = sum((x - mc) ** 2 for x in canary) / (nc - 1)
    vs = sum((x - ms) ** 2 for x in stable) / (ns - 1)
    se2 = vc / nc + vs / ns
    diff = mc - ms + margin
    if se2 <= 0:
        return (math.inf if diff >= 0 else -math.inf), float(nc + ns - 2), (1.0 if diff >= 0 else 0.0)
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / ((vc / nc) ** 2 / max(nc - 1, 1) + (vs / ns) ** 2 / max(ns - 1, 1) or 1e-300)
    try:
        from scipy.stats import t as student_t

        p = float(student_t.cdf(t, df))
    except ImportError:  # normal approximation
        p = 0.5 * math.erfc(-t / math.sqrt(2))
    return t, df, p


@dataclass
class Decision:
    action: str  # hold | advance | rollback
    reasons: list[str]
    checks: dict
    stage_done: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of seeing k or more."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    try:
        from scipy.stats import binom

        return float(binom.sf(k - 1, n, p))
    except ImportError:
        return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def evaluate(canary: Summary, stable: Summary, baseline: dict | None, c_rewards: list[float],
             s_rewards: list[float], alarms: list[Alarm], stage: dict, gates: dict, elapsed_s: float,
             c_latencies: dict[str, list[float]] | None = None) -> Decision:
    """The gate for one stage (pure: every input is given). `baseline` is the stable summary saved at the end
    of the previous stage, used when the stable gets too little traffic in this window (the 100% stage)."""
    checks: dict = {}
    breaches: list[str] = []
    stage_done = canary.requests >= stage["min_requests"] and elapsed_s >= stage["min_duration_s"]
    enough = canary.requests >= gates["breach_min_requests"]
    ref = stable.to_dict()
    if stable.ok < gates["breach_min_requests"] and baseline:
        ref = baseline
        checks["stable_reference"] = "baseline from the previous stage"

    blocking = [a for a in alarms if a.severity == "critical"]  # warnings are shown in the checks, not gated on
    if blocking:
        breaches.append("alarm: " + "; ".join(f"{a.source}/{a.name}: {a.message}".rstrip(": ") for a in blocking))
    checks["alarms"] = [a.to_dict() for a in alarms]

    # errors
    if canary.requests:
        limit = ref.get("error_rate", 0.0) + gates["error_margin"]
        point_ok = canary.error_rate <= limit
        lower = wilson_lower(canary.errors, canary.requests)
        checks["error_rate"] = {"canary": canary.error_rate, "stable": ref.get("error_rate", 0.0), "limit": limit,
                                "canary_wilson99_lower": lower, "ok": point_ok}
        p_err = binom_sf(canary.errors, canary.requests, min(limit, 1.0))
        checks["error_rate"].update({"p": p_err, "ok": p_err >= gates["gate_alpha"],
                                     "test": f"one-sided binomial, H0: rate <= limit, alpha={gates['gate_alpha']}"})
        if enough and lower > limit:
            breaches.append(f"error rate {canary.error_rate:.1%} over {canary.requests} requests > limit "
                            f"{limit:.1%} (stable {ref.get('error_rate', 0.0):.1%} + {gates['error_margin']:.0%})")
        elif stage_done and p_err < gates["gate_alpha"]:
            breaches.append(f"error rate {canary.error_rate:.1%} significantly > limit {limit:.1%} (p={p_err:.3g})")

    # latency
    for metric in ("ttft", "e2e"):
        s99 = ref.get(f"p99_{metric}_s")
        c99, c50 = getattr(canary, f"p99_{metric}_s"), getattr(canary, f"p50_{metric}_s")
        if s99 is None or c99 is None:
            continue
        limit = gates["latency_ratio"] * s99 + gates["latency_slack_s"]
        # "canary p99 <= limit" means at most 1% of canary requests above the limit: a one-sided binomial test
        # of the exceedances (exact for small samples, the point p99 comparison for large ones).
        xs = (c_latencies or {}).get(metric)
        over = sum(x > limit for x in xs) if xs is not None else (canary.ok if c99 > limit else 0)
        n = len(xs) if xs is not None else canary.ok
        p_lat = binom_sf(over, n, 0.01)
        checks[f"p99_{metric}"] = {"canary": c99, "stable": s99, "limit": limit, "canary_p50": c50,
                                   "canary_over_limit": over, "n": n, "p": p_lat, "ok": p_lat >= gates["gate_alpha"]}
        if canary.ok >= gates["breach_min_requests"] and c50 > limit:
            breaches.append(f"{metric} median {c50 * 1000:.0f} ms > stable p99 limit {limit * 1000:.0f} ms "
                            f"({gates['latency_ratio']}x {s99 * 1000:.0f} ms + {gates['latency_slack_s'] * 1000:.0f} ms)")
        elif stage_done and p_lat < gates["gate_alpha"]:
            breaches.append(f"p99 {metric} {c99 * 1000:.0f} ms > limit {limit * 1000:.0f} ms "
                            f"({gates['latency_ratio']}x stable {s99 * 1000:.0f} ms): {over}/{n} requests over, "
                            f"p={p_lat:.3g}")

    # reward
    m = gates["reward_min_samples"]
    if len(c_rewards) >= m and len(s_rewards) >= m:
        t, df, p = welch_one_sided(c_rewards, s_rewards, gates["reward_margin"])
        ok = p >= gates["reward_alpha"]
        checks["reward"] = {"canary_mean": sum(c_rewards) / len(c_rewards), "stable_mean": sum(s_rewards) / len(s_rewards),
                            "n_canary": len(c_rewards), "n_stable": len(s_rewards), "t": t, "df": df, "p": p,
                            "test": f"one-sided Welch t, alpha={gates['reward_alpha']}, margin={gates['reward_margin']}",
                            "ok": ok}
        if p < gates["reward_alpha_early"]:
            breaches.append(f"mean reward significantly below stable (Welch t={t:.2f}, p={p:.2g})")
        elif stage_done and not ok:
            breaches.append(f"mean reward below stable - {gates['reward_margin']} (Welch t={t:.2f}, p={p:.3f} "
                            f"< {gates['reward_alpha']})")
    else:
        checks["reward"] = {"n_canary": len(c_rewards), "n_stable": len(s_rewards), "ok": True,
                            "note": f"fewer than {m} rewards on a side: not tested"}

    checks["progress"] = {"canary_requests": canary.requests, "min_requests": stage["min_requests"],
                          "elapsed_s": round(elapsed_s, 2), "min_duration_s": stage["min_duration_s"]}
    if breaches:
        return Decision("rollback", breaches, checks, stage_done)
    if stage_done:
        return Decision("advance", ["all gates passed"], checks, True)
    return Decision("hold", [], checks, False)
