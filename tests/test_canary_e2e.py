"""Canary rollouts end to end with real parts: a real vLLM server behind an `aligngate serve` process whose
`stable` and `canary` versions both point at it (cheap to start; faults are injected in the gateway's request
path, the engine stays real). Admin auth, split accuracy over 500 real requests, stickiness, automatic
rollback on injected errors and on injected latency, and a clean canary promoted to 100%."""

from __future__ import annotations

from tests.waits import wait_for as _wait

import asyncio
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.bench_canary import ADMIN_KEY, admin, drive, fault_to_rollback, gateway_env
from benchmarks.bench_canary import tiny_model as tiny_model_dir
from benchmarks.procs import free_port, start_aligngate, start_vllm_server
from serve.rollout.router import Router


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    return tiny_model_dir()


@pytest.fixture(scope="module")
def canary_vllm(tiny_model, session_dir):
    """One real vLLM server for every gateway in this module (each gateway's versions point at it)."""
    proc, url = start_vllm_server("vllm-canary", session_dir, str(tiny_model), "policy")
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def canary_gw(canary_vllm, session_dir):
    # Both versions are the same server, so any latency gap is noise: a 50 ms allowance (default 10 ms) keeps a
    # loaded CI machine from failing the clean promotion, while the injected +1 s latency still breaches at once.
    env = gateway_env(canary_vllm, str(session_dir / "cgw"), ALIGNGATE_CANARY__LATENCY_SLACK_S="0.05")
    proc, url = start_aligngate("gateway-canary", session_dir, env=env)
    yield url
    proc.stop()


def test_admin_refuses_without_key(canary_gw):
    for method, path, body in (("GET", "/admin/status", None), ("POST", "/admin/canary/start", {"version": "canary"}),
                               ("POST", "/admin/canary/rollback", {}), ("DELETE", "/admin/versions/canary", None),
                               ("POST", "/admin/versions", {"name": "x", "url": "http://h:1"})):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-admin-key": "wrong"}):
            r = httpx.request(method, canary_gw + path, json=body, headers=headers, timeout=10)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "invalid_admin_key"
    assert httpx.get(canary_gw + "/admin/status", headers={"x-admin-key": ADMIN_KEY}, timeout=10).status_code == 200
    st = admin(canary_gw, "GET", "/admin/status")
    assert st["stable"] == "stable" and {v["name"] for v in st["versions"]} == {"stable", "canary"}
    # inference does not need (or accept as special) the admin key; the admin API is in the OpenAPI schema
    assert httpx.post(canary_gw + "/v1/chat/completions", timeout=60, json={
        "model": "aligngate", "messages": [{"role": "user", "content": "1+1="}], "max_tokens": 2}).status_code == 200
    paths = httpx.get(canary_gw + "/openapi.json", timeout=10).json()["paths"]
    assert {"/admin/canary/start", "/admin/canary/rollback", "/admin/versions", "/admin/status"} <= set(paths)


@pytest.mark.asyncio
async def test_split_and_stickiness_through_gateway(canary_gw):
    w = 0.2
    admin(canary_gw, "POST", "/admin/canary/set-weight", {"version": "canary", "weight": w, "reason": "split test"})
    try:
        expect = Router("aligngate", ["stable", "canary"], {"stable": 1 - w, "canary": w})
        users = [f"split-{i}" for i in range(500)]
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(timeout=60) as c:
            async def one(u):
                async with sem:
                    r = await c.post(canary_gw + "/v1/chat/completions", json={
                        "model": "aligngate", "messages": [{"role": "user", "content": "2+2="}], "max_tokens": 1,
                        "user": u})
                    assert r.status_code == 200, r.text
                    return r.headers["x-aligngate-version"]
            got = await asyncio.gather(*(one(u) for u in users))
            again = await asyncio.gather(*(one(u) for u in users[:60]))  # same users again: same versions
            # x-session-id is the sticky key when there is no `user`
            r = [(await c.post(canary_gw + "/v1/chat/completions", headers={"x-session-id": "sess-7"}, json={
                "model": "aligngate", "messages": [{"role": "user", "content": "2+2="}], "max_tokens": 1})
                  ).headers["x-aligngate-version"] for _ in range(5)]
        hits = sum(v == "canary" for v in got)
        n = len(users)
        assert abs(hits - n * w) <= 2.576 * math.sqrt(n * w * (1 - w)), hits  # binomial 99% interval
        assert list(again) == got[:60]
        assert got == [expect.route("aligngate", u).version for u in users]  # same buckets as any replica
        assert len(set(r)) == 1 and r[0] == expect.route("aligngate", "sess-7").version
    finally:
        admin(canary_gw, "POST", "/admin/canary/set-weight", {"version": "canary", "weight": 0, "reason": "reset"})


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["error", "latency"])
async def test_injected_fault_rolled_back_automatically(canary_gw, kind):
    r = await fault_to_rollback(canary_gw, kind, rate=20.0, warmup_s=3.0)
    assert r["rolled_back"], r
    assert r["fault_to_rollback_s"] <= 10, r
    assert ("error rate" in r["reason"]) if kind == "error" else ("ttft" in r["reason"] or "e2e" in r["reason"]), r
    assert r["failures_on_canary"] == r["client_visible_failures"]  # only canary requests could fail
    assert r["canary_answers_after_rollback"] == 0 and r["failures_after_rollback"] == 0
    st = admin(canary_gw, "GET", "/admin/status")
    assert st["rollout"]["state"] == "rolled_back" and st["rollout"]["rolled_back_by"] == "controller"
    assert {v["name"]: v["weight"] for v in st["versions"]}["canary"] == 0
    audit = admin(canary_gw, "GET", "/admin/audit", None)["entries"]
    last_rb = [e for e in audit if e["action"] == "rollback"][-1]
    assert last_rb["who"] == "controller" and last_rb["why"] == st["rollout"]["reason"]
    print(f"\n{kind}: {r}")


