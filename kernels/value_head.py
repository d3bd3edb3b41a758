"""The reference value head: the spec every fused path is checked against.

Semantics follow TRL's `ValueHead`: a `Linear(hidden, 1)` with bias applied to the post-norm last hidden state
(the same tensor the LM head sees), dropout off at serving. OpenRLHF's layout (`score.weight`, no bias) loads
into the same module with a zero bias.

On disk a value head is `value_head/value_head.safetensors` inside the policy's HF directory — in a subdirectory
because vLLM loads every top-level `*.safetensors` as model weights, and a plain `vllm serve` of an exported
version must keep working — with the TRL keys
`v_head.summary.weight` [1, H] and `v_head.summary.bias` [1]; the OpenRLHF key `score.weight` [1, H] is
accepted on load. The model's `config.json` names it under `"aligngate": {"value_head": ...}` (see
`VALUE_HEAD_FILE` and `value_head_config`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kernels.layout import OPENRLHF_WEIGHT, TRL_BIAS, TRL_WEIGHT, VALUE_HEAD_FILE  # noqa: F401  (this module's API too)


class ValueHead(nn.Module):
    """value = W · h + b, in fp32 whatever the dtype of `h` (a bf16 value is ~0.4% off)."""

    def __init__(self, hidden_size: int, bias: bool = True):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1, bias=bias, dtype=torch.float32)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[..., H] post-norm hidden states -> [...] fp32 values."""
        return self.summary(hidden_states.float()).squeeze(-1)

    # --- persistence -------------------------------------------------------------------------------------
    def state_dict_trl(self) -> dict[str, torch.Tensor]:
        w = self.summary.weight.detach().float().contiguous()
        b = self.summary.bias.detach().float() if self.summary.bias is not None else torch.zeros(1)
        return {TRL_WEIGHT: w, TRL_BIAS: b.contiguous()}


def save_value_head(head: ValueHead, model_dir: str | Path) -> Path:
    """Write the head in TRL layout and register it in the model's config.json."""
    from safetensors.torch import save_file

    d = Path(model_dir)
    path = d / VALUE_HEAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(head.state_dict_trl(), str(path))
    cfg_path = d / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        cfg.setdefault("aligngate", {})["value_head"] = {"file": VALUE_HEAD_FILE, "layout": "trl"}
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return path


def load_value_head(model_dir: str | Path) -> ValueHead:
    """Load a TRL (`v_head.summary.*`) or OpenRLHF (`score.weight`) head from a model directory or file."""
    from safetensors.torch import load_file

    p = Path(model_dir)
    sd = load_file(str(p if p.is_file() else p / VALUE_HEAD_FILE))
    if TRL_WEIGHT in sd:
        w, b = sd[TRL_WEIGHT], sd.get(TRL_BIAS)
    elif OPENRLHF_WEIGHT in sd:
        w, b = sd[OPENRLHF_WEIGHT], None
    else:
        raise KeyError(f"no value head in {p}: expected {TRL_WEIGHT!r} or {OPENRLHF_WEIGHT!r}, got {sorted(sd)}")
    head = ValueHead(w.shape[-1], bias=True)
    with torch.no_grad():
        head.summary.weight.copy_(w.reshape(1, -1).float())
        head.summary.bias.copy_(b.reshape(1).float() if b is not None else torch.zeros(1))
    return head


def has_value_head(model_dir: str | Path) -> bool:
    return (Path(model_dir) / VALUE_HEAD_FILE).exists()
