"""Two narrow patches of vLLM, for the in-pass value read-out.

1. API process (`apply`): no detokenization of the value slots' logprobs.

vLLM detokenizes every returned logprob token in the API process (`LogprobsProcessor`): for the value slots that
is 4 ids per generated token (the sampled one plus A, B, C), including byte-fallback repair with up to 4 extra
`tokenizer.decode` calls each — Python work on the gateway's event loop for text nobody reads. The slots need
no text, so a request that carries `extra_args={"aligngate_values_only": True}` (set only when the client did not
ask for logprobs) gets its logprobs processor without a tokenizer. The answer's own text is detokenized as
usual (that is a separate detokenizer). Measured in benchmarks/results/serve_reward.json.

2. Worker process (`apply_sampler`, called by `serve.vllm_model` when the value-head model is built): vLLM's
`Sampler.gather_specific_token_logprobs` fills its [batch, ids] index and mask with a Python loop over the rows,
two small tensor writes per request: 0.67 ms per step at batch 64 here (`python -m benchmarks.bench_readout`),
on the engine's critical path, next to a ~5 ms step of the tiny default model. Every aligngate request asks for
the same slot ids, so when all requesting rows ask for one list the index is one broadcast and the mask one
row-indexed write (same tensors, same values; tests/test_vllm_patches.py compares them with the original).
Mixed lists (a client's own `logprob_token_ids`, should that ever be passed through) take vLLM's own loop.

Each is applied once, idempotent, and inert if vLLM's internals move (the reward still works, only slower).
"""

from __future__ import annotations

import os

from serve.logs import get_logger

log = get_logger(__name__)
FLAG = "aligngate_values_only"
_applied = False
_sampler_applied = False
SAMPLER_PATCH_ENV = "ALIGNGATE_SAMPLER_PATCH"
"""Set to 0 to keep vLLM's own gather (read where the worker builds the model; benchmarks.bench_readout compares)."""


def apply() -> None:
    global _applied
    if _applied:
        return
    try:
        from vllm.v1.engine.logprobs import LogprobsProcessor
    except ImportError:
        log.warning("vllm_patch_skipped", reason="vllm.v1.engine.logprobs.LogprobsProcessor not found")
        return
    original = LogprobsProcessor.from_new_request.__func__

    def from_new_request(cls, tokenizer, request):
        sp = getattr(request, "sampling_params", None)
        if sp is not None and sp.extra_args and sp.extra_args.get(FLAG):
            tokenizer = None
        return original(cls, tokenizer, request)

    LogprobsProcessor.from_new_request = classmethod(from_new_request)
    _applied = True


def apply_sampler() -> None:
    global _sampler_applied
    if _sampler_applied or os.environ.get(SAMPLER_PATCH_ENV, "1") == "0":
        return
    try:
        from vllm.v1.sample.sampler import Sampler
    except ImportError:
        log.warning("vllm_patch_skipped", reason="vllm.v1.sample.sampler.Sampler not found")
        return
    original = getattr(Sampler, "gather_specific_token_logprobs", None)
    if original is None:
        log.warning("vllm_patch_skipped", reason="Sampler.gather_specific_token_logprobs not found")
        return

    def gather_specific_token_logprobs(self, logprobs, logprob_token_ids, sampled):
        lists = list(logprob_token_ids.values()) if logprob_token_ids else None
        if not lists or any(ids != lists[0] for ids in lists):
            return original(self, logprobs, logprob_token_ids, sampled)
        return gather_uniform(logprobs, list(logprob_token_ids), lists[0], sampled)

    Sampler.gather_specific_token_logprobs = gather_specific_token_logprobs
    Sampler._aligngate_original_gather = staticmethod(original)
    _sampler_applied = True


def gather_uniform(logprobs, rows: list[int], token_ids: list[int], sampled):
    """vLLM's gather for the case where every requesting row asks for the same `token_ids`: column 0 the
    sampled token, columns 1.. the ids; rows that asked for nothing are -inf past column 0 (as in vLLM)."""
    import torch
    from vllm.v1.outputs import LogprobsTensors
    from vllm.v1.sample.ops.logprobs import batched_count_greater_than

    batch, device = logprobs.shape[0], logprobs.device
    n = len(token_ids)
    index = torch.empty(batch, n + 1, dtype=torch.int64, device=device)
    index[:, 1:] = torch.tensor(token_ids, dtype=torch.int64, device=device)
    index[:, 0] = sampled
    if len(rows) == batch:
        gathered = logprobs.gather(-1, index)
    else:
        valid = torch.zeros(batch, n + 1, dtype=torch.bool, device=device)
        valid[:, 0] = True
        valid[torch.tensor(rows, dtype=torch.int64, device=device), 1:] = True
        index.masked_fill_(~valid, 0)  # vLLM leaves a padded id at 0
        gathered = logprobs.gather(-1, index).masked_fill_(~valid, float("-inf"))
    sampled_logprobs = logprobs.gather(-1, sampled.unsqueeze(-1))
    torch._dynamo.decorators.mark_unbacked(logprobs, 0)
    torch._dynamo.decorators.mark_unbacked(sampled_logprobs, 0)
    ranks = batched_count_greater_than(logprobs, sampled_logprobs)
    return LogprobsTensors(logprob_token_ids=index.to(torch.int32), logprobs=gathered, selected_token_ranks=ranks)