def _chat(url: str, model: str = "aligngate", **extra) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "3+4="}], "max_tokens": 2, **extra})


def test_register_exported_dir_gate_force_drain_unload(canary_gw, tiny_model, tmp_path):
    """An exported directory whose manifest says FAIL is refused; forced, it is registered (audited), its
    in-process engine starts at runtime, answers, then is drained and unloaded."""
    d = tmp_path / "v2"
    shutil.copytree(tiny_model, d)
    (d / "manifest.json").write_text(json.dumps({"version": "v2", "gate": {
        "verdict": "FAIL", "reasons": ["win rate vs incumbent 0.41 < 0.55"]}}))
    key = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(canary_gw + "/admin/versions", headers=key, json={"name": "v2", "model": str(d)}, timeout=30)
    assert r.status_code == 409 and "win rate" in r.json()["error"]["message"], r.text
    r = httpx.post(canary_gw + "/admin/versions", headers=key, timeout=30,
                   json={"name": "v2", "model": str(d), "force": True, "reason": "known regression, testing"})
    assert r.status_code == 201, r.text
    entry = admin(canary_gw, "GET", "/admin/audit")["entries"][-1]
    assert entry["action"] == "register-forced" and entry["who"] == "admin" and entry["why"].startswith("known")
    assert entry["details"]["gate"]["verdict"] == "FAIL"
    # a forced FAIL can be canaried; weight 0 meanwhile: routed traffic never lands there
    def v2_ready():
        v = {x["name"]: x for x in admin(canary_gw, "GET", "/admin/versions")["versions"]}["v2"]
        # a start past its deadline is killed and retried by the gateway (start_retry_in_s); any other error is final
        assert v["error"] is None or "start_retry_in_s" in v, f"v2 engine failed to start: {v['error']}"
        return v["ready"]

    _wait(v2_ready, 480, "v2 engine ready", 1.0)
    r = _chat(canary_gw, "v2")
    assert r.status_code == 200 and r.headers["x-aligngate-version"] == "v2"
    assert all(_chat(canary_gw, user=f"reg-{i}").headers["x-aligngate-version"] != "v2" for i in range(10))
    r = httpx.delete(canary_gw + "/admin/versions/v2", headers=key, params={"reason": "done"}, timeout=30)
    assert r.status_code == 202, r.text
    _wait(lambda: "v2" not in [m["id"] for m in httpx.get(canary_gw + "/v1/models", timeout=10).json()["data"]],
          60, "v2 unloaded")
    assert _chat(canary_gw, "v2").status_code == 404
    assert admin(canary_gw, "GET", "/admin/audit")["entries"][-1]["action"] == "unload"


