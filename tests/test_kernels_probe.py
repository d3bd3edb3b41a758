"""Our `kernels` package must stay invisible to transformers' probe for the Hugging Face `kernels` package, cheap
to import, and the reference value head must load both the TRL and the OpenRLHF layouts.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import kernels
from kernels.value_head import (
    OPENRLHF_WEIGHT,
    TRL_BIAS,
    TRL_WEIGHT,
    VALUE_HEAD_FILE,
    ValueHead,
    has_value_head,
    load_value_head,
    save_value_head,
)
from kernels.weights import HeadWeights

REPO = Path(__file__).resolve().parents[1]
H = 96


def test_transformers_does_not_see_a_hub_kernels_package():
    from transformers.utils.import_utils import is_kernels_available

    spec = importlib.util.find_spec("kernels")
    assert spec is not None and Path(spec.origin).resolve() == (REPO / "kernels" / "__init__.py").resolve()
    assert not hasattr(kernels, "__version__")
    assert is_kernels_available() is False


def test_import_kernels_is_cheap():
    """No torch, no triton at `import kernels`; the public names resolve lazily."""
    code = (
        "import sys, kernels; assert 'torch' not in sys.modules and 'triton' not in sys.modules, 'eager import';"
        "kernels.fused_heads; assert 'triton' not in sys.modules, 'triton imported by the dispatcher'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def _random_head(seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, H, generator=gen), torch.randn(1, generator=gen)


def test_trl_layout_roundtrip(tmp_path):
    w, b = _random_head()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    head = ValueHead(H)
    with torch.no_grad():
        head.summary.weight.copy_(w)
        head.summary.bias.copy_(b)
    path = save_value_head(head, tmp_path)
    assert path == tmp_path / VALUE_HEAD_FILE and has_value_head(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["aligngate"]["value_head"]["layout"] == "trl"
    for where in (tmp_path, path):  # a model directory or the file itself
        loaded = load_value_head(where)
        assert torch.equal(loaded.summary.weight, w) and torch.equal(loaded.summary.bias, b)


def test_trl_keys_written_by_trl_load(tmp_path):
    """A file with TRL's own key names (`v_head.summary.*`, as AutoModelForCausalLMWithValueHead saved them)."""
    w, b = _random_head(1)
    (tmp_path / VALUE_HEAD_FILE).parent.mkdir()
    save_file({TRL_WEIGHT: w, TRL_BIAS: b}, str(tmp_path / VALUE_HEAD_FILE))
    head = load_value_head(tmp_path)
    x = torch.randn(4, H, dtype=torch.bfloat16)
    torch.testing.assert_close(head(x), (x.float() @ w.T).squeeze(-1) + b)
    assert head(x).dtype == torch.float32  # fp32 value whatever the input dtype


def test_openrlhf_layout_loads_with_zero_bias(tmp_path):
    w, _ = _random_head(2)
    (tmp_path / VALUE_HEAD_FILE).parent.mkdir()
    save_file({OPENRLHF_WEIGHT: w.half()}, str(tmp_path / VALUE_HEAD_FILE))  # bias-free `score`, model dtype
    head = load_value_head(tmp_path)
    assert head.summary.weight.dtype == torch.float32
    assert torch.equal(head.summary.weight, w.half().float()) and torch.equal(head.summary.bias, torch.zeros(1))
    # and it drives the fused heads like any other head
    g, W = torch.ones(H), torch.randn(50, H)
    weights = HeadWeights.from_value_head(g, 1e-5, W, head)
    assert torch.equal(weights.value_bias, torch.zeros(()))


def test_unknown_layout_is_refused(tmp_path):
    (tmp_path / VALUE_HEAD_FILE).parent.mkdir()
    save_file({"value.weight": torch.zeros(1, H)}, str(tmp_path / VALUE_HEAD_FILE))
    with pytest.raises(KeyError, match="no value head"):
        load_value_head(tmp_path)
    assert not has_value_head(tmp_path / "elsewhere")
