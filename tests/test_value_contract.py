"""Contract: the in-pass value the engine returns equals an HF forward pass with the same head (<= 1e-3),
in a mixed batch, streamed and not, and the reserved slots are never sampled.

The default models carry a value head (TRL layout) and are served through `LlamaForCausalLMWithValueHead`,
registered by aligngate's `vllm.general_plugins` entry point inside vLLM's engine process.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from serve.vllm_ext.value_slots import read_value_slots

TOL = 1e-3


@pytest.fixture(scope="module")
def hf_reference(cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kernels.value_head import load_value_head

    refs = {}
    for version in ("stable", "canary"):
        d = cache_dir / "models" / f"default-{version}"
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        refs[version] = (model, load_value_head(d).eval(), AutoTokenizer.from_pretrained(d))
    return refs


def _ref_values(ref, messages, token_ids):
    model, head, tok = ref
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = tok.encode(text, add_special_tokens=False)
    ids = torch.tensor([prompt + token_ids])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[-1][0]  # post-norm
        values = head(hidden)
    # the value returned with token i comes from the position that predicted it
    return values[len(prompt) - 1: len(prompt) - 1 + len(token_ids)]


async def _ask(client, version, content, stream, **extra):
    body = {"model": version, "messages": [{"role": "user", "content": content}], "max_tokens": 24,
            "temperature": 1.0, "return_values": True, "stream": stream, **extra}
    if not stream:
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["aligngate"]
    last = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "reward" in chunk.get("aligngate", {}):
                    assert chunk["choices"] == []
                    last = chunk["aligngate"]
    return last


def test_engine_values_match_hf_forward_in_a_mixed_batch(gateway, hf_reference):
    """n = 1 answers are read through the shared-memory table (serve.vllm_ext.value_table), n = 2 through the slots'
    logprobs; both against HF, in one batch."""
    prompts = ["1+1=", "reverse: abc", "hello there, how are you today?", "7", "x" * 40, "upper: qwerty"]
    versions = httpx.get(gateway + "/ready", params={"verbose": "true"}, timeout=60).json()["versions"]
    assert versions["stable"]["value_channel"] == versions["canary"]["value_channel"] == "shm", versions

    async def run():
        async with httpx.AsyncClient(base_url=gateway, timeout=120) as c:
            calls = []
            for i, p in enumerate(prompts):
                calls.append(_ask(c, ("stable", "canary")[i % 2], p, stream=bool(i % 3 == 0)))
            calls.append(_ask(c, "stable", "2+3=", stream=False, n=2))  # the logprobs read-out
            # requests in the same batch that do not read values (client logprobs) must not disturb the rest
            noise = [c.post("/v1/chat/completions", json={"model": "stable", "max_tokens": 24, "logprobs": True,
                                                            "messages": [{"role": "user", "content": "noise"}]})
                     for _ in range(3)]
            results = await asyncio.gather(*calls, *noise)
            return results[: len(prompts) + 1]

    results = asyncio.run(run())
    worst = 0.0
    for i, (p, ag) in enumerate(zip(prompts, results)):
        version = ("stable", "canary")[i % 2]
        trace = ag["traces"][0]
        assert len(trace["values"]) == len(trace["token_ids"]) >= 1
        ref = _ref_values(hf_reference[version], [{"role": "user", "content": p}], trace["token_ids"])
        diff = (torch.tensor(trace["values"]) - ref).abs().max().item()
        worst = max(worst, diff)
        assert ag["reward"]["source"] == "value_head" and ag["reward"]["model_version"] == version
        assert ag["reward"]["score"] == pytest.approx(trace["values"][-1])
        assert trace["mean_entropy"] is not None and trace["mean_entropy"] > 0
    for trace in results[-1]["traces"]:  # n = 2
        assert len(trace["values"]) == len(trace["token_ids"]) >= 1
        ref = _ref_values(hf_reference["stable"], [{"role": "user", "content": "2+3="}], trace["token_ids"])
        worst = max(worst, (torch.tensor(trace["values"]) - ref).abs().max().item())
    assert worst <= TOL, worst


def test_reserved_slots_never_sampled(gateway, cache_dir):
    slots = read_value_slots(cache_dir / "models" / "default-stable")
    body = {"model": "stable", "messages": [{"role": "user", "content": "say anything"}], "max_tokens": 64,
            "n": 8, "temperature": 2.0, "return_values": True, "ignore_eos": True}
    seen = 0
    with httpx.Client(base_url=gateway, timeout=120) as c:
        for _ in range(4):
            r = c.post("/v1/chat/completions", json=body).json()
            for t in r["aligngate"]["traces"]:
                assert not set(t["token_ids"]) & set(slots.ids())
                seen += len(t["token_ids"])
    assert seen > 1000


def test_reward_on_every_answer_and_with_client_logprobs(gateway):
    with httpx.Client(base_url=gateway, timeout=120) as c:
        plain = c.post("/v1/chat/completions", json={"model": "aligngate", "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": "2+2="}]}).json()
        rw = plain["aligngate"]["reward"]
        assert set(rw) == {"score", "source", "model_version", "cached"} and isinstance(rw["score"], float)
        # with client logprobs vLLM returns those instead of the value slots: the reward comes from a finalize step
        lp = c.post("/v1/chat/completions", json={"model": "stable", "max_tokens": 8, "logprobs": True,
                                                  "top_logprobs": 2, "temperature": 0,
                                                  "messages": [{"role": "user", "content": "2+2="}]}).json()
        assert lp["choices"][0]["logprobs"]["content"]
        assert lp["aligngate"]["reward"]["source"] == "value_head_eos"
        many = c.post("/v1/chat/completions", json={"model": "stable", "max_tokens": 8, "n": 3,
                                                    "messages": [{"role": "user", "content": "2+2="}]}).json()
        assert len(many["aligngate"]["rewards"]) == 3
