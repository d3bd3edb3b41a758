"""The reward monitor's settings: `MonitorConfig` (windows, baseline, hard-constraint rules, events), its alarm
`Thresholds`, and `RewardScale`, which maps what an engine reports to the 0–1 reward the alarms work on.

Scale: alarms work on a 0–1 reward. `RewardScale` maps what the engine reports to 0–1:
  - `unit` (default): the value is already on 0–1 and is only clipped. The project's exported value heads are
    fitted to `sigmoid(rm - mu_ref)` (see training/export.py, manifest `value_head.scale`), so this is right
    for them;
  - `sigmoid`: `σ((raw - center) / temperature)` for raw logit-scale heads (e.g. an OpenRLHF `score`, or a raw
    reward model with its `mu_ref` as `center`: then 0.5 means "as good as an average reference answer").
  Use `RewardScale.from_manifest(manifest)` or `RewardMonitor.set_reward_scale(version, ...)` per version. Audit
  rewards are taken as 0–1 (the audit scorer returns `sigmoid(score - mu_ref)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class RewardScale:
    kind: Literal["unit", "sigmoid"] = "unit"
    center: float = 0.0
    temperature: float = 1.0

    def to01(self, x: float) -> float:
        if self.kind == "sigmoid":
            z = (x - self.center) / self.temperature
            if z >= 0:
                return 1.0 / (1.0 + math.exp(-z))
            e = math.exp(z)
            return e / (1.0 + e)
        return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x

    @classmethod
    def from_manifest(cls, manifest: dict) -> "RewardScale":
        """A version's manifest (training/export.py): value heads documented as 0–1 → `unit`; else sigmoid
        around `value_head.mu_ref` (0 when absent)."""
        vh = manifest.get("value_head") or {}
        if str(vh.get("scale", "")).startswith("0-1"):
            return cls("unit")
        return cls("sigmoid", float(vh.get("mu_ref", 0.0)), float(vh.get("temperature", 1.0)))


@dataclass
class Thresholds:
    reward_mean_max: float | None = 0.8
    reward_std_min: float | None = 0.1
    reward_z_max: float | None = 3.0
    kl_mean_max: float | None = 10.0
    entropy_mean_min: float | None = 0.1
    flag_rate_max: float | None = 0.0  # alarm when the flagged fraction of the window exceeds this (0 = any flag)
    flag_alpha: float = 0.01  # level of the canary-vs-reference flag-rate test
    repetition_mean_max: float | None = 0.5
    audit_gap_max: float | None = 0.25
    audit_gap_margin: float = 0.15  # a compared version: alarm above max(audit_gap_max, reference's gap + this)
    audit_corr_min: float | None = None


@dataclass
class MonitorConfig:
    window: int = 200  # observations per window (also the cap of a time-based window)
    window_seconds: float | None = None  # set → time-based window: only the last N seconds count
    baseline_size: int = 200  # the version's first answers, frozen, as its own baseline
    min_samples: int = 50  # per signal, before its alarm may fire
    min_baseline: int = 50
    thresholds: Thresholds = field(default_factory=Thresholds)
    reward_scale: RewardScale = field(default_factory=RewardScale)
    hard_constraint_phrases: tuple[str, ...] = ("I love you",)
    hard_constraint_regexes: tuple[str, ...] = ()
    repetition_n: int = 3
    max_text_tokens: int = 2000  # bound on the words the repetition feature looks at
    event_queue_size: int = 1000
    hysteresis: float = 0.05  # an active alarm clears only 5% (of the threshold) past it; flag alarms at 0 exactly
