"""Imported checkpoints served through real gateways, asked with the official `openai` client (slow tier).

Gateway A (audit model = an imported OpenRLHF critic's): a TRL checkpoint given directly in ALIGNGATE_VERSIONS
(imported on the fly at engine start) answers with `reward.source == "value_head"`, streamed and not (the
import's values equal TRL's own: tests/test_version_import.py); the critic's policy (critic trunk != policy trunk: no value head) answers with
`reward.source == "audit_model"`.
Gateway B (no audit model): a policy with no value head answers with `reward: null`; `aligngate versions import`
of the TRL checkpoint, then `aligngate versions register` on the running gateway: `reward.source == "value_head"`;
registering an OpenRLHF critic directly is refused with the command that imports it.

The checkpoints are the embedded default's stable model rewritten in TRL's layout (v_head.summary.* inside
model.safetensors), so no new model is trained; the critic is a random trunk of the same shape.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file, save_file

from kernels.layout import VALUE_HEAD_FILE
from training.import_checkpoint import import_checkpoint

# two gateways (four engines) start in module fixtures; on a loaded 2-core machine that alone neared the default 600 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
BIN = Path(sys.executable).parent / "aligngate"
PROMPT = [{"role": "user", "content": "add 12 30"}]


def _tokenizer_and_config(src: Path, dst: Path, keep_head_config: bool = False) -> None:
    dst.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (src / f).is_file():
            shutil.copy2(src / f, dst / f)
    cfg = json.loads((src / "config.json").read_text())
    if not keep_head_config:
        cfg.pop("aligngate", None)  # a TRL / plain checkpoint knows nothing of aligngate
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))


@pytest.fixture(scope="module")
def checkpoints(cache_dir, session_dir) -> dict[str, Path]:
    stable = cache_dir / "models" / "default-stable"
    root = session_dir / "import-serve"
    weights = load_file(str(stable / "model.safetensors"))
    head = load_file(str(stable / VALUE_HEAD_FILE))
    trl = root / "trl"  # what AutoModelForCausalLMWithValueHead.save_pretrained writes
    _tokenizer_and_config(stable, trl)
    save_file({**weights, **head}, str(trl / "model.safetensors"), metadata={"format": "pt"})
    plain = root / "plain"  # a policy with no value head at all
    _tokenizer_and_config(stable, plain)
    save_file(weights, str(plain / "model.safetensors"), metadata={"format": "pt"})
    critic = root / "critic"  # OpenRLHF: its own (here random) trunk, value_head.weight, normalize_reward
    _tokenizer_and_config(stable, critic)
    cfg = json.loads((critic / "config.json").read_text())
    torch.manual_seed(11)
    sd = {k: torch.randn_like(v) * 0.05 if v.dim() > 1 else torch.ones_like(v)
          for k, v in weights.items() if k.startswith("model.")}
    sd["value_head.weight"] = torch.randn(1, cfg["hidden_size"]) * 0.2
    save_file(sd, str(critic / "model.safetensors"), metadata={"format": "pt"})
    cfg.update(architectures=["CriticModel"], value_head_prefix="value_head", normalize_reward=True, mean=0.1, std=1.5)
    (critic / "config.json").write_text(json.dumps(cfg, indent=2))
    critic_version = import_checkpoint(critic, root / "critic-version", policy=plain)
    assert critic_version.audit_model is not None and not critic_version.value_head
    return {"stable": stable, "trl": trl, "plain": plain, "critic": critic, "critic_version": critic_version.out}


def _ask(url: str, model: str, stream: bool = False) -> dict:
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    kw = dict(model=model, messages=PROMPT, max_tokens=6, temperature=0.0)
    if not stream:
        r = client.chat.completions.create(**kw)
        assert r.choices[0].message.content is not None
        return r.model_extra["aligngate"]
    extra = None
    for chunk in client.chat.completions.create(**kw, stream=True):
        if chunk.model_extra and "aligngate" in chunk.model_extra and "reward" in chunk.model_extra["aligngate"]:
            extra = chunk.model_extra["aligngate"]
    assert extra is not None, "no reward chunk in the stream"
    return extra


@pytest.fixture(scope="module")
def gateway_a(start_gateway, checkpoints, session_dir) -> str:
    versions = [{"name": "trl-raw", "model": str(checkpoints["trl"]), "weight": 1},
                {"name": "critic-policy", "model": str(checkpoints["critic_version"]), "weight": 0}]
    return start_gateway("gateway-import-a", env={
        "ALIGNGATE_VERSIONS": json.dumps(versions), "ALIGNGATE_CACHE_DIR": str(session_dir / "import-cache-a"),
        "ALIGNGATE_AUDIT_MODEL_DIR": str(checkpoints["critic_version"] / "audit_model")})


@pytest.fixture(scope="module")
def gateway_b(start_gateway, checkpoints, session_dir) -> tuple[str, Path]:
    cache = session_dir / "import-cache-b"
    versions = [{"name": "plain", "model": str(checkpoints["plain"]), "weight": 1}]
    url = start_gateway("gateway-import-b", env={"ALIGNGATE_VERSIONS": json.dumps(versions),
                                                 "ALIGNGATE_CACHE_DIR": str(cache)})
    return url, cache


def test_trl_checkpoint_in_the_config_answers_with_its_in_pass_value(gateway_a, checkpoints, session_dir):
    got = _ask(gateway_a, "trl-raw")
    assert got["version"] == "trl-raw" and got["reward"]["source"] == "value_head"
    streamed = _ask(gateway_a, "trl-raw", stream=True)
    assert streamed["reward"]["source"] == "value_head"
    assert streamed["reward"]["score"] == pytest.approx(got["reward"]["score"], abs=1e-4)  # greedy: same answer
    imported = list((session_dir / "import-cache-a" / "imported").iterdir())
    assert len(imported) == 1 and (imported[0] / VALUE_HEAD_FILE).is_file()
    man = json.loads((imported[0] / "manifest.json").read_text())
    assert man["imported_from"] == {**man["imported_from"], "layout": "trl", "path": str(checkpoints["trl"])}


def test_a_policy_whose_critic_has_its_own_trunk_is_scored_by_the_audit_model(gateway_a):
    got = _ask(gateway_a, "critic-policy")
    r = got["reward"]
    assert r is not None and r["source"] == "audit_model" and r["model_version"] == "critic-version-critic"
    assert 0.0 < r["score"] < 1.0


def _cli(*args: str, cache: Path, url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALIGNGATE_CACHE_DIR": str(cache), "ALIGNGATE_URL": url}
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=300)


def test_no_value_head_means_a_null_reward_then_import_and_register(gateway_b, checkpoints, session_dir):
    url, cache = gateway_b
    got = _ask(url, "plain")
    assert got["version"] == "plain" and got["reward"] is None  # no value head, no audit model: null, not 0

    out = session_dir / "import-serve" / "trl-version"
    r = _cli("versions", "import", str(checkpoints["trl"]), "--out", str(out), cache=cache, url=url)
    assert r.returncode == 0, r.stderr
    assert "layout trl" in r.stdout and json.loads((out / "manifest.json").read_text())["gate"]["verdict"] == "IMPORTED"
    r = _cli("versions", "register", "imported", "--model", str(out), cache=cache, url=url)
    assert r.returncode == 0, r.stderr
    r = _cli("versions", "register", "critic", "--model", str(checkpoints["critic"]), cache=cache, url=url)
    assert r.returncode != 0 and "--policy" in r.stderr and "(400)" in r.stderr

    key = (cache / "admin_key").read_text().strip()
    deadline = time.time() + 480  # room for a start past the tests' 120 s deadline and the gateway's retry
    while True:
        vs = httpx.get(url + "/admin/versions", headers={"Authorization": f"Bearer {key}"}).json()["versions"]
        v = next(v for v in vs if v["name"] == "imported")
        # a start past its deadline is killed and retried by the gateway (start_retry_in_s); any other error is final
        assert v["error"] is None or "start_retry_in_s" in v, v["error"]
        if v["ready"]:
            break
        assert time.time() < deadline, "the registered version never became ready"
        time.sleep(1)
    assert v["gate"]["verdict"] == "IMPORTED"
    got = _ask(url, "imported")
    assert got["version"] == "imported" and got["reward"]["source"] == "value_head"
