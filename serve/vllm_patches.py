"""One narrow patch of vLLM's API-process output path, for the in-pass value read-out.

vLLM detokenizes every returned logprob token in the API process (`LogprobsProcessor`): for the value slots that
is 4 ids per generated token (the sampled one plus A, B, C), including byte-fallback repair with up to 4 extra
`tokenizer.decode` calls each — Python work on the gateway's event loop for text nobody reads. The slots need
no text, so a request that carries `extra_args={"aligngate_values_only": True}` (set only when the client did not
ask for logprobs) gets its logprobs processor without a tokenizer. The answer's own text is detokenized as
usual (that is a separate detokenizer). Measured in benchmarks/results/serve_reward.json.

Applied once, idempotent, and inert if vLLM's internals move (the reward still works, only slower).
"""

from __future__ import annotations

from serve.logs import get_logger

log = get_logger(__name__)
FLAG = "aligngate_values_only"
_applied = False


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
