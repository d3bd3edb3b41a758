"""Triton path for the fused heads (CUDA): final RMSNorm -> [LM head | value head] + per-row entropy.

The kernels live in `kernels._triton_kernels` and are imported on first call, so this module imports on any
machine (no GPU, no working Triton backend). On CPU the kernels only run under `TRITON_INTERPRET=1`, which must be
set before Triton is imported (correctness checks only: the interpreter is slow). The value and the entropy are fp32 whatever
the logits dtype; the GEMM runs in the logits dtype with an fp32 accumulator (`input_precision="ieee"` for fp32
heads, so no silent TF32).

Unlike Liger's fused linear cross-entropy (cuBLAS GEMM + per-row Triton), the GEMM is in Triton here because the
norm is folded into its operand load: the normalised rows never round-trip through global memory. On GPUs where
Triton's matmul is weak (compute capability < 8.0, e.g. T4: not officially supported, may not use tensor cores)
the dispatcher prefers the torch (cuBLAS) path; measure both there.
"""

from __future__ import annotations

import torch

from kernels.reference import SLOT_OFFSET, HeadsOutput, check_slots
from kernels.weights import HeadWeights


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def default_blocks(T: int, H: int, V: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_V, BLOCK_K). tl.dot needs every block >= 16. Untuned beyond that: tune on a real GPU."""
    block_t = min(64, max(16, _next_pow2(T)))
    return block_t, 128, 64 if H >= 64 else max(16, _next_pow2(H))


def fused_heads_triton(
    hidden: torch.Tensor,
    weights: HeadWeights,
    *,
    logits_dtype: torch.dtype | None = None,
    slots: tuple[int, int] | None = None,
    slot_offset: float = SLOT_OFFSET,
    blocks: tuple[int, int, int] | None = None,
    input_precision: str = "ieee",
    num_warps: int = 4,
) -> HeadsOutput:
    """hidden [T, H] pre-norm -> (logits [T, V], value [T] fp32, entropy [T] fp32). See `kernels.reference`."""
    from kernels import _triton_kernels as K  # lazy: see module docstring

    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [T, H], got {tuple(hidden.shape)}")
    T, H = hidden.shape
    V = weights.vocab_size
    if weights.hidden_size != H:
        raise ValueError(f"hidden size {H} != LM head's {weights.hidden_size}")
    out_dtype = logits_dtype or hidden.dtype
    if slots is not None:
        check_slots(V, *slots)
        if out_dtype != torch.float32:
            raise TypeError(f"slot encoding needs fp32 logits (got {out_dtype}): the value would be quantised")
    dev = hidden.device
    logits = torch.empty(T, V, dtype=out_dtype, device=dev)
    value = torch.empty(T, dtype=torch.float32, device=dev)
    entropy = torch.empty(T, dtype=torch.float32, device=dev)
    if T == 0:
        return HeadsOutput(logits, value, entropy)

    h = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    W = weights.lm_head if weights.lm_head.stride(-1) == 1 else weights.lm_head.contiguous()
    block_t, block_v, block_k = blocks or default_blocks(T, H, V)
    nv = -(-V // block_v)
    partials = torch.empty(3, T, nv, dtype=torch.float32, device=dev)
    g = weights.norm_weight if weights.norm_weight is not None else weights.value_weight  # dummy when unused
    a, b = slots if slots is not None else (-1, -1)

    K._heads_fwd_kernel[(-(-T // block_t), nv)](
        h, g, W, weights.value_weight, weights.value_bias, logits, value, partials,
        T, H, V, nv, h.stride(0), W.stride(0), logits.stride(0),
        float(weights.eps), a, b, float(slot_offset),
        HAS_NORM=weights.norm_weight is not None,
        HAS_SLOTS=slots is not None,
        DOT_FP32=out_dtype == torch.float32,
        DOT_PRECISION=input_precision,
        BLOCK_T=block_t, BLOCK_V=block_v, BLOCK_K=block_k,
        num_warps=num_warps,
    )  # fmt: skip
    K._entropy_combine_kernel[(T,)](partials, entropy, T, nv, BLOCK_NV=_next_pow2(nv))
    return HeadsOutput(logits, value, entropy)
