"""The spec for the fused policy heads, in plain torch: every fused path is checked against this module.

What the heads compute from the last layer's output `h` [T, H] (pre-final-norm; e.g. `h + residual` in vLLM):

    x       = h * rsqrt(mean(h**2) + eps) * g          RMSNorm, computed in fp32 (as HF/vLLM Llama do)
    logits  = x @ W.T                                  [T, V], input dtype (or fp32 when asked: vLLM `head_dtype`)
    value   = x @ w.T + b                              [T], always fp32, from the fp32 `x` (TRL `ValueHead`)
    entropy = -sum(softmax(logits) * log_softmax(logits))   [T], fp32, of the logits as returned

Two deliberate choices, so nobody has to guess:
- `x` is kept in fp32 for the value and cast once to the logits dtype for the LM head. HF rounds `x` to the model
  dtype before multiplying by `g`; the difference is one rounding of the input dtype and only shows in fp16/bf16.
- the value never goes through a low-precision GEMM: a bf16 value is ~0.4% off (so the head and the value stay fp32).

`norm_weight=None` means `h` is already normalised (the model applied its final norm itself).

The reserved-slot encoding (serve/vllm_ext/value_slots.py) carries the value through vLLM's sampler, which has
no public way to return an extra scalar: column A gets `value - 1000`, column B gets `-1000`. Both have zero
probability (never sampled; they are also masked with `logit_bias`), and because log-probabilities share one
normaliser, `logprob[A] - logprob[B] == value` exactly. See `encode_value_slots` / `decode_value_slots`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

SLOT_OFFSET = 1000.0
"""Distance below which the slot columns sit. |value| must stay well below it (rewards are O(1..10))."""


class HeadsOutput(NamedTuple):
    """What every heads implementation returns."""

    logits: torch.Tensor  # [T, V] in the requested dtype (may be a view with row stride > V)
    value: torch.Tensor  # [T] fp32
    entropy: torch.Tensor  # [T] fp32


def rms_norm_fp32(hidden: torch.Tensor, norm_weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Llama's RMSNorm, kept in fp32: x = h * rsqrt(mean(h^2) + eps) * g."""
    h = hidden.float()
    if norm_weight is None:
        return h
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.float()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-row entropy of softmax(logits) in fp32; masked (-inf) columns contribute 0, not NaN."""
    z = logits.float()
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros((), dtype=z.dtype)).sum(-1)


def heads_reference(
    hidden: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    lm_head_weight: torch.Tensor,
    value_weight: torch.Tensor,
    value_bias: torch.Tensor | None = None,
    *,
    logits_dtype: torch.dtype | None = None,
    slots: tuple[int, int] | None = None,
    slot_offset: float = SLOT_OFFSET,
) -> HeadsOutput:
    """The spec. `hidden` [T, H], `lm_head_weight` [V, H], `value_weight` [1, H] or [H], `value_bias` [1] or None.

    `logits_dtype` defaults to `hidden.dtype`; pass `torch.float32` for an fp32 head. With `slots=(A, B)` the
    value is also written into the logits (see `encode_value_slots`) before the entropy is taken, so the entropy
    is that of the distribution the sampler actually sees.
    """
    out_dtype = logits_dtype or hidden.dtype
    x = rms_norm_fp32(hidden, norm_weight, eps)
    if out_dtype == torch.float32:
        logits = x @ lm_head_weight.float().T
    else:
        logits = (x.to(out_dtype) @ lm_head_weight.to(out_dtype).T).to(out_dtype)
    value = x @ value_weight.float().reshape(-1)
    if value_bias is not None:
        value = value + value_bias.float().reshape(())
    if slots is not None:
        logits = encode_value_slots(logits, value, *slots, offset=slot_offset)
    return HeadsOutput(logits, value, entropy_from_logits(logits))


# --- the reserved-slot encoding ------------------------------------------------------------------------------


def check_slots(vocab_size: int, slot_a: int, slot_b: int) -> None:
    if slot_a == slot_b or not (0 <= slot_a < vocab_size and 0 <= slot_b < vocab_size):
        raise ValueError(f"reserved slots must be two distinct ids in [0, {vocab_size}); got {slot_a}, {slot_b}")


def encode_value_slots(
    logits: torch.Tensor,
    value: torch.Tensor,
    slot_a: int,
    slot_b: int,
    *,
    offset: float = SLOT_OFFSET,
    inplace: bool = False,
    strict: bool = True,
) -> torch.Tensor:
    """Write `value - offset` into column A and `-offset` into column B of `logits` [T, V].

    fp32 logits only by default (`strict`): near 1000 an fp16 logit has a resolution of 0.5 and a bf16 one of 8,
    which would quantise the value far beyond the 1e-3 budget. Run the head in fp32 (vLLM `head_dtype`).
    """
    check_slots(logits.shape[-1], slot_a, slot_b)
    if strict and logits.dtype != torch.float32:
        raise TypeError(f"slot encoding needs fp32 logits (got {logits.dtype}): the value would be quantised")
    out = logits if inplace else logits.clone()
    out[..., slot_a] = (value.float() - offset).to(out.dtype)
    out[..., slot_b] = -offset
    return out


def decode_value_slots(logprobs_a: torch.Tensor | float, logprobs_b: torch.Tensor | float) -> torch.Tensor | float:
    """value = logprob[A] - logprob[B]: the softmax normaliser cancels, so this is exact up to fp32 rounding."""
    return logprobs_a - logprobs_b


def decode_value_slots_from_logprobs(logprobs: torch.Tensor, slot_a: int, slot_b: int) -> torch.Tensor:
    """Same as `decode_value_slots`, reading columns A and B of a [T, V] log-probability tensor."""
    return logprobs[..., slot_a].float() - logprobs[..., slot_b].float()
