"""Issue 30 item 2: a client's logit_bias that would lift a token a constrained request bans (control characters
in a JSON answer or a tool call) is a 400 naming the token ids, never overwritten without a word; a bias that
agrees with the ban (-100) and biases on other tokens are kept."""

from __future__ import annotations

import httpx
import pytest

from serve.api.structured import control_char_token_ids
from serve.config import VersionSpec
from serve.engines.engine import EngineBadRequest, GenerationRequest


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """An in-process engine object (not started) with the embedded default's tokenizer."""
    from training.tokenizer import save_tokenizer
    from serve.engines.engine_vllm import VLLMEngine

    d = tmp_path_factory.mktemp("tok")
    e = VLLMEngine(VersionSpec(name="v", model=str(d)))
    e.tokenizer = save_tokenizer(d)
    e.vocab_size = len(e.tokenizer)
    return e


def _ids(tok, ch: str) -> int:
    return next(i for i in range(len(tok)) if tok.decode([i], skip_special_tokens=False) == ch)


@pytest.mark.parametrize("forced", [False, True])
def test_conflicting_bias_on_a_banned_token_is_refused(engine, forced):
    bs, lf = _ids(engine.tokenizer, "\x08"), _ids(engine.tokenizer, "\n")
    assert bs in control_char_token_ids(engine.tokenizer, forced)
    req = GenerationRequest(request_id="r", kind="chat", messages=[], logit_bias={bs: 5.0, 65: 3.0})
    with pytest.raises(EngineBadRequest) as e:
        engine._logit_bias(req, {}, True, forced)
    assert e.value.param == "logit_bias" and f"token ids {bs}, which" in e.value.message  # 65 is no conflict
    # a newline is banned only when the whole answer is JSON or a forced call
    req = GenerationRequest(request_id="r", kind="chat", messages=[], logit_bias={lf: 100.0})
    if forced:
        with pytest.raises(EngineBadRequest, match=str(lf)):
            engine._logit_bias(req, {}, True, forced)
    else:
        assert engine._logit_bias(req, {}, True, forced)["logit_bias"][lf] == 100.0


def test_agreeing_bias_and_other_tokens_are_kept(engine):
    bs = _ids(engine.tokenizer, "\x08")
    req = GenerationRequest(request_id="r", kind="chat", messages=[], logit_bias={bs: -100.0, 65: 7.0})
    out = engine._logit_bias(req, {"logit_bias": {6: -100.0}}, True, True)["logit_bias"]
    assert out[bs] == -100.0 and out[65] == 7.0 and out[6] == -100.0
    # an unconstrained request keeps the client's bias on the same token (no ban applies)
    req = GenerationRequest(request_id="r", kind="chat", messages=[], logit_bias={bs: 5.0})
    assert engine._logit_bias(req, {}, False, False)["logit_bias"] == {bs: 5.0}


def test_under_bans_names_every_conflicting_id():
    from serve.api.structured import under_bans

    with pytest.raises(EngineBadRequest) as e:
        under_bans({3: 0.0, 1: 1.0, 2: -100.0, 9: 4.0}, {1: -100.0, 2: -100.0, 3: -100.0}, "this request")
    assert "token ids 1, 3, which" in e.value.message  # 2 agrees with the ban


# --- over HTTP, on the default gateway ----------------------------------------------------------------------
def test_http_json_mode_conflict_is_400_naming_the_ids(gateway, cache_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(cache_dir / "models" / "default-stable"))
    bs = _ids(tok, "\x08")
    body = {"model": "stable", "messages": [{"role": "user", "content": "12+7="}], "max_tokens": 8,
            "temperature": 0, "response_format": {"type": "json_object"}}
    r = httpx.post(gateway + "/v1/chat/completions", json={**body, "logit_bias": {str(bs): 10}}, timeout=120)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "logit_bias" and err["code"] == "invalid_value" and str(bs) in err["message"]
    # agreeing with the ban is fine
    r = httpx.post(gateway + "/v1/chat/completions", json={**body, "logit_bias": {str(bs): -100}}, timeout=120)
    assert r.status_code == 200, r.text
