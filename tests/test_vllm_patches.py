"""serve.vllm_patches: the worker-side gather fast path returns exactly what vLLM's own loop returns."""

from __future__ import annotations

import pytest
import torch

from serve import vllm_patches


@pytest.fixture(scope="module")
def sampler():
    from vllm.v1.sample.sampler import Sampler

    vllm_patches.apply_sampler()
    return Sampler()


@pytest.mark.parametrize("batch,vocab,rows", [(64, 320, "all"), (7, 1003, [0, 3, 6]), (1, 50, [0])])
def test_uniform_gather_equals_vllms_loop(sampler, batch, vocab, rows):
    torch.manual_seed(42)
    logprobs = torch.randn(batch, vocab).log_softmax(-1)
    sampled = torch.randint(0, vocab, (batch,))
    rows = list(range(batch)) if rows == "all" else rows
    request = {r: [vocab - 3, vocab - 2, vocab - 1] for r in rows}
    got = sampler.gather_specific_token_logprobs(logprobs, request, sampled)
    want = type(sampler)._aligngate_original_gather(sampler, logprobs, request, sampled)
    assert torch.equal(got.logprob_token_ids, want.logprob_token_ids)
    assert torch.equal(got.logprobs, want.logprobs)
    assert torch.equal(got.selected_token_ranks, want.selected_token_ranks)
    if len(rows) < batch:  # rows that asked for nothing: -inf past the sampled column, as vLLM has it
        other = next(i for i in range(batch) if i not in rows)
        assert torch.isinf(got.logprobs[other, 1:]).all() and torch.isfinite(got.logprobs[other, 0])


def test_mixed_lists_take_vllms_own_path(sampler):
    torch.manual_seed(42)
    logprobs = torch.randn(4, 100).log_softmax(-1)
    sampled = torch.randint(0, 100, (4,))
    request = {0: [1, 2, 3], 2: [7]}  # different lengths: padded by vLLM's loop
    got = sampler.gather_specific_token_logprobs(logprobs, request, sampled)
    want = type(sampler)._aligngate_original_gather(sampler, logprobs, request, sampled)
    assert torch.equal(got.logprobs, want.logprobs) and torch.equal(got.logprob_token_ids, want.logprob_token_ids)
    assert sampler.gather_specific_token_logprobs(logprobs, {}, sampled) is None
