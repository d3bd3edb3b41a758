"""What a benchmark run is sized as: `Profile` (engine settings, load shape, rates, SLOs) and the `cpu` / `t4`
profiles (`profile(name, smoke)`), the GPU check the `t4` profile needs, the default model, and the aligngate
settings that follow from a profile (`version_spec`, `gateway_env`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

PUBLIC_MODEL = "policy"


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
