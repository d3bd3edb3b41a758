"""`FusedHeads`: the thin module wrapper (Liger style) around `kernels.dispatch.fused_heads`.

Built from a model's own final norm, LM head and a `ValueHead`; it prepares the fused weights once. The prepared
weights are a snapshot: after an in-place weight update (e.g. a policy sync) call `refresh()`.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.dispatch import Backend, fused_heads
from kernels.reference import HeadsOutput
from kernels.value_head import ValueHead
from kernels.weights import HeadWeights


def _norm_parts(norm: nn.Module | None) -> tuple[torch.Tensor | None, float]:
    if norm is None:
        return None, 0.0
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None)  # HF Llama / vLLM, torch
    if eps is None:
        raise ValueError(f"cannot find eps on {type(norm).__name__}")
    return norm.weight, float(eps)


class FusedHeads(nn.Module):
    """forward(hidden [T, H] pre-norm) -> HeadsOutput(logits, value fp32, entropy fp32)."""

    def __init__(
        self,
        norm: nn.Module | None,
        lm_head: nn.Linear,
        value_head: ValueHead,
        *,
        logits_dtype: torch.dtype | None = None,
        backend: Backend = "auto",
    ):
        super().__init__()
        if getattr(lm_head, "bias", None) is not None:
            raise NotImplementedError("LM heads with a bias are not supported (Llama-family heads have none)")
        self._parts = (norm, lm_head, value_head)  # not registered: no second copy in state_dict
        self.logits_dtype = logits_dtype
        self.backend: Backend = backend
        self.refresh()

    def refresh(self) -> None:
        norm, lm_head, value_head = self._parts
        g, eps = _norm_parts(norm)
        W = lm_head.weight
        if self.logits_dtype == torch.float32 and W.dtype != torch.float32:
            W = W.float()  # fp32 head: convert once here, not on every call
        self.weights = HeadWeights.from_value_head(g, eps, W, value_head)

    def forward(self, hidden: torch.Tensor, slots: tuple[int, int] | None = None) -> HeadsOutput:
        shape = hidden.shape
        out = fused_heads(
            hidden.reshape(-1, shape[-1]), self.weights, logits_dtype=self.logits_dtype, slots=slots,
            backend=self.backend,
        )  # fmt: skip
        if len(shape) == 2:
            return out
        lead = shape[:-1]
        return HeadsOutput(out.logits.reshape(*lead, -1), out.value.reshape(lead), out.entropy.reshape(lead))
