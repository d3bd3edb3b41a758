"""The release gate: a machine-readable PASS/FAIL verdict for a candidate against the incumbent.

Checks (all configurable; every failed check is a reason):
- win rate: the lower 95% bound of the candidate's win rate over the incumbent (judged by the oracle when the
  evaluation has one, else by the reward model) must exceed `min_win_rate_lcb`;
- KL budget: mean KL to the reference ≤ `max_kl` nats;
- reward hacking: RM win rate − oracle win rate ≤ `max_hacking_gap` (only when both judges exist);
- length drift: mean length may grow by at most `max_length_increase` (relative) and shrink by at most
  `max_length_decrease` — growth is the classic exploit, so it has the tighter bound.

The verdict JSON is what `export` writes into the manifest and what `serve` checks before a canary starts:
    {"verdict": "PASS"|"FAIL", "reasons": [str], "checks": {name: {"value", "threshold", "ok"}}, "config": {...}}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from training import common as C


@dataclass
class GateConfig:
    min_win_rate_lcb: float = 0.5
    judge: str = "auto"  # "oracle", "rm" or "auto" (oracle when available)
    max_kl: float = 10.0
    max_hacking_gap: float = 0.15
    max_length_increase: float = 0.5
    max_length_decrease: float = 0.8


def win_rate_prose(judge: str, wr: dict) -> str:
    """A win rate read the way it should be: ties left out first (wins / (wins + losses), its CI, how many
    prompts were decided), then the tie-½ rate beside its ceiling — when the incumbent is already right on most
    prompts, most comparisons are ties and the tie-½ rate cannot pass the ceiling whatever the candidate does."""
    d = wr.get("decisive")
    if d is None:
        return f"{judge} win rate {wr['mean']:.3f} (95% CI {wr['ci95'][0]:.3f}–{wr['ci95'][1]:.3f})"
    head = (f"{judge} win rate with ties left out {d['mean']:.3f} (95% CI {d['ci95'][0]:.3f}–{d['ci95'][1]:.3f}, "
            f"{d['n']} decided prompts)" if d.get("n") else f"{judge} win rate: no decided prompt (all ties)")
    tail = (f"; counting ties as ½: {wr['mean']:.3f} (95% CI {wr['ci95'][0]:.3f}–{wr['ci95'][1]:.3f}"
            + (f", ties {wr['ties']:.2f}" if "ties" in wr else "")
            + (f", ceiling {wr['ceiling']:.3f}" if wr.get("ceiling") is not None else "") + ")")
    return head + tail


def gate(ev: dict, cfg: GateConfig = GateConfig()) -> dict:
    checks: dict[str, dict] = {}
    reasons: list[str] = []

    def check(name, value, threshold, ok, why):
        checks[name] = {"value": value, "threshold": threshold, "ok": bool(ok)}
        if not ok:
            reasons.append(why)

    judge = cfg.judge
    if judge == "auto":
        judge = "oracle" if "win_rate_oracle" in ev else "rm"
    wr = ev.get(f"win_rate_{judge}")
    if wr is None:
        check("win_rate_lcb", None, cfg.min_win_rate_lcb, False, f"no {judge} win rate in the evaluation")
    else:
        lcb = wr["ci95"][0]
        check("win_rate_lcb", lcb, cfg.min_win_rate_lcb, lcb > cfg.min_win_rate_lcb,
              f"{win_rate_prose(judge, wr)}: the tie-½ lower bound is not above {cfg.min_win_rate_lcb}")
        if "decisive" in wr:
            checks["win_rate_lcb"]["decisive"] = wr["decisive"]
            checks["win_rate_lcb"]["ceiling"] = wr.get("ceiling")
    kl = ev["candidate"].get("kl_to_reference")
    if kl is not None:
        check("kl_to_reference", kl["mean"], cfg.max_kl, kl["mean"] <= cfg.max_kl,
              f"KL to reference {kl['mean']:.2f} nats exceeds the budget {cfg.max_kl}")
    if "hacking_gap" in ev and "win_rate_oracle" in ev:
        g = ev["hacking_gap"]["mean"]
        check("hacking_gap", g, cfg.max_hacking_gap, g <= cfg.max_hacking_gap,
              f"reward hacking: RM win rate {ev['win_rate_rm']['mean']:.3f} − oracle win rate "
              f"{ev['win_rate_oracle']['mean']:.3f} = {g:.3f} > {cfg.max_hacking_gap}")
    lc, li = ev["candidate"]["mean_length"], ev["incumbent"]["mean_length"]
    drift = (lc - li) / max(li, 1e-9)
    ok = -cfg.max_length_decrease <= drift <= cfg.max_length_increase
    check("length_drift", drift, [-cfg.max_length_decrease, cfg.max_length_increase], ok,
          f"length drift {drift:+.0%} (mean {li:.1f} -> {lc:.1f} bytes) outside "
          f"[-{cfg.max_length_decrease:.0%}, +{cfg.max_length_increase:.0%}]")
    rate = ev["candidate"].get("i_love_you_rate")
    return {"verdict": "PASS" if not reasons else "FAIL", "reasons": reasons, "checks": checks,
            "judge": judge, "config": asdict(cfg),
            "candidate": ev.get("candidate_dir"), "incumbent": ev.get("incumbent_dir"),
            "observed": {"i_love_you_rate": rate, "sentiment_rate": ev["candidate"].get("sentiment_rate")}}


def run(eval_path: str | Path, out_path: str | Path, cfg: GateConfig = GateConfig()) -> dict:
    v = gate(C.read_json(eval_path), cfg)
    C.write_json(out_path, v)
    return v
