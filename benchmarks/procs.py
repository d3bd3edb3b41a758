"""Start and stop the servers a benchmark or test compares: aligngate, vLLM's own server, anything by command.

Children stay in the caller's session (no setsid): in a session of its own a server lands in its own CFS
autogroup, where vLLM's engine-core process starves the API process and streams arrive in one burst.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class Proc:
    """A child process with its log in a file; stopped with SIGTERM, then SIGKILL for its whole tree."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 30) -> None:
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


def start_aligngate(name: str, log_dir: Path, *args: str, env: dict[str, str] | None = None,
                    wait: str = "ready", port: int | None = None, timeout: float = 300) -> tuple[Proc, str]:
    """`aligngate serve` in a child process, waited for until /ready (or /health); stopped if it never gets there."""
    port = port or free_port()
    cmd = [str(BIN / "aligngate"), "serve", "--port", str(port), *args]
    proc = Proc(name, cmd, server_env(**(env or {})), log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, url + ("/ready" if wait == "ready" else "/health"), timeout=timeout)
    except BaseException:  # never leave a half-started server behind
        proc.stop()
        raise
    return proc, url


def start_vllm_server(name: str, log_dir: Path, model: str, served_name: str, *extra: str,
                      port: int | None = None, dtype: str = "float32", max_model_len: int = 512,
                      enforce_eager: bool = True) -> tuple[Proc, str]:
    """vLLM's own OpenAI server (`vllm serve`), started as a module because the console script fails here."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", str(port),
           "--host", "127.0.0.1", "--dtype", dtype, "--max-model-len", str(max_model_len),
           *(["--enforce-eager"] if enforce_eager else []),
           "--served-model-name", served_name, "--disable-uvicorn-access-log", *extra]
    proc = Proc(name, cmd, server_env(), log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, url + "/v1/models", timeout=300)
    except BaseException:
        proc.stop()
        raise
    return proc, url


def start_command(name: str, log_dir: Path, cmd: list[str], health_url: str, env: dict[str, str] | None = None,
                  timeout: float = 240) -> Proc:
    """Any server by command line (LiteLLM's proxy, the fake upstream), waited on until `health_url` answers 200."""
    proc = Proc(name, cmd, server_env(**(env or {})), log_dir)
    try:
        wait_http(proc, health_url, timeout=timeout)
    except BaseException:
        proc.stop()
        raise
    return proc
