"""`<Arch>WithValueHead`: vLLM's own decoder class whose logits step also yields the value and the entropy.

One mechanism for every supported family: `with_value_head(base)` subclasses vLLM's class for the architecture
(`ValueHeadMixin` first in the MRO) and overrides three methods:

- `__init__` loads the value head (`kernels.value_head.load_value_head`: aligngate's `value_head/` file, or TRL's
  `v_head.summary.*` / OpenRLHF's `value_head.weight` inside the model's own weights) into fp32 buffers;
- `load_weights` drops the head's tensors from vLLM's weight stream (TRL saves them among the model's), so the
  family's own loader never sees a key it does not know;
- `compute_logits` writes the value and entropy into the reserved slots A/B/C of fp32 logits
  (`serve.vllm_ext.value_slots`) and stashes them for the shared-memory read-out. No second forward pass: the
  practitioner's +18 ms p99 on a T4 was that pass.

The logits are vLLM's own, bit for bit in what the sampler sees, except for the slots. Where the family's head is a
plain projection — no soft-capping (Gemma 2), no `logit_scale`, unquantised, one tensor-parallel rank, computed
in fp32 (an fp32 model or `head_dtype` float32) — one fused pass (`kernels.fused_heads`) gives logits, value and
entropy; that is the same matmul vLLM's `LogitsProcessor` runs, over the rows it keeps. Anywhere else (Gemma 2's
final soft-cap, scaled heads, tensor parallel, a bf16 head) vLLM's own `compute_logits` runs and the value and
entropy are computed beside it over the same hidden states. Tied embeddings need nothing special: vLLM's head
module is then the embedding, and the fused pass reads its weight.

Entropy: of the next-token distribution with slots A and B masked (as `kernels.reference` takes it); slot C's row
keeps the model's own logit in the sum (one row of the vocabulary).

Semantics: TRL's value head (Linear(H, 1) with bias on the post-norm last hidden state, dropout off); the value
returned with generated token i is computed from the hidden state of the position that predicted token i, i.e.
V(prompt + response[:i]).

Classes are built on first access (`serve.vllm_ext.vllm_model.Qwen2ForCausalLMWithValueHead`, module `__getattr__`), so
registering them (serve.vllm_ext.vllm_plugin) imports no vLLM model code.
"""

from __future__ import annotations

import importlib
import logging

import torch

from kernels.layout import HEAD_PREFIXES

log = logging.getLogger("vllm.aligngate.value_head")  # under "vllm": printed by vLLM's own log handler
SUFFIX = "WithValueHead"
# vLLM's class per HF architecture this module can wrap: module under vllm.model_executor.models
BASES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
}


def value_head_architecture(architecture: str) -> str | None:
    """The value-head class name registered for an HF architecture, or None when it is not supported."""
    return architecture + SUFFIX if architecture in BASES else None


