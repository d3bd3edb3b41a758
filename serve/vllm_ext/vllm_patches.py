"""Two narrow patches of vLLM, for the in-pass value read-out.

1. API process (`apply`): no detokenization of the value slots' logprobs.

vLLM detokenizes every returned logprob token in the API process (`LogprobsProcessor`): for the value slots that
is 4 ids per generated token (the sampled one plus A, B, C), including byte-fallback repair with up to 4 extra
`tokenizer.decode` calls each — Python work on the gateway's event loop for text nobody reads. The slots need
no text, so a request that carries `extra_args={"aligngate_values_only": True}` (set only when the client did not
ask for logprobs) gets its logprobs processor without a tokenizer. The answer's own text is detokenized as
usual (that is a separate detokenizer). Measured in benchmarks/results/serve_reward.json.

2. Worker process (`apply_sampler`, called by `serve.vllm_ext.vllm_model` when the value-head model is built), two parts:
   - slots-only steps: when the rows that ask for `logprob_token_ids` all ask for the same ids and no row asks
     for top logprobs (every aligngate request with the reward on, unless a client asked for logprobs), the
     slots' columns are copied out of the logits before sampling edits them in place and the step samples with
     no logprobs at all. vLLM would run a full log-softmax over [batch, vocab] and a rank count over it every
     step only for `lp[A] - lp[B]`, where the normaliser cancels: the raw logits give the same value (and the
     same entropy, `C - B`). The sampled token's own column is not computed (NaN, rank 0): values-only
     requests never read it. At a 32k vocabulary that pass is the read-out's main cost.
   - otherwise (a client's top logprobs in the same batch): vLLM's `gather_specific_token_logprobs` fills its
     [batch, ids] index and mask with a Python loop over the rows, two small tensor writes per request (0.60 ms
     per step at batch 64 here); when all requesting rows ask for one list it is one broadcast instead.
   Measured with `python -m benchmarks.bench_readout` (engines `vllm-gather` vs `patched`); tests/test_vllm_patches.py
   compares both parts with vLLM's own code.

3. Worker process (`apply_value_channel`, also called when the value-head model is built): after each step's
   bookkeeping, the step's value and entropy per request (stashed by the model's `compute_logits`,
   `stash_step`) go into the gateway's shared-memory table (`serve.vllm_ext.value_table`) for the requests that name one
   in `extra_args`. With it the gateway asks for no logprobs at all, so vLLM's per-request logprobs plumbing
   (engine core and API process) is skipped.

Each is applied once and idempotent. Each first checks that the vLLM internals it replaces still look as written
for (`serve.vllm_ext.vllm_compat`: the attribute exists, its signature has the parameters forwarded) and raises
`VLLMDriftError` naming the installed and the expected vLLM otherwise: never silently inert. `ALIGNGATE_VLLM_PATCHES=off`
skips them all (vLLM's own code paths). The value channel's per-step writer still falls back to the logprobs
read-out, with a warning, should a step's bookkeeping surprise it at run time (the engine's warm-up checks it too).
"""

from __future__ import annotations

import os

from serve.vllm_ext import vllm_compat
from serve.logs import get_logger

log = get_logger(__name__)
FLAG = "aligngate_values_only"
_applied = False
_sampler_applied = False
_channel_applied = False
_step: list = [None]  # this step's [rows, 2] (value, entropy), set by the model's compute_logits
SAMPLER_PATCH_ENV = "ALIGNGATE_SAMPLER_PATCH"
"""Set to 0 to keep vLLM's own sampler (read where the worker builds the model; benchmarks.bench_readout compares)."""


def apply() -> None:
    global _applied
    if _applied or not vllm_compat.require("apply"):
        return
    from vllm.v1.engine.logprobs import LogprobsProcessor

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
    if (_sampler_applied or os.environ.get(SAMPLER_PATCH_ENV, "1") == "0"
            or not vllm_compat.require("apply_sampler")):
        return
    from vllm.v1.sample.sampler import Sampler

    original = Sampler.gather_specific_token_logprobs
    original_forward = Sampler.forward

    def gather_specific_token_logprobs(self, logprobs, logprob_token_ids, sampled):
        ids = uniform_ids(logprob_token_ids)
        if ids is None:
            return original(self, logprobs, logprob_token_ids, sampled)
        return gather_uniform(logprobs, list(logprob_token_ids), ids, sampled)

    def forward(self, logits, sampling_metadata, predict_bonus_token=False, logprobs_mode_override=None):
        md = sampling_metadata
        if (md.max_num_logprobs is None and not predict_bonus_token
                and (logprobs_mode_override or self.logprobs_mode) == "raw_logprobs"):
            ids = uniform_ids(md.logprob_token_ids)
            if ids is not None:
                return slots_only_forward(self, original_forward, logits, md, list(md.logprob_token_ids), ids)
        return original_forward(self, logits, md, predict_bonus_token, logprobs_mode_override)

    Sampler.gather_specific_token_logprobs = gather_specific_token_logprobs
    Sampler.forward = forward
    Sampler._aligngate_original_gather = staticmethod(original)
    Sampler._aligngate_original_forward = staticmethod(original_forward)
    _sampler_applied = True


def uniform_ids(logprob_token_ids: dict[int, list[int]] | None) -> list[int] | None:
    """The one id list every requesting row asks for, or None (no row asks, or the lists differ)."""
    lists = list(logprob_token_ids.values()) if logprob_token_ids else None
    if not lists or any(ids != lists[0] for ids in lists):
        return None
    return lists[0]


