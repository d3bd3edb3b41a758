"""The reward monitor's alarm rules: which alarm each version's windows raise, against which threshold, and
how severe it is. `AlarmRules` reads the monitor's per-version states (a compared version reads its reference's).

Alarms (defaults = the seeds' thresholds on a 0–1 reward scale; every one configurable or `None` to disable):
  reward_mean_high   window mean reward > 0.8
  reward_std_low     window std of reward < 0.1                       (a policy that always gets the same score)
  reward_shift       |z| > 3, z = (m_w − m_b) / sqrt(s_w²/n_w + s_b²/n_b) (two-sample z of the window mean
                     against the baseline window: by default the version's own first `baseline_size` answers,
                     frozen; or another version's live window via `use_baseline_of(canary, stable)`, which is
                     how a canary is compared with stable; or fixed numbers via `set_baseline`)
  kl_high            mean KL > 10 nats (only when KL is given)
  entropy_low        mean entropy < 0.1 (only when entropy is given)
  hard_constraint    any flagged answer in the window (configurable phrases, case-insensitive, and regexes;
                     default phrase "I love you"); flagged answers also go to the review queue. For a version
                     compared with another (a canary vs stable, `use_baseline_of`) the flag rate is tested against
                     the reference's: one-sided exact binomial, H0: rate <= max(flag_rate_max, reference rate),
                     alarm at p < `thresholds.flag_alpha` (0.01). With a clean reference that is still "any flag"; with a
                     stable that itself says the phrase 13% of the time, a canary that says it less is not blocked
  repetition_high    mean repeated-n-gram fraction > 0.5 (word 3-grams)
  audit_disagreement mean |value-head reward − audit reward| > 0.25 over the window of audited answers (for a
                     compared version: > max(0.25, the reference's own mean gap + 0.15))
                     (Pearson correlation is exported, and alarms only if `audit_corr_min` is set)
Severity: every alarm is `critical` (it fails a canary's gate) except the "too good to be true" ones -
reward_mean_high, reward_std_low and an upward reward_shift - while an audit reward model corroborates the value
head on that version (>= 20 audited answers and no audit_disagreement): then they are `warning` (shown, not
blocking), because a genuinely better policy also scores higher and more uniformly. Without an audit model they
stay critical (the seeds' behaviour).
Each alarm needs `min_samples` observations of its signal first (hard-constraint flags: 1). An alarm is raised
when its threshold is crossed and clears by itself when the window is back past the threshold by `hysteresis`
(5% of the threshold, so a signal sitting on the edge does not flap); raised/cleared events are both emitted.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterable

from serve.monitor.alarms import Alarm
from serve.rollout.gate import binom_sf
from serve.monitor.monitor_config import MonitorConfig
from serve.monitor.monitor_windows import Baseline, VersionState


class AlarmRules:
    """The alarm conditions over a monitor's `VersionState`s, keyed by version."""

    def __init__(self, cfg: MonitorConfig, states: dict[str, VersionState]):
        self.cfg, self._v = cfg, states

    def baseline_for(self, st: VersionState) -> Baseline | None:
        if st.baseline_of is not None:
            ref = self._v.get(st.baseline_of)
            if ref is None:
                return None
            r = ref.win["reward"]
            return Baseline(r.mean, r.std, r.n)
        if st.fixed_baseline is not None:
            return st.fixed_baseline
        b = st.baseline
        return Baseline(b.mean, b.std, b.n)

    def z(self, st: VersionState) -> float:
        r = st.win["reward"]
        b = self.baseline_for(st)
        if b is None or r.n < 2 or b.n < 2:
            return float("nan")
        se = math.sqrt(r.std ** 2 / r.n + b.std ** 2 / b.n)
        d = r.mean - b.mean
        if se < 1e-12:
            return 0.0 if abs(d) < 1e-12 else math.copysign(1e9, d)
        return d / se

    def conditions(self, st: VersionState) -> Iterable[tuple[str, str, float, float, float, int, str]]:
        """(name, "above"|"below", compared value, shown value, threshold, n, message) per evaluable alarm."""
        t, ms = self.cfg.thresholds, self.cfg.min_samples
        r = st.win["reward"]
        if r.n >= ms:
            if t.reward_mean_max is not None:
                yield "reward_mean_high", "above", r.mean, r.mean, t.reward_mean_max, r.n, \
                    "mean reward above threshold"
            if t.reward_std_min is not None:
                yield "reward_std_low", "below", r.std, r.std, t.reward_std_min, r.n, \
                    "reward spread collapsed"
        if t.reward_z_max is not None:
            b = self.baseline_for(st)
            st.last_z = z = self.z(st)
            if r.n >= ms and b is not None and b.n >= self.cfg.min_baseline and math.isfinite(z):
                yield "reward_shift", "above", abs(z), z, t.reward_z_max, r.n, \
                    "window mean reward shifted from the baseline"
        k = st.win["kl"]
        if t.kl_mean_max is not None and k.n >= ms:
            yield "kl_high", "above", k.mean, k.mean, t.kl_mean_max, k.n, "mean KL to the reference too high"
        e = st.win["entropy"]
        if t.entropy_mean_min is not None and e.n >= ms:
            yield "entropy_low", "below", e.mean, e.mean, t.entropy_mean_min, e.n, "entropy collapsed"
        f = st.win["flagged"]
        if t.flag_rate_max is not None and f.n >= 1:
            ref = self._v.get(st.baseline_of) if st.baseline_of is not None else None
            rf = ref.win["flagged"] if ref is not None else None
            if rf is not None and rf.n >= self.cfg.min_baseline and rf.mean > t.flag_rate_max:
                p0 = rf.mean
                k = round(f.mean * f.n)
                p = binom_sf(k, f.n, p0) if k > 0 else 1.0
                yield "hard_constraint", "above", 1.0 - p, f.mean, 1.0 - t.flag_alpha, f.n, \
                    f"flag rate {f.mean:.1%} significantly above {st.baseline_of}'s {p0:.1%} (binomial p={p:.2g})"
            else:
                yield "hard_constraint", "above", f.mean, f.mean, t.flag_rate_max, f.n, \
                    "answers matched a hard constraint"
        rep = st.win["repetition"]
        if t.repetition_mean_max is not None and rep.n >= ms:
            yield "repetition_high", "above", rep.mean, rep.mean, t.repetition_mean_max, rep.n, \
                "answers repeat themselves"
        p = st.pairs
        if p.gap.n >= min(ms, 20):
            if t.audit_gap_max is not None:
                yield "audit_disagreement", "above", p.gap.mean, p.gap.mean, self.audit_gap_limit(st), p.gap.n, \
                    "value head and audit reward model disagree"
            if t.audit_corr_min is not None and math.isfinite(p.corr):
                yield "audit_low_correlation", "below", p.corr, p.corr, t.audit_corr_min, p.gap.n, \
                    "value head and audit reward model are uncorrelated"

    def audit_gap_limit(self, st: VersionState) -> float | None:
        """The audit-disagreement threshold. For a version compared with a reference (canary vs stable), never
        stricter than the reference's own disagreement plus `audit_gap_margin`: a small audit model is noisy (here
        its per-answer reward has twice the spread of the value head's), so stable itself sits near 0.2."""
        t = self.cfg.thresholds
        if t.audit_gap_max is None:
            return None
        ref = self._v.get(st.baseline_of) if st.baseline_of is not None else None
        if ref is not None and ref.pairs.gap.n >= 20:
            return max(t.audit_gap_max, ref.pairs.gap.mean + t.audit_gap_margin)
        return t.audit_gap_max

    SUSPICIOUS = ("reward_mean_high", "reward_std_low", "reward_shift")

    def with_severity(self, st: VersionState, a: Alarm) -> Alarm:
        """Downgrade "too good to be true" alarms to `warning` while the audit model agrees with the value head."""
        if a.name not in self.SUSPICIOUS or (a.name == "reward_shift" and (a.value or 0.0) < 0):
            return a
        gap_max = self.audit_gap_limit(st)
        p = st.pairs
        if gap_max is None or p.gap.n < 20 or "audit_disagreement" in st.active or p.gap.mean > gap_max:
            return a
        return replace(a, severity="warning",
                       message=f"{a.message} (audit model agrees over {p.gap.n} answers: not blocking)")
