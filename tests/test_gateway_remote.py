"""The remote engine: the gateway in front of a real `python -m vllm.entrypoints.openai.api_server`."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.promtext import metric


@pytest.fixture(scope="module")
def client(remote_gateway):
    return openai.OpenAI(base_url=remote_gateway + "/v1", api_key="unused", max_retries=0, timeout=120)


MSG = [{"role": "user", "content": "5+5="}]


def test_remote_non_stream_and_stream(client):
    raw = client.chat.completions.with_raw_response.create(model="aligngate", messages=MSG, max_tokens=6,
                                                          logprobs=True, top_logprobs=1)
    r = raw.parse()
    assert raw.headers["x-aligngate-version"] == "remote"
    assert r.model == "aligngate" and r.usage.completion_tokens >= 1
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="remote", messages=MSG, max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].model_extra["aligngate"]["version"] == "remote"
    usage = [c for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].usage.completion_tokens >= 1
    # the upstream serves the value-head class (conftest): the in-pass reward comes through the remote path too
    assert chunks[-1].model_extra["aligngate"]["reward"]["source"] == "value_head"
    # with the client's own logprobs, vLLM returns those instead of the value slots: no reward (documented)
    assert r.model_extra["aligngate"]["reward"] is None


def test_remote_responses_api(client):
    """/v1/responses on a remote version: the same chat path, so the upstream answers and the reward comes through."""
    r = client.responses.create(model="remote", input="5+5=", max_output_tokens=6, temperature=0)
    chat = client.chat.completions.create(model="remote", messages=MSG, max_tokens=6, temperature=0)
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.model_extra["aligngate"]["version"] == "remote"
    events = list(client.responses.create(model="remote", input="5+5=", max_output_tokens=6, stream=True))
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == events[-1].response.output_text
    assert events[-1].response.model_extra["aligngate"]["reward"]["source"] == "value_head"


def test_remote_matches_upstream_greedy(client, vllm_server):
    """Same greedy answer through the gateway as straight from vLLM: streaming is forwarded faithfully."""
    direct = openai.OpenAI(base_url=vllm_server + "/v1", api_key="x", max_retries=0)
    want = direct.chat.completions.create(model="upstream-policy", messages=MSG, max_tokens=20,
                                          temperature=0).choices[0].message.content
    got = client.chat.completions.create(model="aligngate", messages=MSG, max_tokens=20, temperature=0)
    assert got.choices[0].message.content == want
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="aligngate", messages=MSG, max_tokens=20, temperature=0, stream=True) if c.choices)
    assert streamed == want


def test_remote_completions_and_n(client):
    r = client.completions.create(model="aligngate", prompt="1+1=", max_tokens=4, n=2, logprobs=1)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(len(c.logprobs.tokens) >= 1 for c in r.choices)


def test_remote_upstream_4xx_becomes_a_clear_400(remote_gateway):
    r = httpx.post(remote_gateway + "/v1/chat/completions", timeout=30,
                   json={"model": "aligngate", "messages": [{"role": "user", "content": "x" * 600}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def test_remote_disconnect_aborts_upstream(remote_gateway, vllm_server):
    """Dropping the client stream closes the upstream connection and vLLM stops decoding that sequence:
    it generates far fewer than the 480 tokens it would have (ignore_eos: it never stops early)."""
    before = metric(vllm_server, "vllm:generation_tokens_total")
    body = {"model": "aligngate", "messages": [{"role": "user", "content": "go"}], "max_tokens": 480, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", remote_gateway + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_raw())
    deadline = time.monotonic() + 10
    time.sleep(0.5)
    while metric(vllm_server, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "upstream kept the request running"
        time.sleep(0.1)
    generated = metric(vllm_server, "vllm:generation_tokens_total") - before
    assert 1 <= generated < 0.8 * 480, generated


def test_remote_in_pass_reward_equals_in_process(client, gateway):
    """The upstream vLLM serves the value-head class: the remote path reads the same in-pass reward (the value at
    the last position) as the in-process engine of the same model, streamed and not, chat and completions."""
    local = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120)
    for content in ("add 3 5", "upper xyz", "reverse hello"):
        msg = [{"role": "user", "content": content}]
        r = client.chat.completions.create(model="remote", messages=msg, max_tokens=12, temperature=0)
        ref = local.chat.completions.create(model="stable", messages=msg, max_tokens=12, temperature=0)
        assert r.choices[0].message.content == ref.choices[0].message.content
        got, want = r.model_extra["aligngate"]["reward"], ref.model_extra["aligngate"]["reward"]
        assert got["source"] == "value_head" and got["model_version"] == "remote"
        assert abs(got["score"] - want["score"]) <= 1e-3, (content, got, want)
        assert r.choices[0].logprobs is None  # the slots' logprobs are read, never shown
        chunks = list(client.chat.completions.create(model="remote", messages=msg, max_tokens=12, temperature=0,
                                                     stream=True))
        last = chunks[-1].model_extra["aligngate"]["reward"]
        assert abs(last["score"] - want["score"]) <= 1e-3
        assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
    c = client.completions.create(model="remote", prompt="add 1 2", max_tokens=5, temperature=0)
    cref = local.completions.create(model="stable", prompt="add 1 2", max_tokens=5, temperature=0)
    assert abs(c.model_extra["aligngate"]["reward"]["score"] - cref.model_extra["aligngate"]["reward"]["score"]) <= 1e-3
    assert c.choices[0].logprobs is None
