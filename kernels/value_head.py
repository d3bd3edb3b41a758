"""The reference value head: the spec every fused path is checked against.

Semantics follow TRL's `ValueHead`: a `Linear(hidden, 1)` with bias applied to the post-norm last hidden state
(the same tensor the LM head sees), dropout off at serving. OpenRLHF's layout (`score.weight`, no bias) loads
into the same module with a zero bias.

On disk a value head is `value_head/value_head.safetensors` inside the policy's HF directory — in a subdirectory
because vLLM loads every top-level `*.safetensors` as model weights, and a plain `vllm serve` of an exported
version must keep working — with the TRL keys
`v_head.summary.weight` [1, H] and `v_head.summary.bias` [1]; the OpenRLHF key `score.weight` [1, H] is
accepted on load. Heads saved inside the model's own weights (TRL's `save_pretrained`, OpenRLHF's critic) load
too (`kernels.layout.find_value_head`). The model's `config.json` names it under `"aligngate": {"value_head": ...}` (see
`VALUE_HEAD_FILE` and `value_head_config`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kernels.layout import (  # noqa: F401  (this module's API too)
    OPENRLHF_CRITIC_WEIGHT,
    OPENRLHF_WEIGHT,
    TRL_BIAS,
    TRL_WEIGHT,
    VALUE_HEAD_FILE,
    ValueHeadLocation,
    find_value_head,
    safetensors_keys,
)


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
    """Load a value head from a model directory (any layout `kernels.layout.find_value_head` knows: aligngate's
    `value_head/` file, TRL's `v_head.summary.*` or OpenRLHF's `value_head.weight` / `score.weight` inside the
    model's own weights — only the head's tensors are read) or from a single safetensors file."""
    from safetensors import safe_open

    p = Path(model_dir)
    if p.is_file():
        keys = set(safetensors_keys(p))
        loc = _file_location(p, keys)
    else:
        loc = find_value_head(p)
        if loc is None:
            raise KeyError(f"no value head in {p}: expected {VALUE_HEAD_FILE} or {TRL_WEIGHT!r} / "
                           f"{OPENRLHF_CRITIC_WEIGHT!r} / {OPENRLHF_WEIGHT!r} among the model's weights")
    with safe_open(str(loc.file), framework="pt") as f:
        w = f.get_tensor(loc.weight_key)
        b = f.get_tensor(loc.bias_key) if loc.bias_key else None
    if w.numel() != w.shape[-1]:
        raise ValueError(f"{loc.file}: {loc.weight_key} has shape {list(w.shape)}; a value head is [1, hidden]")
    head = ValueHead(w.shape[-1], bias=True)
    with torch.no_grad():
        head.summary.weight.copy_(w.reshape(1, -1).float())
        head.summary.bias.copy_(b.reshape(1).float() if b is not None else torch.zeros(1))
    return head


def _file_location(p: Path, keys: set[str]) -> ValueHeadLocation:
    for key, bias in ((TRL_WEIGHT, TRL_BIAS), (OPENRLHF_CRITIC_WEIGHT, None), (OPENRLHF_WEIGHT, None)):
        if key in keys:
            return ValueHeadLocation(p, "file", key, bias if bias in keys else None)
    raise KeyError(f"no value head in {p}: expected {TRL_WEIGHT!r}, {OPENRLHF_CRITIC_WEIGHT!r} or "
                   f"{OPENRLHF_WEIGHT!r}, got {sorted(keys)}")


def has_value_head(model_dir: str | Path) -> bool:
    return find_value_head(model_dir) is not None
