"""The embedded default: two tiny local policies built on first use into the cache directory.

Built once, atomically (into a temporary directory, then renamed) under a file lock, so concurrent first starts
(two gateways, parallel tests) neither clash nor serve a half-written model.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from serve.config import VersionSpec, embedded_versions
from serve.logs import get_logger

log = get_logger(__name__)

SEEDS = {"stable": 0, "canary": 1}
# SFT steps on the default task: a first start must be quick (README target: ready in ~2 minutes), so the canary
# gets fewer steps than stable — a slightly weaker policy, which is what a canary demo wants anyway.
# ALIGNGATE_DEFAULT_SFT_STEPS overrides stable's count (canary gets half); tests use a small value.
STEPS = {"stable": 300, "canary": 150}


def sft_steps(version: str) -> int:
    override = os.environ.get("ALIGNGATE_DEFAULT_SFT_STEPS")
    if override:
        return max(1, int(override) // (2 if version == "canary" else 1))
    return STEPS.get(version, 150)


def build_policy(out_dir: Path, seed: int, steps: int = 300) -> None:
    """The default policy: trained quickly on the default task when the training module offers it."""
    try:
        from training.default_policy import build_default_policy
    except ImportError:  # training module without the quick default: random weights, same format
        import torch

        from kernels.value_head import ValueHead, save_value_head
        from training.tiny import build_tiny_policy

        model = build_tiny_policy(out_dir, size="tiny", seed=seed)
        torch.manual_seed(seed + 1000)
        head = ValueHead(model.config.hidden_size)
        save_value_head(head, out_dir)
        return
    build_default_policy(out_dir, seed=seed, steps=steps)


def ensure_default_models(cache_dir: Path) -> list[VersionSpec]:
    versions = embedded_versions(cache_dir)
    root = cache_dir / "models"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for v in versions:
            target = Path(v.model)
            if (target / "config.json").exists():
                continue
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("building_default_model", version=v.name, path=str(target))
            build_policy(tmp, SEEDS.get(v.name, 0), sft_steps(v.name))
            tmp.rename(target)
    return versions
