"""A separate venv for a compared system that cannot share the project's (e.g. LiteLLM): `ensure_venv`
pip-installs a requirement into it once and checks it imports."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, requirement: str, probe: str, timeout: float = 900) -> tuple[bool, str]:
    """A separate venv with `requirement` pip-installed (once); returns (ok, message)."""
    py = venv_python(venv)
    if py.exists() and subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0:
        return True, f"using {venv}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=300)
        p = subprocess.run([str(py), "-m", "pip", "install", "-q", requirement], capture_output=True, text=True,
                           timeout=timeout)
    except (subprocess.SubprocessError, OSError) as e:
        return False, f"could not create {venv}: {e!r}"
    if p.returncode != 0:
        return False, f"`pip install {requirement}` failed:\n{p.stderr[-2000:]}"
    if subprocess.run([str(py), "-c", probe], capture_output=True).returncode != 0:
        return False, f"installed {requirement} but `{probe}` fails"
    return True, f"installed {requirement} into {venv} in {time.monotonic() - t0:.0f} s"
