"""Configuration sources, the CLI's --help, and the embedded default models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve.config import Settings, VersionSpec

BIN = Path(sys.executable).parent


def test_env_and_yaml(tmp_path, monkeypatch):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("port: 9001\npublic_model: mypolicy\nversions:\n  - {name: v1, model: /m/v1, weight: 1}\n"
                   "limits: {max_n: 4}\n")
    monkeypatch.setenv("ALIGNGATE_CONFIG", str(cfg))
    monkeypatch.setenv("ALIGNGATE_PORT", "9002")  # env wins over the file
    s = Settings()
    assert s.port == 9002 and s.public_model == "mypolicy" and s.limits.max_n == 4
    assert s.versions[0].name == "v1" and s.versions[0].weight == 1
    monkeypatch.setenv("ALIGNGATE_VERSIONS", json.dumps([{"name": "r", "url": "http://h:1"}]))
    assert Settings().versions[0].url == "http://h:1"


def test_bad_config_is_refused():
    with pytest.raises(ValidationError, match="exactly one"):
        VersionSpec(name="x")
    with pytest.raises(ValidationError, match="unique"):
        Settings(versions=[VersionSpec(name="a", model="/a"), VersionSpec(name="a", model="/b")])


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["build-default", "--help"]])
def test_cli_help(args):
    out = subprocess.run([str(BIN / "aligngate"), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: aligngate" in out.stdout


def test_default_models_are_loadable_hf_dirs(cache_dir):
    from transformers import AutoConfig, AutoTokenizer

    for name in ("default-stable", "default-canary"):
        d = cache_dir / "models" / name
        cfg = AutoConfig.from_pretrained(d)
        assert cfg.model_type == "llama" and cfg.hidden_size // cfg.num_attention_heads == 64
        tok = AutoTokenizer.from_pretrained(d)
        text = tok.apply_chat_template([{"role": "user", "content": "héllo"}], add_generation_prompt=True,
                                       tokenize=False)
        assert text.endswith("<|assistant|>")
        ids = tok.encode("héllo ✓", add_special_tokens=False)
        assert tok.decode(ids) == "héllo ✓"  # byte-level: any text round-trips
