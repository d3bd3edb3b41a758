"""Shared, session-scoped real parts: the embedded-default gateway (`aligngate serve` in a subprocess), a real
vLLM OpenAI server on loopback, and a factory for more gateways. Engines start once per test session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.procs import free_port, start_aligngate, start_vllm_server  # noqa: F401  (free_port re-exported)

# Test tiers (tests/README.md). A test is `slow` when it needs a vLLM engine, a gateway process or a training run:
# it uses one of these fixtures (directly or through another fixture), or its module starts such processes itself,
# or it is marked `@pytest.mark.slow`. `pytest -m "not slow"` is the fast tier for the edit-test loop.
SLOW_FIXTURES = {"gateway", "start_gateway", "vllm_server", "remote_gateway", "fast_pipeline", "cache_dir"}
SLOW_MODULES = {"test_auth_limits", "test_canary_e2e", "test_chaos", "test_fuzz_schema", "test_overload",
                "test_remote_replica", "test_scale_out", "test_benchmarks_smoke", "test_incident_demo",
                "test_training_pipeline"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in SLOW_MODULES or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        # the fast pipeline (a whole offline lifecycle, session-scoped) is built in the setup of the first test
        # that needs it, and pytest-timeout charges setup to that test: 600 s was too little on a loaded machine
        if "fast_pipeline" in getattr(item, "fixturenames", ()) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(1800))


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("aligngate")


@pytest.fixture(scope="session")
def cache_dir(session_dir) -> Path:
    """The embedded default models, built once per session exactly as `aligngate serve` builds them."""
    from serve.default_models import ensure_default_models

    # fewer SFT steps than a user's first start: the tests need the format and a value head, not a good policy
    os.environ.setdefault("ALIGNGATE_DEFAULT_SFT_STEPS", "30")
    d = session_dir / "cache"
    ensure_default_models(d)
    return d


@pytest.fixture(scope="session")
def client(gateway):
    """The official openai client on the default gateway (a module with its own gateway defines its own)."""
    import openai

    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def default_tokenizer(cache_dir):
    """The embedded default stable's tokenizer (`tokenizers`), for tests that name token ids."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(cache_dir / "models" / "default-stable" / "tokenizer.json"))


@pytest.fixture(scope="session")
def family_checkpoint(session_dir):
    """`family_checkpoint(family, **kw)`: a random-weight checkpoint of a real decoder family
    (`training.families.build_family_checkpoint`, TRL value head by default), built once per session and argument
    set; fast (about a second each), so not a slow fixture by itself."""
    from training.families import build_family_checkpoint

    built: dict[tuple, Path] = {}

    def get(family: str, **kw) -> Path:
        key = (family, *sorted(kw.items()))
        if key not in built:
            name = "-".join([family, *(f"{k}={v}" for k, v in sorted(kw.items()))])
            built[key] = build_family_checkpoint(family, session_dir / "families" / name, **kw)
        return built[key]

    return get


@pytest.fixture(scope="session")
def fast_pipeline(session_dir) -> Path:
    """`aligngate train pipeline --fast`, run once per session through the CLI: exported sft / dpo / incident
    versions, the reward models, eval and gate verdicts (the training tests and the incident demo share it)."""
    from training import cli

    out = session_dir / "pipeline-fast"
    assert cli.main(["pipeline", "--fast", "--out", str(out), "--seed", "0"]) == 0
    return out


# A start that hangs (the open start-up stall of issue 21, tests/stall.py) is what the gateway's start deadline is
# for: past it the gateway kills that engine's processes and starts it again (serve/engines/engine_start.py). The product
# default (300 s) leaves room for a first start that builds models; these gateways start from built models, so
# their deadline is shorter and the wait leaves room for one retry. A recovered start is reported (a warning naming
# the version and the stall signature), never hidden: see _report_restarts.
TEST_START_DEADLINE_S = 120
TEST_START_WAIT_S = 480


def _report_restarts(name: str, log_path: Path) -> None:
    import sys
    import warnings

    sys.path.insert(0, str(Path(__file__).parent))
    from stall import stall_signature

    text = log_path.read_text(errors="replace")
    timeouts = [line for line in text.splitlines() if '"event": "engine_start_timeout"' in line]
    if timeouts:
        before = text[: text.index(timeouts[0])]
        warnings.warn(f"{name}: {len(timeouts)} engine start(s) passed the {TEST_START_DEADLINE_S} s deadline and "
                      f"were retried by the gateway ({stall_signature(before) or 'not the known stall signature'}):"
                      f" {timeouts[0][:300]}", stacklevel=1)


@pytest.fixture(scope="session")
def start_gateway(session_dir):
    procs = []

    def start(name: str, *args: str, env: dict[str, str] | None = None, wait: str = "ready") -> str:
        env = {"ALIGNGATE_ENGINE_START_TIMEOUT_S": str(TEST_START_DEADLINE_S), **(env or {})}
        proc, url = start_aligngate(name, session_dir, *args, env=env, wait=wait, timeout=TEST_START_WAIT_S)
        procs.append(proc)
        _report_restarts(name, proc.log_path)
        return url

    yield start
    for p in procs:
        p.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway, cache_dir) -> str:
    """`aligngate serve` with nothing configured: the embedded default (stable + canary, in-process vLLM)."""
    return start_gateway("gateway-default", env={"ALIGNGATE_CACHE_DIR": str(cache_dir)})


@pytest.fixture(scope="session")
def vllm_server(session_dir, cache_dir):
    """vLLM's own OpenAI server on loopback, serving the default stable model through aligngate's value-head class
    (the plugin is installed in this venv), so the remote path can read the in-pass reward too."""
    model = str(cache_dir / "models" / "default-stable")
    proc, url = start_vllm_server("vllm-server", session_dir, model, "upstream-policy", "--hf-overrides",
                                  json.dumps({"architectures": ["LlamaForCausalLMWithValueHead"]}))
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def remote_gateway(start_gateway, vllm_server, cache_dir) -> str:
    """A gateway whose only version is the real vLLM server above (the scale-out path)."""
    from serve.vllm_ext.value_slots import read_value_slots

    slots = read_value_slots(cache_dir / "models" / "default-stable")
    versions = [{"name": "remote", "url": vllm_server, "weight": 1, "value_slots": slots.ids()}]
    return start_gateway("gateway-remote", env={"ALIGNGATE_VERSIONS": json.dumps(versions)})
