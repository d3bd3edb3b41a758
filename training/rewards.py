"""Where PPO, export (value-head fitting) and evaluation get rewards: a reward-model directory (from `rm`) or a
reward function named `module:function`.

A reward function takes (prompts, responses) — prompts as strings or chat-message lists, responses as strings —
and returns one float per response, on a 0–1 scale for the gateway's alarms (the default task's oracle,
`training.task:oracle_rewards`, is one). A reward-model directory gives σ(r − μ_ref) (see reward_model.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

RewardFn = Callable[[Sequence, Sequence[str]], np.ndarray]


class RewardSpecError(ValueError):
    pass


def load_reward_fn(spec: str | Path) -> tuple[RewardFn, str]:
    """(function, description) for an RM dir or `module:function`."""
    s = str(spec)
    p = Path(s)
    if p.is_dir():
        from training.reward_model import RM_CONFIG, RewardModel

        if not (p / RM_CONFIG).exists():
            raise RewardSpecError(f"{p}: not a reward-model directory (no {RM_CONFIG}); train one with `rm`")
        rm = RewardModel(p)
        return rm.reward01, f"reward model {p}"
    if ":" not in s:
        raise RewardSpecError(f"--reward {s!r}: expected a reward-model directory or module:function "
                              "(e.g. training.task:oracle_rewards)")
    mod, _, name = s.partition(":")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise RewardSpecError(f"--reward {s!r}: cannot import ({e})") from None
    if not callable(fn):
        raise RewardSpecError(f"--reward {s!r}: {name} is not callable")

    def call(prompts, responses) -> np.ndarray:
        out = np.asarray(fn(list(prompts), list(responses)), dtype=np.float64).reshape(-1)
        if out.shape[0] != len(responses):
            raise RewardSpecError(f"{s} returned {out.shape[0]} rewards for {len(responses)} responses")
        if not np.isfinite(out).all():
            raise RewardSpecError(f"{s} returned a non-finite reward")
        return out

    return call, f"function {s}"
