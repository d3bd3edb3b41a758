"""Shared, session-scoped real parts: the embedded-default gateway (`aligngate serve` in a subprocess), a real
vLLM OpenAI server on loopback, and helpers to start more gateways. Engines start once per test session.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process with its log in a file; stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        # Same session as the tests (no setsid): in a session of its own the child lands in its own CFS
        # autogroup, where vLLM's engine-core process starves the API process and streams arrive in one burst.
        self.p = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (graceful: engines shut down), then SIGKILL for the whole process tree."""
        import psutil

        try:
            children = psutil.Process(self.p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        for c in children:
            try:
                c.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()


def wait_http(proc: Proc, url: str, ok=lambda r: r.status_code == 200, timeout: float = 240) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.p.returncode}):\n{proc.tail()}")
        try:
            r = httpx.get(url, timeout=30)
            if ok(r):
                return r
            last = r.text[:300]
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    raise TimeoutError(f"{proc.name}: {url} not ok after {timeout}s (last: {last}):\n{proc.tail()}")


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("aligngate")


@pytest.fixture(scope="session")
def cache_dir(session_dir) -> Path:
    """The embedded default models, built once per session exactly as `aligngate serve` builds them."""
    from serve.default_models import ensure_default_models

    d = session_dir / "cache"
    ensure_default_models(d)
    return d


@pytest.fixture(scope="session")
def start_gateway(session_dir):
    procs: list[Proc] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None, wait: str = "ready") -> str:
        port = free_port()
        cmd = [str(BIN / "aligngate"), "serve", "--port", str(port), *args]
        proc = Proc(name, cmd, base_env(**(env or {})), session_dir)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if wait == "ready":
            wait_http(proc, url + "/ready", timeout=300)
        else:
            wait_http(proc, url + "/health", timeout=120)
        return url

    yield start
    for p in procs:
        p.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway, cache_dir) -> str:
    """`aligngate serve` with nothing configured: the embedded default (stable + canary, in-process vLLM)."""
    return start_gateway("gateway-default", env={"XDG_CACHE_HOME": str(cache_dir.parent), "ALIGNGATE_CACHE_DIR": str(cache_dir)})


@pytest.fixture(scope="session")
def vllm_server(session_dir, cache_dir):
    """vLLM's own OpenAI server on loopback, serving the default stable model."""
    port = free_port()
    model = str(cache_dir / "models" / "default-stable")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", str(port),
           "--host", "127.0.0.1", "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
           "--served-model-name", "upstream-policy", "--disable-uvicorn-access-log"]
    proc = Proc("vllm-server", cmd, base_env(), session_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, url + "/v1/models", timeout=300)
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def remote_gateway(start_gateway, vllm_server) -> str:
    """A gateway whose only version is the real vLLM server above (the scale-out path)."""
    versions = [{"name": "remote", "url": vllm_server, "weight": 1}]
    return start_gateway("gateway-remote", env={"ALIGNGATE_VERSIONS": json.dumps(versions)})
