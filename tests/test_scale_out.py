"""Scale-out on one machine: 2 gateway processes sharing one real `redis-server`, in front of 2 real vLLM OpenAI
servers (the documented deployment in deploy/, on loopback).

Each gateway has the same configuration:
  - `stable`: remote, both vLLM servers as its backends (`urls`), weight 0.7
  - `canary`: remote, the second vLLM server, weight 0.3
  - `valued`: the tiny default policy with its value head, in-process, weight 0 (pinned by name), with the reward
    read at EOS — the reward path that goes through the two-tier reward cache (remote vLLM servers return no
    in-pass reward).

Shown: consistent routing (the same `user` gets the same version from both gateways, exactly the version the
bucket function predicts, and the split over users follows the weights); the shared reward cache (a reward
computed through gateway 1 is a Redis hit on gateway 2); the shared response log (feedback on gateway 2 for an
answer gateway 1 gave); shared canary state (a set-weight on gateway 1's admin API reaches gateway 2's router).

Shared rate limits across the two replicas: PLACEHOLDER — being built by another engineer (issue 7 item 1);
their test belongs here, against these same two gateways (`scale_out` fixture), once it lands.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from benchmarks.procs import start_aligngate, start_vllm_server
from serve.rollout.router import Router
from tests.promtext import metric
from tests.redis_fixture import REDIS_BIN, RedisServer
from tests.stall import stall_signature

# the module's fixture (two vLLM servers, two gateways one after the other) is charged to its first test
pytestmark = pytest.mark.timeout(1800)

ADMIN_KEY = "scale-out-admin"
WEIGHTS = {"stable": 0.7, "canary": 0.3}
USERS = 240


@pytest.fixture(scope="module")
def scale_out(session_dir, cache_dir):
    import os

    if not os.path.exists(REDIS_BIN):
        pytest.skip("redis-server not installed (bash .ci/setup --with-redis)")
    redis = RedisServer().start()
    model = str(cache_dir / "models" / "default-stable")
    procs = []
    try:
        with ThreadPoolExecutor(2) as pool:  # the two vLLM servers load side by side
            futs = [pool.submit(start_vllm_server, f"scale-vllm-{i}", session_dir, model, "policy") for i in (1, 2)]
            servers = []
            for f in futs:
                proc, url = f.result()
                procs.append(proc)
                servers.append(url)
        versions = [
            {"name": "stable", "urls": servers, "remote_model": "policy", "weight": WEIGHTS["stable"]},
            {"name": "canary", "url": servers[1], "remote_model": "policy", "weight": WEIGHTS["canary"]},
            {"name": "valued", "model": model, "weight": 0},
        ]
        env = {"ALIGNGATE_VERSIONS": json.dumps(versions), "ALIGNGATE_REDIS_URL": redis.url,
               "ALIGNGATE_ADMIN_KEY": ADMIN_KEY, "ALIGNGATE_REWARD_POSITION": "eos",
               "ALIGNGATE_CANARY__TICK_S": "0.5"}
        # One gateway after the other: each builds an in-process engine, and two engine start-ups side by side on
        # 2 cores (with the two vLLM servers up) once stalled past the 300 s wait in CI (stop 13). A start that
        # hangs anyway is the gateway's own business now: past its deadline it kills that engine and retries
        # (serve/engines/engine_start.py).
        gateways = []
        for i in (1, 2):
            gw_env = {**env, "ALIGNGATE_CACHE_DIR": str(session_dir / f"scale-gw-{i}"),
                      "ALIGNGATE_ENGINE_START_TIMEOUT_S": "240"}
            try:
                proc, url = start_aligngate(f"scale-gateway-{i}", session_dir, env=gw_env, timeout=400)
            except TimeoutError as e:
                # Quarantine for the one known failure, matched by its own signature in this gateway's log
                # (tests/stall.py); any other failure to start fails the tests.
                log = (session_dir / f"scale-gateway-{i}.log").read_text(errors="replace")
                if (sig := stall_signature(log, now=datetime.now())) is None:
                    pytest.fail(f"scale-gateway-{i} did not become ready, and not by the known stall: {e}")
                pytest.skip(f"KNOWN STALL (issue 21), quarantined because its signature matched: {sig}. Only this "
                            f"signature skips; any other start failure fails. Log tail: {str(e)[-600:]}")
            procs.append(proc)
            gateways.append(url)
        yield {"gateways": gateways, "servers": servers, "redis": redis}
    finally:
        for p in reversed(procs):  # gateways first, then the vLLM servers behind them
            p.stop()
        redis.stop()


def _unlabelled(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {url}/metrics")


def _chat(url: str, content: str, **extra) -> httpx.Response:
    body = {"model": "aligngate", "max_tokens": 2, "temperature": 0.0,
            "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


def test_consistent_routing_across_replicas(scale_out):
    gw1, gw2 = scale_out["gateways"]
    users = [f"user-{i}" for i in range(USERS)]

    def version(url: str, user: str) -> str:
        r = _chat(url, "hi", user=user)
        assert r.status_code == 200, r.text
        assert r.json()["aligngate"]["routed_by"] == "sticky"
        return r.headers["x-aligngate-version"]

    with ThreadPoolExecutor(8) as pool:
        v1 = list(pool.map(lambda u: version(gw1, u), users))
        v2 = list(pool.map(lambda u: version(gw2, u), users))
    assert v1 == v2, [(u, a, b) for u, a, b in zip(users, v1, v2) if a != b]

    # exactly the bucket owner the router's own function predicts, in any process
    predicted = Router("aligngate", ["stable", "canary", "valued"], {**WEIGHTS, "valued": 0.0})
    assert v1 == [predicted.route("aligngate", u).version for u in users]
    # and the split over users follows the weights (binomial, 4.5 standard deviations)
    share = v1.count("canary") / USERS
    sd = math.sqrt(WEIGHTS["canary"] * (1 - WEIGHTS["canary"]) / USERS)
    assert abs(share - WEIGHTS["canary"]) < 4.5 * sd, share
    assert set(v1) == {"stable", "canary"}


def test_stable_spreads_over_both_backends(scale_out):
    """`stable` lists both vLLM servers: both receive requests (vLLM's own request counter, read on each)."""
    gw1, _ = scale_out["gateways"]

    def served(server: str) -> float:
        return metric(server, "vllm:request_success_total")

    before = [served(s) for s in scale_out["servers"]]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: httpx.post(gw1 + "/v1/chat/completions", timeout=120, json={
            "model": "stable", "max_tokens": 16, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"q{i}"}]}).status_code, range(32)))
    assert codes == [200] * 32
    after = [served(s) for s in scale_out["servers"]]
    assert all(a > b for a, b in zip(after, before)), (before, after)


