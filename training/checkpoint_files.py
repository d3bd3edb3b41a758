"""A Hugging Face checkpoint directory's weight files: find them, read them one file at a time, write them back.

Covers what `PreTrainedModel.save_pretrained` writes (and so what TRL's and OpenRLHF's savers write through it):
`model.safetensors`, or shards named in `model.safetensors.index.json`; the older `pytorch_model.bin`, or shards
named in `pytorch_model.bin.index.json`. One file at a time, so a multi-GB sharded checkpoint never has to fit in
memory twice. `.bin` files are read with `torch.load(weights_only=True)` (no pickled code runs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

SAFE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
# written by trainers next to the weights; not part of a model
TRAINING_STATE = ("optimizer", "scheduler", "rng_state", "training_args", "trainer_state", "scaler")


@dataclass(frozen=True)
class WeightFiles:
    files: tuple[str, ...]  # in the directory, in order
    index: str | None  # the shard index file, when sharded

    @property
    def is_bin(self) -> bool:
        return self.files[0].endswith(".bin")


def find_weights(d: str | Path) -> WeightFiles:
    d = Path(d)
    for single, index in ((SAFE, SAFE_INDEX), (BIN, BIN_INDEX)):
        if (d / single).is_file():
            return WeightFiles((single,), None)
        if (d / index).is_file():
            shards = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{d / index} names shards that are not there: {missing}")
            return WeightFiles(tuple(shards), index)
    raise FileNotFoundError(f"{d}: no model weights ({SAFE}, {SAFE_INDEX}, {BIN} or {BIN_INDEX})")


def load_file(path: str | Path) -> dict[str, torch.Tensor]:
    p = str(path)
    if p.endswith(".safetensors"):
        from safetensors.torch import load_file as load_safe

        return load_safe(p)
    return torch.load(p, map_location="cpu", weights_only=True)


def iter_files(d: str | Path, wf: WeightFiles | None = None) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    d = Path(d)
    for f in (wf or find_weights(d)).files:
        yield f, load_file(d / f)


def keys(d: str | Path) -> set[str]:
    """Every tensor name, without loading tensors where the format allows (safetensors headers, shard indexes)."""
    d = Path(d)
    wf = find_weights(d)
    if wf.index:
        return set(json.loads((d / wf.index).read_text())["weight_map"])
    if not wf.is_bin:
        from safetensors import safe_open

        with safe_open(str(d / wf.files[0]), "pt") as f:
            return set(f.keys())
    return set(load_file(d / wf.files[0]))


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """safetensors refuses tensors that share memory (tied embeddings loaded from a .bin): copy those."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    out = {}
    for k, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        t = t.contiguous()
        if key in seen:
            t = t.clone()
        seen.add(key)
        out[k] = t
    save_file(out, str(path), metadata={"format": "pt"})


def safetensors_name(name: str) -> str:
    """`pytorch_model-00001-of-00002.bin` -> `model-00001-of-00002.safetensors` (vLLM prefers safetensors)."""
    if name.endswith(".safetensors"):
        return name
    stem = name[: -len(".bin")]
    return (stem.replace("pytorch_model", "model", 1) if stem.startswith("pytorch_model") else stem) + ".safetensors"


def is_weight_or_state(name: str) -> bool:
    return (name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt")) or name in (SAFE_INDEX, BIN_INDEX)
            or name.startswith(TRAINING_STATE))
