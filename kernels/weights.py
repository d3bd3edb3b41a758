"""The weights the fused heads read, prepared once (not per call).

`HeadWeights` bundles the final RMSNorm weight, the LM head and the value head (fp32) so a serving step does no
weight conversion. It can also hold `[W; w]` — the LM head with the value head appended as row V — so that one GEMM
yields the value as column V. On this machine's CPU (benchmarks/bench_kernels.py, provider `fused_torch_cat`)
that was no win: ~6% slower at the small shapes, within noise at the large ones. N = V+1 is an unaligned GEMM
width, and the logits become a view with row stride V+1, on which torch's `log_softmax` (e.g. in a sampler) ran
7x slower than on dense rows at T=128, V=32000; the separate fp32 GEMV it saves costs ~1-2 us. So `prepare`
leaves it off unless asked (`concat=True`, fp32 heads only: a value from an fp16/bf16 GEMM column would miss the
1e-3 budget). It may pay on a GPU (one launch fewer): measure there. Building the concatenation copies W once; an integration that owns the
weight storage can allocate the `[V+1, H]` buffer itself and wrap it with `from_buffer` (no copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.value_head import ValueHead


@dataclass(frozen=True)
class HeadWeights:
    """Final RMSNorm + LM head + value head.

    lm_head:      [V, H] in the head dtype; a view of `cat[:V]` when `cat` is set.
    value_weight: [H] fp32.  value_bias: [] fp32 (zero for OpenRLHF's bias-free `score`).
    norm_weight:  [H] or None (hidden states arrive already normalised).
    cat:          optional [V+1, H] `[W; w]` (fp32 heads only); when set the torch path runs one GEMM against it.
    """

    lm_head: torch.Tensor
    value_weight: torch.Tensor
    value_bias: torch.Tensor
    norm_weight: torch.Tensor | None
    eps: float
    cat: torch.Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return self.lm_head.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.lm_head.shape[1]

    @staticmethod
    def _value_parts(value_weight: torch.Tensor, value_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        w = value_weight.detach().reshape(-1).float().contiguous()
        b = value_bias.detach().reshape(()).float() if value_bias is not None else torch.zeros((), device=w.device)
        return w, b.to(w.device)

    @classmethod
    def prepare(
        cls,
        norm_weight: torch.Tensor | None,
        eps: float,
        lm_head_weight: torch.Tensor,
        value_weight: torch.Tensor,
        value_bias: torch.Tensor | None = None,
        *,
        concat: bool = False,
    ) -> "HeadWeights":
        """Bundle loose weights (no copy of W unless `concat=True`, which builds `[W; w]` for an fp32 head)."""
        W = lm_head_weight.detach()
        w, b = cls._value_parts(value_weight, value_bias)
        g = norm_weight.detach() if norm_weight is not None else None
        if concat and W.dtype != torch.float32:
            raise ValueError("concat=True needs an fp32 LM head: the value column must come out of an fp32 GEMM")
        if not concat:
            return cls(W, w, b, g, float(eps))
        cat = torch.cat([W, w.to(W.dtype).reshape(1, -1)], dim=0).contiguous()
        return cls(cat[: W.shape[0]], w, b, g, float(eps), cat)

    @classmethod
    def from_buffer(
        cls,
        norm_weight: torch.Tensor | None,
        eps: float,
        cat: torch.Tensor,
        value_bias: torch.Tensor | None = None,
        value_weight: torch.Tensor | None = None,
    ) -> "HeadWeights":
        """Wrap a caller-owned `[V+1, H]` buffer (LM head rows, then the value row): zero copies of W.

        For an fp16/bf16 buffer pass the fp32 `value_weight` too; otherwise the value row's rounding is kept.
        """
        w, b = cls._value_parts(cat[-1] if value_weight is None else value_weight, value_bias)
        g = norm_weight.detach() if norm_weight is not None else None
        return cls(cat[:-1], w, b, g, float(eps), cat if cat.dtype == torch.float32 else None)

    @classmethod
    def from_value_head(
        cls, norm_weight: torch.Tensor | None, eps: float, lm_head_weight: torch.Tensor, head: ValueHead, **kw
    ) -> "HeadWeights":
        """From the reference `ValueHead` (TRL or OpenRLHF layout, see `kernels.value_head.load_value_head`)."""
        return cls.prepare(norm_weight, eps, lm_head_weight, head.summary.weight, head.summary.bias, **kw)