def test_reward_cache_shared_through_redis(scale_out):
    gw1, gw2 = scale_out["gateways"]
    import redis as redis_lib

    r = redis_lib.Redis.from_url(scale_out["redis"].url)
    prompt = f"shared cache {time.time_ns()}"
    first = _chat(gw1, prompt, model="valued", max_tokens=4)
    assert first.status_code == 200, first.text
    rw1 = first.json()["aligngate"]["reward"]
    assert rw1["source"] == "value_head_eos" and rw1["cached"] is False, rw1

    deadline = time.monotonic() + 60  # the gateway writes to Redis from a background task
    while not r.keys("aligngate:reward:*") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.keys("aligngate:reward:*"), "gateway 1 never wrote the reward to Redis"

    hits_before = metric(gw2, "aligngate_reward_cache_lookups_total", tier="redis", result="hit")
    computes_before = _unlabelled(gw2, "aligngate_reward_cache_computes_total")
    second = _chat(gw2, prompt, model="valued", max_tokens=4)
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]  # greedy: same answer
    rw2 = second.json()["aligngate"]["reward"]
    assert rw2["cached"] is True, rw2
    assert rw2["score"] == pytest.approx(rw1["score"], abs=1e-6)
    assert metric(gw2, "aligngate_reward_cache_lookups_total", tier="redis", result="hit") == hits_before + 1
    # gateway 2 never computed it: its LRU had nothing, Redis had it
    assert _unlabelled(gw2, "aligngate_reward_cache_computes_total") == computes_before


