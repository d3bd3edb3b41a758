"""`fused_heads`: the one entry point callers use; picks the implementation for the device.

    auto      CUDA with compute capability >= 8.0 and Triton importable -> "triton"; anything else -> "torch".
              (Triton is officially 8.0+; on a T4 its matmuls may skip tensor cores, so cuBLAS via torch wins
              there until measured otherwise.)
    triton    the Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1 for correctness checks).
    torch     `kernels.fused_torch` (CPU path; also the cuBLAS fallback on GPUs).
    reference `kernels.reference`, the spec (slow; for debugging a mismatch).

The environment variable `ALIGNGATE_HEADS_BACKEND` overrides "auto" (e.g. `torch` to switch Triton off in
production without a code change).
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch

from kernels.reference import SLOT_OFFSET, HeadsOutput, heads_reference
from kernels.weights import HeadWeights

Backend = Literal["auto", "triton", "torch", "reference"]
BACKEND_ENV = "ALIGNGATE_HEADS_BACKEND"
BACKENDS = ("auto", "triton", "torch", "reference")


@functools.cache
def _triton_usable(device_index: int) -> bool:
    if torch.cuda.get_device_capability(device_index) < (8, 0):
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(device: torch.device, backend: Backend = "auto") -> str:
    """The concrete backend for `device`: "triton", "torch" or "reference"."""
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto") or "auto"  # type: ignore[assignment]
    if backend not in BACKENDS:
        raise ValueError(f"unknown heads backend {backend!r}; choose from {BACKENDS}")
    if backend != "auto":
        return backend
    if device.type == "cuda" and _triton_usable(device.index if device.index is not None else 0):
        return "triton"
    return "torch"


def fused_heads(
    hidden: torch.Tensor,
    weights: HeadWeights,
    *,
    logits_dtype: torch.dtype | None = None,
    slots: tuple[int, int] | None = None,
    slot_offset: float = SLOT_OFFSET,
    backend: Backend = "auto",
) -> HeadsOutput:
    """hidden [T, H] (pre-final-norm) -> HeadsOutput(logits [T, V], value [T] fp32, entropy [T] fp32).

    `weights` comes from `HeadWeights.prepare(...)` (once, not per step). `logits_dtype=torch.float32` runs an fp32
    head; it is required with `slots=(A, B)`, which writes the value into the logits for vLLM's sampler to carry
    (`kernels.reference.encode_value_slots`).
    """
    which = resolve_backend(hidden.device, backend)
    if which == "triton":
        from kernels.triton_fused import fused_heads_triton

        return fused_heads_triton(hidden, weights, logits_dtype=logits_dtype, slots=slots, slot_offset=slot_offset)
    if which == "torch":
        from kernels.fused_torch import fused_heads_torch

        return fused_heads_torch(hidden, weights, logits_dtype=logits_dtype, slots=slots, slot_offset=slot_offset)
    return heads_reference(
        hidden, weights.norm_weight, weights.eps, weights.lm_head, weights.value_weight, weights.value_bias,
        logits_dtype=logits_dtype, slots=slots, slot_offset=slot_offset,
    )  # fmt: skip
