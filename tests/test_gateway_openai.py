"""The embedded-default gateway answered through the official `openai` client, on loopback, real vLLM engines."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.promtext import metric


MSG = [{"role": "user", "content": "12+7="}]


def test_models_lists_public_name_and_every_version(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "aligngate"
    assert set(ids) == {"aligngate", "stable", "canary"}


def test_non_stream_chat(client):
    raw = client.chat.completions.with_raw_response.create(model="aligngate", messages=MSG, max_tokens=8)
    resp = raw.parse()
    assert raw.headers["x-aligngate-version"] == "stable"  # canary weight is 0 by default
    assert resp.object == "chat.completion"
    assert resp.model == "aligngate"
    assert isinstance(resp.choices[0].message.content, str)
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 0 and 1 <= resp.usage.completion_tokens <= 8
    assert resp.model_extra["aligngate"]["version"] == "stable"


def test_stream_chat_with_usage(client):
    stream = client.chat.completions.create(model="aligngate", messages=MSG, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["aligngate"]["version"] == "stable"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    usage = [c for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].choices == [] and usage[0].usage.completion_tokens >= 1
    # the reward rides in the usage chunk, the last before [DONE] (the SDK stream helper keeps both)
    assert chunks[-1].choices == [] and chunks[-1].model_extra["aligngate"]["reward"]["source"] == "value_head"


def test_stream_ends_with_done(gateway):
    body = {"model": "aligngate", "messages": MSG, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-aligngate-version"] == "stable"
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_explicit_version_and_system_message(client):
    raw = client.chat.completions.with_raw_response.create(
        model="canary", max_tokens=4,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert raw.headers["x-aligngate-version"] == "canary"
    ag = raw.parse().model_extra["aligngate"]
    assert (ag["version"], ag["routed_by"], ag["reward"]["model_version"]) == ("canary", "explicit", "canary")


def test_sampling_parameters(client):
    kw = dict(model="stable", messages=MSG, max_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b  # same seed, same answer
    many = client.chat.completions.create(model="stable", messages=MSG, max_tokens=6, n=3, logprobs=True,
                                          top_logprobs=2)
    assert [c.index for c in many.choices] == [0, 1, 2]
    for c in many.choices:
        assert 1 <= len(c.logprobs.content) <= 6
        for t in c.logprobs.content:
            assert t.logprob <= 0 and len(t.top_logprobs) == 2
            assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    greedy = client.chat.completions.create(model="stable", messages=MSG, max_tokens=30, temperature=0)
    text = greedy.choices[0].message.content
    assert text == client.chat.completions.create(model="stable", messages=MSG, max_tokens=30,
                                                  temperature=0).choices[0].message.content
    if len(text) > 3:  # a stop string cuts the answer before it
        stop = text[2:4]
        cut = client.chat.completions.create(model="stable", messages=MSG, max_tokens=30, temperature=0, stop=[stop])
        assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content


def test_max_completion_tokens_and_user(client):
    r = client.chat.completions.create(model="aligngate", messages=MSG, max_completion_tokens=3, user="alice")
    assert r.usage.completion_tokens <= 3
    assert r.model_extra["aligngate"]["routed_by"] == "sticky"


def test_completions_endpoint(client):
    r = client.completions.create(model="aligngate", prompt="3+4=", max_tokens=5, logprobs=2)
    assert r.object == "text_completion"
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) >= 1
    chunks = list(client.completions.create(model="canary", prompt="3+4=", max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) is not None
    assert chunks[0].model_extra["aligngate"]["version"] == "canary"


def test_sixty_four_concurrent_requests(gateway):
    async def run():
        c = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120)
        calls = [c.chat.completions.create(model="aligngate", max_tokens=16,
                                           messages=[{"role": "user", "content": f"{i}+{i}="}],
                                           stream=(i % 2 == 0)) for i in range(64)]
        results = await asyncio.gather(*calls)
        texts = []
        for r in results:
            if isinstance(r, openai.AsyncStream):
                texts.append("".join([ch.choices[0].delta.content or "" async for ch in r if ch.choices]))
            else:
                texts.append(r.choices[0].message.content)
        await c.close()
        return texts

    texts = asyncio.run(run())
    assert len(texts) == 64 and all(isinstance(t, str) for t in texts)


def test_metrics_exported_per_version(gateway, client):
    client.chat.completions.create(model="canary", messages=MSG, max_tokens=3)
    assert metric(gateway, "aligngate_requests_total", version="canary", endpoint="chat", status="200") >= 1
    assert metric(gateway, "aligngate_ttft_seconds_count", version="canary") >= 1
    assert metric(gateway, "aligngate_e2e_latency_seconds_count", version="stable") >= 1
    assert metric(gateway, "aligngate_inter_token_latency_seconds_count", version="stable") >= 1
    text = httpx.get(gateway + "/metrics").text
    assert 'aligngate_in_flight{version="stable"}' in text


def test_health_and_ready(gateway):
    assert httpx.get(gateway + "/health").json() == {"status": "ok"}
    r = httpx.get(gateway + "/ready", timeout=60)
    assert r.status_code == 200
    assert r.json() == {"ready": True, "versions": {"stable": {"ready": True}, "canary": {"ready": True}}}


def test_client_disconnect_aborts_engine_request(gateway):
    """A stream dropped after its first chunk frees the engine's sequence long before it could have finished."""
    body = {"model": "stable", "messages": [{"role": "user", "content": "go"}], "max_tokens": 480, "ignore_eos": True,
            "temperature": 0, "stream": True}
    t = time.perf_counter()
    full = httpx.post(gateway + "/v1/chat/completions", json={**body, "stream": False}, timeout=120).json()
    full_s = time.perf_counter() - t
    assert full["choices"][0]["finish_reason"] == "length"  # ignore_eos: always the full 480 tokens
    before = metric(gateway, "aligngate_requests_total", version="stable", status="499")

    t0 = time.perf_counter()
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_raw())
    t = time.perf_counter()  # the connection is closed here
    assert t - t0 < 0.5 * full_s, "the first chunk should arrive long before the whole answer" 
    while metric(gateway, "aligngate_engine_unfinished_requests", version="stable") > 0:
        assert time.perf_counter() - t < full_s, "the engine kept decoding after the client left"
        time.sleep(0.02)
    freed_s = time.perf_counter() - t
    assert freed_s < 0.5 * full_s
    deadline = time.monotonic() + 5
    while metric(gateway, "aligngate_requests_total", version="stable", status="499") <= before:
        assert time.monotonic() < deadline, httpx.get(gateway + "/metrics").text
        time.sleep(0.05)


def test_non_stream_disconnect_aborts(gateway):
    """A non-streamed request whose client gives up is cancelled (499), not finished (200)."""
    body = {"model": "stable", "messages": [{"role": "user", "content": "go"}], "max_tokens": 480, "ignore_eos": True, "temperature": 0}
    ok_before = metric(gateway, "aligngate_requests_total", version="stable", status="200")
    gone_before = metric(gateway, "aligngate_requests_total", version="stable", status="499")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway + "/v1/chat/completions", json=body, timeout=0.1)
    deadline = time.monotonic() + 5
    while metric(gateway, "aligngate_requests_total", version="stable", status="499") <= gone_before:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert metric(gateway, "aligngate_requests_total", version="stable", status="200") == ok_before
    assert metric(gateway, "aligngate_engine_unfinished_requests", version="stable") == 0
