"""`LlamaForCausalLMWithValueHead`: vLLM's Llama whose logits step also yields the value and the entropy.

`compute_logits` runs the fused heads (`kernels.fused_heads`: LM head + fp32 value head + fp32 entropy in one
pass over the post-norm hidden states) and writes the value and entropy into reserved slots A/B/C of fp32
logits (`serve.value_slots`). No second forward pass: the practitioner's +18 ms p99 on a T4 was that pass.

Semantics: TRL's value head (Linear(H, 1) with bias on the post-norm last hidden state, dropout off), weights
from `value_head.safetensors` (`kernels.value_head`). The value returned with generated token i is computed from
the hidden state of the position that predicted token i, i.e. V(prompt + response[:i]).
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM

from kernels.dispatch import fused_heads
from kernels.value_head import load_value_head
from kernels.weights import HeadWeights
from serve import vllm_patches
from serve.value_slots import OFFSET, read_value_slots


class LlamaForCausalLMWithValueHead(LlamaForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        model_dir = vllm_config.model_config.model
        slots = read_value_slots(model_dir)
        if slots is None:
            raise ValueError(f"{model_dir}: LlamaForCausalLMWithValueHead needs a value head (kernels.value_head.VALUE_HEAD_FILE)")
        self.slots = slots
        vllm_patches.apply_sampler()  # this runs in vLLM's worker process, where the sampler is
        vllm_patches.apply_value_channel(vllm_config.model_config.max_model_len)
        head = load_value_head(model_dir)
        # fp32 buffers, moved with the module; not part of the HF checkpoint the loader walks
        self.register_buffer("value_weight", head.summary.weight.detach().reshape(-1).float(), persistent=False)
        self.register_buffer("value_bias", head.summary.bias.detach().reshape(()).float(), persistent=False)
        cfg = vllm_config.model_config.hf_config
        self._plain_head = getattr(cfg, "logit_scale", 1.0) == 1.0 and not getattr(cfg, "final_logit_softcapping", None)
        self._weights: HeadWeights | None = None

    def load_weights(self, weights):
        # The head was loaded in __init__ (TRL or OpenRLHF layout); should its tensors also come through vLLM's
        # loader (an OpenRLHF checkpoint with `score.weight` among the model weights), they are skipped here.
        return super().load_weights((n, t) for n, t in weights if not n.startswith(("v_head.", "score.")))

    def _head_weights(self) -> HeadWeights:
        if self._weights is None or self._weights.lm_head.data_ptr() != self.lm_head.weight.data_ptr():
            self._weights = HeadWeights.prepare(None, 0.0, self.lm_head.weight, self.value_weight, self.value_bias)
        return self._weights

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        s = self.slots
        if self._plain_head and self.logits_processor.org_vocab_size == self.lm_head.weight.shape[0]:
            # single-rank plain head: one fused pass gives logits, value and entropy
            out = fused_heads(hidden_states, self._head_weights(), logits_dtype=torch.float32, slots=(s.a, s.b),
                              slot_offset=OFFSET)
            logits, value, entropy = out.logits, out.value, out.entropy
        else:  # tensor-parallel / scaled heads: vLLM's own logits, then the value over the same hidden states
            logits = super().compute_logits(hidden_states)
            if logits is None:
                return None
            logits = logits.float()
            entropy = _entropy(logits)
            value = hidden_states.float() @ self.value_weight + self.value_bias
            logits[:, s.a] = value - OFFSET
            logits[:, s.b] = -OFFSET
        if s.c is not None:
            logits[:, s.c] = entropy - OFFSET
        vllm_patches.stash_step(torch.stack((value.float(), entropy.float()), 1))  # the shared-memory read-out
        return logits


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)
