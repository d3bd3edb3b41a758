"""Where a value head lives inside a policy's HF directory: file and key names, and a header-only search.

The gateway reads these on its import chain (`serve.vllm_ext.value_slots`), and a replica whose versions are all remote
vLLM servers never needs torch; `kernels.value_head` (the module that loads and saves heads) uses the same names.

Layouts found by `find_value_head`:
    aligngate   `value_head/value_head.safetensors` (TRL keys; outside the top level, so a plain `vllm serve`
                of the directory never sees it)
    trl         `v_head.summary.weight` / `v_head.summary.bias` inside the model's own weights, as TRL's
                `AutoModelForCausalLMWithValueHead.save_pretrained` writes them
    openrlhf    a bias-free `value_head.weight` (OpenRLHF critic) or `score.weight` [1, H] inside the weights
                (`score.weight` not in a *ForSequenceClassification directory: there it is a classifier)
Only safetensors headers are read (8-byte length + JSON), never the tensors: cheap on the gateway's start-up.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

VALUE_HEAD_FILE = "value_head/value_head.safetensors"
TRL_WEIGHT, TRL_BIAS = "v_head.summary.weight", "v_head.summary.bias"
OPENRLHF_WEIGHT = "score.weight"
OPENRLHF_CRITIC_WEIGHT = "value_head.weight"
HEAD_PREFIXES = ("v_head.", "value_head.", "score.")  # keys a causal-LM loader must skip in a head-carrying dir


@dataclass(frozen=True)
class ValueHeadLocation:
    file: Path  # the safetensors file holding the head's tensors
    layout: str  # "aligngate" | "trl" | "openrlhf"
    weight_key: str
    bias_key: str | None


def safetensors_keys(path: str | Path) -> list[str]:
    """Tensor names in a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return [k for k in header if k != "__metadata__"]


def _in(keys, file: Path, layout: str, allow_score: bool) -> ValueHeadLocation | None:
    keys = set(keys)
    if TRL_WEIGHT in keys:
        return ValueHeadLocation(file, layout, TRL_WEIGHT, TRL_BIAS if TRL_BIAS in keys else None)
    if OPENRLHF_CRITIC_WEIGHT in keys:
        return ValueHeadLocation(file, "openrlhf" if layout == "trl" else layout, OPENRLHF_CRITIC_WEIGHT, None)
    if OPENRLHF_WEIGHT in keys and allow_score:
        return ValueHeadLocation(file, "openrlhf" if layout == "trl" else layout, OPENRLHF_WEIGHT, None)
    return None


def find_value_head(model_dir: str | Path) -> ValueHeadLocation | None:
    """Where the directory's value head is (any layout above), or None when it has none."""
    d = Path(model_dir)
    if (d / VALUE_HEAD_FILE).exists():
        return _in(safetensors_keys(d / VALUE_HEAD_FILE), d / VALUE_HEAD_FILE, "aligngate", True)
    archs: list[str] = []
    if (d / "config.json").exists():
        archs = json.loads((d / "config.json").read_text()).get("architectures") or []
    allow_score = not any("SequenceClassification" in a or "TokenClassification" in a for a in archs)
    index = d / "model.safetensors.index.json"
    if index.exists():  # sharded: the index names each tensor's file
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        for key in (TRL_WEIGHT, OPENRLHF_CRITIC_WEIGHT, OPENRLHF_WEIGHT):
            if key in weight_map:
                return _in([k for k, f in weight_map.items() if f == weight_map[key]], d / weight_map[key], "trl",
                           allow_score)
        return None
    for f in sorted(d.glob("*.safetensors")):
        found = _in(safetensors_keys(f), f, "trl", allow_score)
        if found is not None:
            return found
    return None