def test_cli_register_remote_and_status_table(canary_gw, canary_vllm):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "serve.cli", *args, "--url", canary_gw, "--admin-key", ADMIN_KEY],
                              capture_output=True, text=True, timeout=60)

    r = cli("versions", "register", "r2", "--remote-url", canary_vllm, "--reason", "cli test")
    assert r.returncode == 0, r.stderr
    out = cli("versions", "list").stdout
    assert "r2" in out and "stable" in out
    table = cli("canary", "status").stdout
    assert any(line.split()[:3] == ["VERSION", "ROLE", "WEIGHT"] for line in table.splitlines()), table
    assert any(line.startswith("r2 ") for line in table.splitlines())
    bad = subprocess.run([sys.executable, "-m", "serve.cli", "canary", "status", "--url", canary_gw, "--admin-key",
                          "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "401" in bad.stderr
    assert cli("versions", "unload", "r2").returncode == 0


class RedisProc:
    def __init__(self, dir: Path):
        self.port, self.dir, self.p = free_port(), dir, None
        dir.mkdir(parents=True, exist_ok=True)

    def start(self):
        self.p = subprocess.Popen(["/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                                   "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        _wait(lambda: _ping(redis.Redis(port=self.port)), 10, "redis up", 0.1)

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


def _ping(r) -> bool:
    try:
        return bool(r.ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    rp = RedisProc(tmp_path_factory.mktemp("redis"))
    rp.start()
    yield rp
    rp.stop()


def test_replicas_share_state_and_restarted_replica_resumes(canary_vllm, redis_server, session_dir):
    env = gateway_env(canary_vllm, str(session_dir / "replicas"), ALIGNGATE_REDIS_URL=redis_server.url,
                      ALIGNGATE_REDIS_PREFIX="t-replicas")
    a_proc, a = start_aligngate("gateway-replica-a", session_dir, env=env)
    b_proc, b = start_aligngate("gateway-replica-b", session_dir, env=env)
    try:
        admin(a, "POST", "/admin/canary/start", {"version": "canary", "stages": [0.1, 0.3, 1.0],
                                                 "min_requests": 1_000_000, "reason": "replicas"})

        def view(url):
            st = admin(url, "GET", "/admin/status")
            ro = st["rollout"]
            return (ro and ro["state"], ro and ro["stage"], ro and ro["stage_started_at"],
                    {v["name"]: v["weight"] for v in st["versions"]})

        _wait(lambda: view(b) == view(a), 5, "replica B to see A's rollout")
        assert view(b)[:2] == ("running", 0) and view(b)[3]["canary"] == pytest.approx(0.1)
        users = [f"rep-{i}" for i in range(40)]
        assert [_chat(a, user=u).headers["x-aligngate-version"] for u in users] == \
               [_chat(b, user=u).headers["x-aligngate-version"] for u in users]
        admin(b, "POST", "/admin/canary/promote", {"reason": "from B"})  # either replica can act
        _wait(lambda: view(a)[1] == 1, 5, "replica A to see B's promotion")
        assert view(a) == view(b) and view(a)[3]["canary"] == pytest.approx(0.3)

        b_proc.stop()  # restart B: it resumes from the store, not from its config (canary weight 0 there)
        admin(a, "POST", "/admin/canary/pause", {"reason": "while B restarts"})
        b_proc, b = start_aligngate("gateway-replica-b2", session_dir, env=env)
        assert view(b) == view(a) and view(b)[:2] == ("paused", 1)
        assert [_chat(a, user=u).headers["x-aligngate-version"] for u in users] == \
               [_chat(b, user=u).headers["x-aligngate-version"] for u in users]

        # Redis goes away: inference goes on, the status says so; Redis back (append-only file): recovers
        redis_server.stop()
        assert _chat(a, user="during-outage").status_code == 200
        _wait(lambda: admin(a, "GET", "/admin/status")["store_error"], 10, "store error reported")
        r = httpx.post(a + "/admin/canary/resume", json={}, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                       timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        redis_server.start()
        _wait(lambda: admin(a, "GET", "/admin/status")["store_error"] is None, 20, "store recovered")
        admin(a, "POST", "/admin/canary/resume", {"reason": "redis back"})
        _wait(lambda: view(b)[0] == "running", 5, "B to see the resume")
        who = {e["action"]: e["who"] for e in admin(b, "GET", "/admin/audit")["entries"]}
        assert who["start"] == who["promote"] == who["pause"] == "admin"
    finally:
        a_proc.stop()
        b_proc.stop()


@pytest.mark.asyncio
async def test_clean_canary_promoted_to_100(canary_gw):
    """Runs last in this module: afterwards `canary` is this gateway's stable version."""
    admin(canary_gw, "POST", "/admin/canary/start", {"version": "canary", "stages": [0.2, 0.5, 1.0],
                                                     "min_requests": 15, "min_duration_s": 1.0, "reason": "clean"})
    stop, results = asyncio.Event(), []
    load = asyncio.create_task(drive(canary_gw, 20.0, stop, results, prefix="clean"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = await asyncio.to_thread(admin, canary_gw, "GET", "/admin/status")
            if st["rollout"]["state"] != "running":
                break
            await asyncio.sleep(0.25)
    finally:
        stop.set()
        await load
    assert st["rollout"]["state"] == "promoted", (st["rollout"], st["last_decision"])
    assert st["stable"] == "canary"
    assert all(r[2] == 200 for r in results)
    actions = [e["action"] for e in admin(canary_gw, "GET", "/admin/audit")["entries"]]
    assert actions[-3:] == ["advance", "advance", "advance"]