def test_feedback_on_the_other_replica(scale_out):
    """The response log is in Redis: an answer from gateway 1 can be rated through gateway 2."""
    gw1, gw2 = scale_out["gateways"]
    answer = _chat(gw1, "rate me", user="rater")
    assert answer.status_code == 200
    rid = answer.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        fb = httpx.post(gw2 + "/v1/feedback", json={"response_id": rid, "rating": 0.8}, timeout=60)
        if fb.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert fb.status_code == 200, fb.text


def test_canary_weight_set_on_one_replica_reaches_the_other(scale_out):
    gw1, gw2 = scale_out["gateways"]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def weights(url: str) -> dict:
        data = httpx.get(url + "/v1/models", timeout=30).json()["data"]
        return {m["id"]: m["aligngate"]["weight"] for m in data if m["aligngate"]["kind"] == "version"}

    assert weights(gw2)["canary"] == pytest.approx(WEIGHTS["canary"])
    r = httpx.post(gw1 + "/admin/canary/set-weight", headers=headers, timeout=60,
                   json={"version": "canary", "weight": 0.55, "reason": "scale-out test"})
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    while weights(gw2)["canary"] != pytest.approx(0.55) and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    seen_after = time.monotonic() - t0
    assert weights(gw2)["canary"] == pytest.approx(0.55), weights(gw2)
    print(f"\ngateway 2 applied gateway 1's set-weight after {seen_after:.2f} s (tick 0.5 s)")
    # the audit log is shared too: gateway 2 shows the action taken on gateway 1
    audit = httpx.get(gw2 + "/admin/audit", headers=headers, timeout=30).json()["entries"]
    assert any(e.get("why") == "scale-out test" and e.get("action") == "set-weight" for e in audit), audit[-3:]
    # and the routing of both replicas agrees under the new weights
    users = [f"after-{i}" for i in range(40)]
    v1 = [_chat(gw1, "hi", user=u).headers["x-aligngate-version"] for u in users]
    v2 = [_chat(gw2, "hi", user=u).headers["x-aligngate-version"] for u in users]
    assert v1 == v2


def test_gate_inputs_shared_by_both_replicas(scale_out):
    """The canary gate's window on each replica holds both replicas' requests (serve/rollout/stats_sync.py), so each
    controller judges the whole canary's traffic, not its own half of it."""
    gw1, gw2 = scale_out["gateways"]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def canary_requests(url: str) -> int:
        status = httpx.get(url + "/admin/status", headers=headers, timeout=30).json()
        return next(v for v in status["versions"] if v["name"] == "canary")["window"]["requests"]

    time.sleep(2.0)  # earlier tests' requests reach the other replica's window within a tick (0.5 s): let them land
    before1, before2 = canary_requests(gw1), canary_requests(gw2)
    n = 12
    for i in range(n):
        assert _chat(gw1 if i % 3 else gw2, f"gate inputs {i}", model="canary").status_code == 200
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30 and not (canary_requests(gw1) - before1 >= n and canary_requests(gw2) - before2 >= n):
        time.sleep(0.2)
    got1, got2 = canary_requests(gw1) - before1, canary_requests(gw2) - before2
    assert got1 == n and got2 == n, (got1, got2)  # 8 sent to gateway 1 and 4 to gateway 2: both windows hold 12
    print(f"\ngate window: {n} canary requests (8 via gateway 1, 4 via gateway 2) seen by both replicas after "
          f"{time.monotonic() - t0:.2f} s")