def slot_index(batch: int, rows: list[int], token_ids: list[int], sampled, device):
    """vLLM's [batch, 1 + len(token_ids)] index (column 0 the sampled token) and, when some rows asked for nothing,
    the mask of valid entries (those rows' padded ids set to 0, as in vLLM); else None."""
    import torch

    index = torch.empty(batch, len(token_ids) + 1, dtype=torch.int64, device=device)
    index[:, 1:] = torch.tensor(token_ids, dtype=torch.int64, device=device)
    index[:, 0] = sampled
    if len(rows) == batch:
        return index, None
    valid = torch.zeros_like(index, dtype=torch.bool)
    valid[:, 0] = True
    valid[torch.tensor(rows, dtype=torch.int64, device=device), 1:] = True
    return index.masked_fill_(~valid, 0), valid


def slots_only_forward(sampler, original_forward, logits, md, rows: list[int], token_ids: list[int]):
    """Sample with no logprobs, and return the requested columns' raw logits in vLLM's LogprobsTensors layout."""
    import dataclasses

    import torch
    from vllm.v1.outputs import LogprobsTensors

    batch, device = logits.shape[0], logits.device
    cols = torch.tensor(token_ids, dtype=torch.int64, device=device)
    slot_logits = logits.index_select(1, cols).float()  # before logit bias / temperature edit `logits` in place
    out = original_forward(sampler, logits, dataclasses.replace(md, logprob_token_ids=None))
    index, valid = slot_index(batch, rows, token_ids, out.sampled_token_ids[:, 0], device)
    values = torch.empty(index.shape, dtype=torch.float32, device=device)
    values[:, 0] = float("nan")  # the sampled token's logprob: not computed (values-only requests never read it)
    values[:, 1:] = slot_logits
    if valid is not None:
        values.masked_fill_(~valid, float("-inf"))
    out.logprobs_tensors = LogprobsTensors(logprob_token_ids=index.to(torch.int32), logprobs=values,
                                           selected_token_ranks=torch.zeros(batch, dtype=torch.int64, device=device))
    return out


def gather_uniform(logprobs, rows: list[int], token_ids: list[int], sampled):
    """vLLM's gather for the case where every requesting row asks for the same `token_ids`: column 0 the
    sampled token, columns 1.. the ids; rows that asked for nothing are -inf past column 0 (as in vLLM)."""
    import torch
    from vllm.v1.outputs import LogprobsTensors
    from vllm.v1.sample.ops.logprobs import batched_count_greater_than

    index, valid = slot_index(logprobs.shape[0], rows, token_ids, sampled, logprobs.device)
    gathered = logprobs.gather(-1, index)
    if valid is not None:
        gathered.masked_fill_(~valid, float("-inf"))
    sampled_logprobs = logprobs.gather(-1, sampled.unsqueeze(-1))
    torch._dynamo.decorators.mark_unbacked(logprobs, 0)
    torch._dynamo.decorators.mark_unbacked(sampled_logprobs, 0)
    ranks = batched_count_greater_than(logprobs, sampled_logprobs)
    return LogprobsTensors(logprob_token_ids=index.to(torch.int32), logprobs=gathered, selected_token_ranks=ranks)


def stash_step(cells) -> None:
    """Called by the value-head model's `compute_logits`: [rows, 2] fp32 (value, entropy), one row per request
    of the step in the batch's order, read by the bookkeeping patch below."""
    _step[0] = cells


def apply_value_channel(max_model_len: int) -> None:
    global _channel_applied
    if _channel_applied or not vllm_compat.require("apply_value_channel"):
        return
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._bookkeeping_sync
    from serve.vllm_ext.value_table import TableWriter

    writer = TableWriter(max_model_len)
    failed: list[bool] = []

    def _bookkeeping_sync(self, scheduler_output, sampler_output, logits, *args, **kwargs):
        cells, _step[0] = _step[0], None  # taken first: prompt logprobs inside may call compute_logits again
        out = original(self, scheduler_output, sampler_output, logits, *args, **kwargs)
        if cells is not None and not self.use_async_scheduling and not failed:
            try:
                write_step(self, writer, cells, out[3], out[5], scheduler_output.finished_req_ids)
            except Exception as e:  # never break the engine over the side channel: the gateway falls back
                failed.append(True)
                log.warning("value_channel_disabled", error=repr(e))
        return out

    GPUModelRunner._bookkeeping_sync = _bookkeeping_sync
    _channel_applied = True


def write_step(runner, writer, cells, sampled: list[list[int]], req_ids: list[str], finished=()) -> None:
    """Row i of `cells` is request `req_ids[i]`; each request that sampled one token this step and names a table
    gets its cell at the new token's position (tokens so far − prompt − 1, from the batch's own counts).
    A request's table and row are looked up once (`writer.rows_of`) and forgotten when it finishes."""
    import numpy as np

    from serve.vllm_ext.value_table import ROW_KEY, TABLE_KEY

    known = writer.rows_of
    for rid in finished:
        known.pop(rid, None)
    idx, rows, path = [], [], None
    for i, (rid, toks) in enumerate(zip(req_ids, sampled)):
        if len(toks) != 1:  # discarded (a partial prefill) or speculative tokens: nothing to write
            continue
        where = known.get(rid, False)
        if where is False:
            state = runner.requests.get(rid)
            extra = state.sampling_params.extra_args if state is not None and state.sampling_params else None
            where = known[rid] = (extra[TABLE_KEY], extra[ROW_KEY]) if extra and TABLE_KEY in extra else None
        if where is None:
            continue
        if path is None:
            path = where[0]
        elif where[0] != path:  # one engine per worker, so one table; anything else is skipped
            continue
        idx.append(i)
        rows.append(where[1])
    if not idx:
        return
    batch = runner.input_batch
    at = np.asarray(idx)
    positions = batch.num_tokens_no_spec[at] - batch.num_prompt_tokens[at] - 1
    writer.write(path, np.asarray(rows), positions, cells.numpy()[at])
