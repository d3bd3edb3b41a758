"""serve.vllm_ext.vllm_patches: the worker-side gather fast path returns exactly what vLLM's own loop returns."""

from __future__ import annotations

import pytest
import torch

from serve.vllm_ext import vllm_patches


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


def _metadata(batch: int, logprob_token_ids, max_num_logprobs=None):
    from vllm.v1.sample.logits_processor.state import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    empty = torch.zeros(batch)
    return SamplingMetadata(
        temperature=None, all_greedy=True, all_random=False, top_p=None, top_k=None, generators={},
        max_num_logprobs=max_num_logprobs, no_penalties=True, prompt_token_ids=None, frequency_penalties=empty,
        presence_penalties=empty, repetition_penalties=empty, output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors(),
        logprob_token_ids=logprob_token_ids)


@pytest.mark.parametrize("batch,vocab,rows", [(16, 320, "all"), (5, 32000, [1, 4])])
def test_slots_only_step_gives_vllms_values(sampler, batch, vocab, rows):
    """The slots-only step: same sampled tokens as vLLM's own forward, and A - B / C - B equal to vLLM's
    lp[A] - lp[B] / lp[C] - lp[B] (the normaliser cancels); the sampled token's column is left out (NaN)."""
    torch.manual_seed(42)
    a, b, c = vocab - 3, vocab - 2, vocab - 1
    logits = torch.randn(batch, vocab) * 3
    value, entropy = torch.randn(batch), torch.rand(batch) * 5
    logits[:, a], logits[:, b], logits[:, c] = value - 1000, -1000.0, entropy - 1000
    rows = list(range(batch)) if rows == "all" else rows
    ids = {r: [a, b, c] for r in rows}
    got = sampler.forward(logits.clone(), _metadata(batch, ids))
    want = type(sampler)._aligngate_original_forward(sampler, logits.clone(), _metadata(batch, ids))
    assert torch.equal(got.sampled_token_ids, want.sampled_token_ids)
    g, w = got.logprobs_tensors, want.logprobs_tensors
    assert torch.equal(g.logprob_token_ids, w.logprob_token_ids)
    for r in rows:
        for col in (1, 3):  # value (A - B) and entropy (C - B)
            assert float(g.logprobs[r, col] - g.logprobs[r, 2]) == pytest.approx(float(w.logprobs[r, col] - w.logprobs[r, 2]), abs=2e-4)
        assert float(g.logprobs[r, 1] - g.logprobs[r, 2]) == pytest.approx(float(value[r]), abs=2e-4)
    assert torch.isnan(g.logprobs[:, 0]).all() and (g.selected_token_ranks == 0).all()
    others = [i for i in range(batch) if i not in rows]
    if others:
        assert torch.isinf(g.logprobs[others, 1:]).all()


def test_top_logprobs_in_the_batch_take_vllms_forward(sampler):
    """A client's top logprobs in the batch: vLLM's own forward (real logprobs, ranks), nothing left out."""
    torch.manual_seed(42)
    logits = torch.randn(3, 100)
    got = sampler.forward(logits.clone(), _metadata(3, {0: [97, 98, 99]}, max_num_logprobs=2))
    assert torch.isfinite(got.logprobs_tensors.logprobs[:, 0]).all()
    assert (got.logprobs_tensors.selected_token_ranks >= 1).all()
