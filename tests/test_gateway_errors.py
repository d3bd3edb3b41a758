"""Bad input gets a 4xx in the OpenAI error shape with a message that says what to fix; never a 500."""

from __future__ import annotations

import json

import httpx
import pytest

GOOD = {"model": "aligngate", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
CHAT = "/v1/chat/completions"


def _post(gateway, path=CHAT, body=None, content=None, headers=None):
    if content is None:
        content = json.dumps(body).encode()
    return httpx.post(gateway + path, content=content, timeout=60,
                      headers=headers or {"content-type": "application/json"})


def _assert_error(r: httpx.Response, status: int, *words: str, param: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    for w in words:
        assert w.lower() in err["message"].lower(), err["message"]
    if param is not None:
        assert err["param"] == param
    return err


CASES = [
    ("malformed JSON", dict(content=b'{"model": "aligngate", "messages": ['), 400, ("JSON",), None),
    ("body is a list", dict(body=[1, 2]), 400, ("JSON object",), None),
    ("empty body", dict(content=b""), 400, (), None),
    ("missing messages", dict(body={"model": "aligngate"}), 400, ("messages",), "messages"),
    ("empty messages", dict(body={**GOOD, "messages": []}), 400, ("messages",), "messages"),
    ("unknown role", dict(body={**GOOD, "messages": [{"role": "wizard", "content": "x"}]}), 400,
     ("role",), "messages.0.role"),
    ("content not text", dict(body={**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
     400, ("messages",), None),
    ("max_tokens zero", dict(body={**GOOD, "max_tokens": 0}), 400, ("max_tokens",), "max_tokens"),
    ("max_tokens beyond context", dict(body={**GOOD, "max_tokens": 100_000}), 400, ("max_tokens", "context"),
     "max_tokens"),
    ("prompt beyond context", dict(body={**GOOD, "messages": [{"role": "user", "content": "x" * 600}]}), 400,
     ("context",), "messages"),
    ("n zero", dict(body={**GOOD, "n": 0}), 400, ("n",), "n"),
    ("n above the gateway limit", dict(body={**GOOD, "n": 9}), 400, ("at most 8",), "n"),
    ("n huge", dict(body={**GOOD, "n": 10_000}), 400, ("n",), "n"),
    ("temperature out of range", dict(body={**GOOD, "temperature": 7}), 400, ("temperature",), "temperature"),
    ("top_logprobs without logprobs", dict(body={**GOOD, "top_logprobs": 3}), 400, ("logprobs",), "top_logprobs"),
    ("empty stop", dict(body={**GOOD, "stop": [""]}), 400, ("stop",), "stop"),
    ("wrong type", dict(body={**GOOD, "max_tokens": "many"}), 400, ("max_tokens",), "max_tokens"),
]


@pytest.mark.parametrize("name,kw,status,words,param", CASES, ids=[c[0] for c in CASES])
def test_bad_chat_input(gateway, name, kw, status, words, param):
    _assert_error(_post(gateway, **kw), status, *words, param=param)


def test_bad_input_when_streaming_still_gets_a_status(gateway):
    r = _post(gateway, body={**GOOD, "stream": True, "max_tokens": 100_000})
    _assert_error(r, 400, "max_tokens", param="max_tokens")


def test_unknown_model(gateway):
    err = _assert_error(_post(gateway, body={**GOOD, "model": "gpt-9"}), 404, "gpt-9", "aligngate", param="model")
    assert err["code"] == "model_not_found"


def test_oversized_body_413(gateway):
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    _assert_error(_post(gateway, body=big), 413, "limit")


def test_oversized_chunked_body_413(gateway):
    def gen():
        yield b'{"model": "aligngate", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 50_000
        yield b'"}]}'

    r = httpx.post(gateway + CHAT, content=gen(), headers={"content-type": "application/json"}, timeout=60)
    _assert_error(r, 413, "limit")


def test_wrong_content_type_415(gateway):
    r = _post(gateway, content=json.dumps(GOOD).encode(), headers={"content-type": "text/plain"})
    _assert_error(r, 415, "application/json")
    r = httpx.post(gateway + CHAT, data={"model": "aligngate"}, timeout=30)  # form-encoded
    _assert_error(r, 415, "application/json")


def test_completions_bad_input(gateway):
    _assert_error(_post(gateway, "/v1/completions", {"model": "aligngate", "prompt": ["a", "b"]}), 400, "one prompt")
    _assert_error(_post(gateway, "/v1/completions", {"model": "aligngate"}), 400, "prompt", param="prompt")
    _assert_error(_post(gateway, "/v1/completions", {"model": "aligngate", "prompt": "x", "logprobs": 99}), 400,
                  "logprobs")


def test_wrong_method_and_path(gateway):
    _assert_error(httpx.get(gateway + CHAT), 405)
    _assert_error(httpx.get(gateway + "/v1/nope"), 404)


@pytest.fixture(scope="module")
def offline_gateway(start_gateway, session_dir):
    """A gateway whose only version is a remote server that is not there: never ready."""
    from tests.conftest import free_port

    versions = [{"name": "offline", "url": f"http://127.0.0.1:{free_port()}", "weight": 1}]
    return start_gateway("gateway-offline", env={"ALIGNGATE_VERSIONS": json.dumps(versions)}, wait="health")


def test_engine_not_ready_503_with_retry_after(offline_gateway):
    r = _post(offline_gateway, body={**GOOD, "model": "aligngate"})
    err = _assert_error(r, 503, "retry")
    assert err["code"] == "engine_not_ready" and int(r.headers["retry-after"]) > 0
    ready = httpx.get(offline_gateway + "/ready", timeout=30)
    assert ready.status_code == 503 and ready.json()["versions"]["offline"]["ready"] is False
    assert int(ready.headers["retry-after"]) > 0
    assert httpx.get(offline_gateway + "/health").status_code == 200
