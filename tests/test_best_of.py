"""Reward-guided serving on a real gateway (issue 20): one `aligngate serve` with two in-process vLLM versions from
a YAML config, the official openai client. `stable` allows best_of up to 4 and takes one request at a time (so a
burst queues: the forced overload of adaptive k); `canary` has a reward floor every answer is below, falling back
to stable. The logic's fast tests are in test_best_of_unit.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from tests.promtext import metric

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "12+7="}]


@pytest.fixture(scope="module")
def url(start_gateway, cache_dir, session_dir) -> str:
    models = cache_dir / "models"
    cfg = {
        "cache_dir": str(cache_dir),
        "limits": {"max_tokens_cap": 12},
        "versions": [
            {"name": "stable", "model": str(models / "default-stable"), "weight": 1.0, "best_of_max": 4,
             "max_concurrency": 1},
            # a short context: the engine's warm-up must fit it (256 once failed every start of this version)
            {"name": "canary", "model": str(models / "default-canary"), "weight": 0.0, "best_of_max": 2,
             "max_model_len": 256, "max_concurrency": 1, "best_of_adaptive": False,
             # far above any value: every canary answer hits the floor (the test needs hits, not a tuned floor)
             "reward_floor": 1.0e9, "fallback_version": "stable", "fallback_budget_s": 120},
        ],
    }
    path = session_dir / "best-of.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return start_gateway("gateway-best-of", "--config", str(path))


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)


def chat(client, **kw):
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(messages=MSG, **kw)


def test_best_of_returns_the_highest_scored_candidate(client):
    r = chat(client, model="stable", temperature=1.0, seed=11, extra_body={"best_of": 4})
    ag = r.model_extra["aligngate"]
    bo = ag["best_of"]
    assert (bo["k"], bo["requested"], bo["rule"]) == (4, 4, "max")
    scores = bo["scores"]
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)
    assert bo["chosen"] == max(range(4), key=lambda i: (scores[i], -i))
    assert ag["reward"]["score"] == scores[bo["chosen"]]
    assert r.usage.completion_tokens == sum(bo["completion_tokens"])  # every candidate's tokens are counted
    # the answer is that candidate: candidate i is the same request with seed + i
    again = chat(client, model="stable", temperature=1.0, seed=11 + bo["chosen"])
    assert again.choices[0].message.content == r.choices[0].message.content
    assert again.model_extra["aligngate"]["reward"]["score"] == pytest.approx(scores[bo["chosen"]], abs=1e-4)


def test_best_of_one_matches_a_plain_request(client):
    plain = chat(client, model="stable", temperature=0.0, seed=3)
    one = chat(client, model="stable", temperature=0.0, seed=3, extra_body={"best_of": 1})
    assert one.choices[0].message.content == plain.choices[0].message.content
    assert one.usage.completion_tokens == plain.usage.completion_tokens
    bo = one.model_extra["aligngate"]["best_of"]
    assert (bo["k"], bo["chosen"]) == (1, 0)
    assert bo["scores"][0] == pytest.approx(plain.model_extra["aligngate"]["reward"]["score"], abs=1e-4)
    # the legacy completions endpoint takes best_of natively
    c = client.completions.create(model="stable", prompt="3+4=", max_tokens=4, temperature=1.0, seed=5, best_of=2)
    assert c.model_extra["aligngate"]["best_of"]["k"] == 2


def test_best_of_stream_sends_the_chosen_answer(client):
    body = chat(client, model="stable", temperature=1.0, seed=21, extra_body={"best_of": 3})
    text, tail = "", None
    for chunk in chat(client, model="stable", temperature=1.0, seed=21, stream=True, extra_body={"best_of": 3}):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if (chunk.model_extra or {}).get("aligngate", {}).get("best_of"):
            tail = chunk.model_extra["aligngate"]
    assert text == body.choices[0].message.content
    assert tail["best_of"]["chosen"] == body.model_extra["aligngate"]["best_of"]["chosen"]


def test_adaptive_k_drops_under_overload(client, url):
    def one(i):
        return chat(client, model="stable", temperature=1.0, seed=100 + i, extra_body={"best_of": 4})

    with ThreadPoolExecutor(4) as pool:  # stable takes one request at a time: three queue behind the first
        answers = list(pool.map(one, range(4)))
    ks = [a.model_extra["aligngate"]["best_of"]["k"] for a in answers]
    assert min(ks) == 1, ks  # a request admitted while others queue samples one candidate
    assert all(a.model_extra["aligngate"]["best_of"]["requested"] == 4 for a in answers)
    assert metric(url, "aligngate_best_of_shrunk_total", version="stable") >= 1
    assert metric(url, "aligngate_best_of_k_count", version="stable") >= 4


def test_fixed_k_when_adaptive_is_off(client, url):
    # canary: one request at a time, best_of_adaptive false: queued requests still sample the k they asked for
    def one(i):
        return chat(client, model="canary", temperature=1.0, seed=200 + i, extra_body={"best_of": 2})

    before = metric(url, "aligngate_best_of_k_count", version="canary") or 0
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(one, range(3)))
    count = metric(url, "aligngate_best_of_k_count", version="canary") - before
    assert count == 3
    assert metric(url, "aligngate_best_of_k_last", version="canary") == 2
    assert (metric(url, "aligngate_best_of_shrunk_total", version="canary") or 0) == 0


def test_floor_falls_back_to_stable_and_says_so(client, url):
    r = chat(client, model="canary", temperature=0.0, seed=1)
    ag = r.model_extra["aligngate"]
    fb = ag["fallback"]
    assert (fb["from"], fb["to"], fb["answered_by_fallback"]) == ("canary", "stable", True)
    assert fb["reward"] < fb["floor"]
    assert ag["version"] == "stable"
    # the answer is stable's: the same as asking stable directly (greedy)
    direct = chat(client, model="stable", temperature=0.0, seed=1)
    assert r.choices[0].message.content == direct.choices[0].message.content
    raw = httpx.post(url + "/v1/chat/completions", json={"model": "canary", "messages": MSG, "max_tokens": 4,
                                                         "temperature": 0}, timeout=300)
    assert raw.headers["x-aligngate-version"] == "stable"
    assert metric(url, "aligngate_reward_floor_hits_total", version="canary", outcome="fallback") >= 2
    # a plain stream is never switched to another answer: no floor on it
    chunks = list(chat(client, model="canary", temperature=0.0, stream=True))
    assert not any((c.model_extra or {}).get("aligngate", {}).get("fallback") for c in chunks)


@pytest.mark.parametrize("kw,needle", [
    ({"best_of": 0}, "k >= 1"),
    ({"best_of": 5}, "at most 4"),
    ({"best_of": 2, "n": 2, "temperature": 1.0}, "cannot be combined with n"),
    ({"best_of": "2"}, "integer"),
    ({"best_of": 2.5}, "integer"),
])
def test_bad_best_of_is_a_400(client, kw, needle):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model="stable", extra_body=kw)
    err = e.value.body
    assert err["param"] in ("best_of", "body.best_of"), err
    assert needle in err["message"], err
    assert set(err) >= {"message", "type", "param", "code"}
