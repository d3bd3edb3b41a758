"""The fused heads in torch: the CPU path (and the cuBLAS fallback on GPUs where Triton is not a good fit).

Same math as `kernels.reference`, arranged to touch each big tensor as few times as possible and to allocate
nothing of size [T, V] beyond the logits themselves:

1. RMSNorm once, in fp32 (`F.rms_norm`, one kernel). An unfused stack normalises for the LM head and then hands
   the post-norm hidden states to a separate value-head module that reads them again.
2. The LM head GEMM in the head dtype; the value as an fp32 GEMV over the already-normalised rows (T*H flops,
   noise next to the T*V*H of the LM head; a bf16 value would be ~0.4% off). With `HeadWeights.prepare(...,
   concat=True)` the value instead comes out of the same GEMM as column V of `[W; w]`; on CPU that measured
   slower (see `kernels.weights`), so it is an option, not the default.
3. Entropy from the logits in row chunks that stay in cache, with two reused scratch buffers and a single `exp`
   per element: H = log S - sum(e * d) / S with d = z - max(z), e = exp(d), S = sum(e). The textbook
   `-(softmax * log_softmax).sum()` allocates three fresh [T, V] temporaries (page faults on every call) and runs
   `exp` twice: at T=128, V=32000 it measured ~4x slower than this on one core here.

Why fusing matters at all: the arithmetic of a value head is tiny. The saving that counts is structural — the
value comes out of the *policy's own* forward pass instead of a second model forward (serve/vllm_ext/value_slots.py);
this module makes sure the heads themselves then add (almost) nothing on top of the LM head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.reference import SLOT_OFFSET, HeadsOutput, check_slots
from kernels.weights import HeadWeights

SMALL_LOGITS = 1 << 16
"""Below this many logits, one unchunked pass: op-launch overhead dominates, not memory traffic."""
CHUNK_ELEMENTS = 1 << 18
"""Entropy scratch per chunk (1 MiB fp32 per buffer, two buffers): reused across chunks, never [T, V]-sized."""


def entropy_fused(logits: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Per-row entropy of softmax(logits) [T, V] -> [T] fp32, with bounded scratch memory.

    For finite logits, which is what the heads' GEMM produces (the reserved slots are -1000, not -inf). Masked
    (-inf) logits would give 0 * -inf = NaN here; use `kernels.reference.entropy_from_logits` for those. No
    finiteness check on purpose: it would cost a device sync on the GPU fallback path.
    """
    T, V = logits.shape
    if T * V <= SMALL_LOGITS:
        d = torch.log_softmax(logits, -1, dtype=torch.float32)
        out = torch.exp(d).mul_(d).sum(-1).neg_()
    else:
        rows = max(1, min(T, chunk_elements // V))
        out = torch.empty(T, dtype=torch.float32, device=logits.device)
        d_buf = torch.empty(rows, V, dtype=torch.float32, device=logits.device)
        e_buf = torch.empty_like(d_buf)
        for start in range(0, T, rows):
            z = logits[start : start + rows]
            n = z.shape[0]
            d, e = d_buf[:n], e_buf[:n]
            torch.sub(z, z.amax(-1, keepdim=True).float(), out=d)  # d <= 0, fp32 even for fp16 logits
            torch.exp(d, out=e)
            s = e.sum(-1)
            t = e.mul_(d).sum(-1).div_(s)
            out[start : start + n] = s.log_().sub_(t)
    return out


def fused_heads_torch(
    hidden: torch.Tensor,
    weights: HeadWeights,
    *,
    logits_dtype: torch.dtype | None = None,
    slots: tuple[int, int] | None = None,
    slot_offset: float = SLOT_OFFSET,
) -> HeadsOutput:
    """hidden [T, H] pre-norm -> (logits [T, V], value [T] fp32, entropy [T] fp32). See `kernels.reference`.

    With `HeadWeights.prepare(..., concat=True)` the logits are a view of the `[T, V+1]` GEMM output (row stride
    V+1), like vLLM's own slice of a padded vocabulary.
    """
    out_dtype = logits_dtype or hidden.dtype
    H = hidden.shape[-1]
    V = weights.vocab_size
    if weights.norm_weight is not None:
        g = weights.norm_weight if weights.norm_weight.dtype == torch.float32 else weights.norm_weight.float()
        x = F.rms_norm(hidden.float(), (H,), g, weights.eps)
    else:
        x = hidden.float()

    if out_dtype == torch.float32 and weights.cat is not None:
        y = torch.mm(x, weights.cat.t())  # [T, V+1]: logits and the value column from one GEMM
        logits, value = y[:, :V], y[:, V] + weights.value_bias
    else:
        W = weights.lm_head
        if out_dtype == torch.float32:
            # an fp32 head over a low-precision W converts W on every call: prepare fp32 weights instead
            logits = torch.mm(x, W.t() if W.dtype == torch.float32 else W.float().t())
        else:
            logits = torch.mm(x.to(out_dtype), W.t() if W.dtype == out_dtype else W.to(out_dtype).t())
        value = torch.mv(x, weights.value_weight).add_(weights.value_bias)

    if slots is not None:
        check_slots(V, *slots)
        if logits.dtype != torch.float32:
            raise TypeError(f"slot encoding needs fp32 logits (got {logits.dtype}): the value would be quantised")
        logits[:, slots[0]] = value - slot_offset
        logits[:, slots[1]] = -slot_offset
    return HeadsOutput(logits, value, entropy_fused(logits))