class ValueHeadMixin:
    """Mixed in before one of vLLM's `*ForCausalLM` classes (see `with_value_head`)."""

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        from kernels.value_head import load_value_head
        from serve.vllm_ext import vllm_patches
        from serve.vllm_ext.value_slots import read_value_slots

        model_dir = vllm_config.model_config.model
        slots = read_value_slots(model_dir)
        if slots is None:
            raise ValueError(f"{model_dir}: {type(self).__name__} needs a value head (aligngate's value_head/ file, "
                             "or TRL's v_head.summary.* / OpenRLHF's value_head.weight among the weights)")
        self.slots = slots
        vllm_patches.apply_sampler()  # this runs in vLLM's worker process, where the sampler is
        vllm_patches.apply_value_channel(vllm_config.model_config.max_model_len)
        head = load_value_head(model_dir)
        # fp32 buffers, moved with the module; not part of the HF checkpoint the loader walks
        self.register_buffer("value_weight", head.summary.weight.detach().reshape(-1).float(), persistent=False)
        self.register_buffer("value_bias", head.summary.bias.detach().reshape(()).float(), persistent=False)
        self._weights = None
        self._path: str | None = None

    def load_weights(self, weights):
        # TRL's save_pretrained puts v_head.summary.* among the model's own tensors, an OpenRLHF critic its
        # value_head.weight: the head was read in __init__, the family's loader must not see them
        return super().load_weights((n, t) for n, t in weights if not n.startswith(HEAD_PREFIXES))

    def _head_module(self):
        head = getattr(self, "lm_head", None)
        return head if head is not None else self.model.embed_tokens  # Gemma 2 projects with the embedding

    def _fused_applies(self, hidden_states: torch.Tensor) -> bool:
        """True when one fp32 matmul over the head's first `org_vocab_size` rows is exactly vLLM's logits."""
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

        lp, head = self.logits_processor, self._head_module()
        weight = getattr(head, "weight", None)
        return (
            weight is not None
            and lp.scale == 1.0
            and lp.soft_cap is None
            and not lp.logits_as_input
            and getattr(head, "tp_size", 1) == 1
            and isinstance(getattr(head, "quant_method", None), UnquantizedEmbeddingMethod)
            and getattr(head, "bias", None) is None
            # vLLM's head: F.linear in head_dtype (or the hidden dtype): fp32 either way here
            and (lp.head_dtype or hidden_states.dtype) == torch.float32
            and weight.dtype == torch.float32
        )

    def _head_weights(self):
        from kernels.weights import HeadWeights

        w = self._head_module().weight
        if self._weights is None or self._weights.lm_head.data_ptr() != w.data_ptr():
            # vLLM pads the head's rows (to 64) and keeps the first org_vocab_size columns of the logits
            rows = w[: self.logits_processor.org_vocab_size]
            self._weights = HeadWeights.prepare(None, 0.0, rows, self.value_weight, self.value_bias)
        return self._weights

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        from kernels.dispatch import fused_heads
        from kernels.fused_torch import entropy_fused
        from serve.vllm_ext import vllm_patches
        from serve.vllm_ext.value_slots import OFFSET

        s = self.slots
        fused = self._fused_applies(hidden_states)
        if self._path is None:  # once per engine, so an operator can see which path a family takes
            self._path = "fused" if fused else "vllm_logits"
            log.info("%s: value head on the %s path", type(self).__name__, self._path)
        if fused:
            out = fused_heads(hidden_states, self._head_weights(), logits_dtype=torch.float32, slots=(s.a, s.b),
                              slot_offset=OFFSET)
            logits, value, entropy = out.logits, out.value, out.entropy
        else:  # soft-capped / scaled / parallel / low-precision heads: vLLM's own logits, the value beside them
            logits = super().compute_logits(hidden_states)
            if logits is None:  # a tensor-parallel rank that does not hold the gathered logits
                return None
            logits = logits.float()
            value = hidden_states.float() @ self.value_weight + self.value_bias
            logits[:, s.a] = value - OFFSET
            logits[:, s.b] = -OFFSET
            entropy = entropy_fused(logits)  # after A and B are masked, like the fused pass (kernels.reference)
        if s.c is not None:
            logits[:, s.c] = entropy - OFFSET
        vllm_patches.stash_step(torch.stack((value.float(), entropy.float()), 1))  # the shared-memory read-out
        return logits


_built: dict[str, type] = {}


def with_value_head(architecture: str) -> type:
    """vLLM's class for `architecture` with the value head mixed in, named `<architecture>WithValueHead`."""
    if architecture not in _built:
        if architecture not in BASES:
            raise ValueError(f"no value-head class for {architecture!r}; supported: {sorted(BASES)}")
        base = getattr(importlib.import_module(f"vllm.model_executor.models.{BASES[architecture]}"), architecture)
        name = architecture + SUFFIX
        # __module__/__qualname__ point back here, so pickling by reference resolves through __getattr__ below
        _built[architecture] = type(name, (ValueHeadMixin, base), {"__module__": __name__, "__qualname__": name})
    return _built[architecture]


def __getattr__(name: str) -> type:
    if name.endswith(SUFFIX) and name[: -len(SUFFIX)] in BASES:
        return with_value_head(name[: -len(SUFFIX)])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
