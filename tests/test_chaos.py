"""Chaos with real processes: one `aligngate serve` process with two in-process vLLM engines (the session's tiny
`default-stable` and `default-canary` models) and a real `redis-server` (control-plane store, reward cache,
response log), under concurrent streaming and non-streaming load:

1. SIGKILL the canary's EngineCore process during a rollout: the controller rolls the canary back, the only
   client failures are requests that were in flight on it (a clean 502 or an in-band error event, never a
   hang), requests naming the canary get 503 + Retry-After while it is down, then it restarts by itself and
   /ready recovers.
2. Kill and restart Redis (empty again) under load: zero 5xx.
3. SIGTERM during N streams: every stream finishes, new work gets 503 meanwhile, the process exits 0.

The tests share the gateway in this order (the last one ends it). Few engine starts: 2 + 1 restart.
"""

from __future__ import annotations

from tests.waits import wait_for as _wait

import asyncio
import json
import signal
import time

import httpx
import psutil
import pytest

from benchmarks.procs import start_aligngate
from tests.redis_fixture import redis_server  # noqa: F401  (fixture)

ADMIN_KEY = "chaos-admin-key"
MSG = [{"role": "user", "content": "12+7="}]


def admin(url: str, method: str, path: str, body: dict | None = None) -> dict:
    r = httpx.request(method, url + path, json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def chaos(cache_dir, session_dir, redis_server):  # noqa: F811
    models = cache_dir / "models"
    versions = [{"name": "stable", "model": str(models / "default-stable"), "weight": 1.0},
                {"name": "canary", "model": str(models / "default-canary"), "weight": 0.0}]
    env = {"ALIGNGATE_VERSIONS": json.dumps(versions), "ALIGNGATE_CACHE_DIR": str(session_dir / "chaos-cache"),
           "ALIGNGATE_ADMIN_KEY": ADMIN_KEY, "ALIGNGATE_REDIS_URL": redis_server.url,
           "ALIGNGATE_REDIS_PREFIX": "chaos", "ALIGNGATE_CANARY__TICK_S": "0.25",
           "ALIGNGATE_SUPERVISE_INTERVAL_S": "0.5", "ALIGNGATE_DRAIN_TIMEOUT_S": "120",
           # only the engine's death may end the rollout here: the two tiny policies differ in reward, and this
           # loaded machine in latency — neither is what this test is about
           "ALIGNGATE_CANARY__REWARD_MIN_SAMPLES": "1000000", "ALIGNGATE_CANARY__LATENCY_RATIO": "1000",
           "ALIGNGATE_CANARY__LATENCY_SLACK_S": "60"}
    proc, url = start_aligngate("gateway-chaos", session_dir, env=env)
    yield proc, url
    proc.stop()


# --- load ------------------------------------------------------------------------------------------------------
class Load:
    """Closed-loop load: `workers` clients, each sending one request after the other (half streamed) until
    stopped. Each outcome: (t_start, t_end, status, version, error) — status 200 with an in-band error event
    counts as a failure with status "sse-error"."""

    def __init__(self, url: str, workers: int = 6, max_tokens: int = 24, prefix: str = "u"):
        self.url, self.workers, self.max_tokens, self.prefix = url, workers, max_tokens, prefix
        self.results: list[tuple] = []
        self.stop = asyncio.Event()
        self._n = 0

    async def _one(self, c: httpx.AsyncClient, i: int) -> tuple:
        body = {"model": "aligngate", "messages": MSG, "max_tokens": self.max_tokens, "user": f"{self.prefix}-{i}",
                "stream": i % 2 == 0}
        t0 = time.monotonic()
        try:
            if not body["stream"]:
                r = await c.post(self.url + "/v1/chat/completions", json=body)
                err = None if r.status_code == 200 else r.text[:300]
                return t0, time.monotonic(), r.status_code, r.headers.get("x-aligngate-version"), err
            async with c.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    return t0, time.monotonic(), r.status_code, None, r.text[:300]
                done, err = False, None
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: ") and '"error"' in line:
                        err = line[6:300]
                status = "sse-error" if err else (200 if done else "truncated")
                return t0, time.monotonic(), status, r.headers.get("x-aligngate-version"), err
        except httpx.HTTPError as e:
            return t0, time.monotonic(), "conn-error", None, repr(e)

    async def _worker(self, c: httpx.AsyncClient) -> None:
        while not self.stop.is_set():
            self._n += 1
            self.results.append(await self._one(c, self._n))

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10)) as c:
            await asyncio.gather(*(self._worker(c) for _ in range(self.workers)))

    def failures(self, since: float = 0.0) -> list[tuple]:
        return [r for r in self.results if r[2] != 200 and r[0] >= since]


def _ready(url: str) -> httpx.Response:
    return httpx.get(url + "/ready", params={"verbose": "true"}, timeout=60)


def _engine_core(gateway_pid: int, pid: int) -> psutil.Process:
    """The version's EngineCore: a child of the gateway process, named (by vLLM) after what it is."""
    p = psutil.Process(pid)
    assert p in psutil.Process(gateway_pid).children(recursive=True)
    assert "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())
    return p


# --- 1. the canary's engine dies ------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_kill_canary_engine_under_load(chaos):
    proc, url = chaos
    before = _ready(url).json()
    assert before["ready"], before
    old_pid = before["versions"]["canary"]["engine_pid"]
    core = _engine_core(proc.p.pid, old_pid)
    admin(url, "POST", "/admin/canary/start", {"version": "canary", "stages": [0.5, 1.0], "min_requests": 1_000_000,
                                               "reason": "chaos: kill the canary engine"})
    load = Load(url, workers=6, prefix="kill")
    task = asyncio.create_task(load.run())
    try:
        # traffic on both versions first
        for _ in range(600):
            if sum(1 for r in load.results if r[3] == "canary") >= 6 and len(load.results) >= 12:
                break
            await asyncio.sleep(0.1)
        assert load.failures() == [], load.failures()
        core.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()

        # down: not ready for the canary (its reason says so), naming it gets 503 + Retry-After
        r = await asyncio.to_thread(_wait, lambda: (x := _ready(url)).status_code == 503 and x, 60, "/ready 503")
        assert not r.json()["versions"]["canary"]["ready"] and r.json()["versions"]["stable"]["ready"]
        assert "died" in r.json()["versions"]["canary"]["error"] or "restart" in r.json()["versions"]["canary"]["error"]
        async with httpx.AsyncClient(timeout=60) as c:
            explicit = await c.post(url + "/v1/chat/completions", json={"model": "canary", "messages": MSG,
                                                                         "max_tokens": 2})
        assert explicit.status_code == 503 and explicit.headers["retry-after"], explicit.text

        # the controller rolls the canary back
        st = await asyncio.to_thread(_wait, lambda: (s := admin(url, "GET", "/admin/status"))["rollout"]["state"]
                                     == "rolled_back" and s, 30, "rollback")
        t_rollback = time.monotonic()
        assert st["rollout"]["rolled_back_by"] == "controller" and "engine died" in st["rollout"]["reason"]
        assert {v["name"]: v["weight"] for v in st["versions"]}["canary"] == 0

        # ... and the engine restarts by itself: /ready 200 again, with a new EngineCore process
        r = await asyncio.to_thread(_wait, lambda: (x := _ready(url)).status_code == 200 and x, 300, "ready again")
        t_ready = time.monotonic()
        # the supervisor calls it up once its restart has returned (the engine may serve a moment earlier)
        r = await asyncio.to_thread(_wait, lambda: (x := _ready(url)).json()["versions"]["canary"]["state"] == "up"
                                    and x, 60, "supervisor: canary up")
        await asyncio.sleep(2.0)  # a little more traffic on the recovered gateway
    finally:
        load.stop.set()
        await task
    v = r.json()["versions"]["canary"]
    assert v["restarts"] >= 1 and v["state"] == "up" and v["engine_pid"] != old_pid
    _engine_core(proc.p.pid, v["engine_pid"])
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
    async with httpx.AsyncClient(timeout=60) as c:
        metrics = (await c.get(url + "/metrics")).text
        ok = await c.post(url + "/v1/chat/completions", json={"model": "canary", "messages": MSG, "max_tokens": 2})
    assert 'aligngate_engine_restarts_total{version="canary"} 1.0' in metrics
    assert ok.status_code == 200 and ok.headers["x-aligngate-version"] == "canary"

    # the only failures: requests in flight on the canary when it died — at most one per worker, each a clean
    # 502 or in-band error naming the canary; nothing failed on stable, nothing hung, nothing after the rollback
    failed = load.failures()
    assert len(failed) <= load.workers, failed
    for f in failed:
        assert f[2] in (502, "sse-error") and "canary" in f[4] and f[0] < t_rollback, f
    assert load.failures(since=t_rollback) == []
    answered = [r for r in load.results if r[2] == 200]
    assert any(r[0] > t_kill and r[3] == "stable" for r in answered)
    print(f"\nengine kill: {len(load.results)} requests, {len(failed)} failed (in flight on the canary), "
          f"kill->rollback {t_rollback - t_kill:.2f} s, kill->/ready 200 {t_ready - t_kill:.1f} s")


# --- 2. Redis goes away and comes back empty ------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_redis_restart_under_load_no_5xx(chaos, redis_server):  # noqa: F811
    _, url = chaos
    assert admin(url, "GET", "/admin/status")["store"] == "redis"
    load = Load(url, workers=6, prefix="redis")
    task = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(3.0)
        n_before = len(load.results)
        redis_server.kill()
        t_kill = time.monotonic()
        await asyncio.to_thread(_wait, lambda: admin(url, "GET", "/admin/status")["store_error"], 30,
                                "the store error reported")
        await asyncio.sleep(3.0)
        n_down = len(load.results) - n_before
        redis_server.start()  # empty: no persistence
        await asyncio.to_thread(_wait, lambda: admin(url, "GET", "/admin/status")["store_error"] is None, 60,
                                "the store back")
        await asyncio.sleep(3.0)
    finally:
        load.stop.set()
        await task
    st = admin(url, "GET", "/admin/status")
    assert {v["name"] for v in st["versions"]} == {"stable", "canary"} and st["stable"] == "stable"  # re-seeded
    five = [r for r in load.results if r[2] != 200]
    assert five == [], five
    assert n_down > 0 and len(load.results) > n_before  # traffic flowed through the outage
    print(f"\nredis restart: {len(load.results)} requests ({n_down} while Redis was down), 0 failed; "
          f"outage {time.monotonic() - t_kill:.1f} s in all")


# --- 3. SIGTERM drains in-flight streams --------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_sigterm_finishes_in_flight_streams_then_exits_0(chaos):
    proc, url = chaos
    n, max_tokens = 12, 400
    started = asyncio.Semaphore(0)
    finished_at: dict[int, float] = {}

    async def stream(c: httpx.AsyncClient, i: int) -> dict:
        body = {"model": "aligngate", "messages": MSG, "max_tokens": max_tokens, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}, "user": f"drain-{i}"}
        out = {"tokens": None, "done": False, "error": None, "finish": None}
        try:
            async with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200, await r.aread()
                first = True
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if first:
                        first = False
                        started.release()
                    if line == "data: [DONE]":
                        out["done"] = True
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        out["error"] = chunk["error"]
                    if chunk.get("usage"):
                        out["tokens"] = chunk["usage"]["completion_tokens"]
                    for ch in chunk.get("choices") or ():
                        out["finish"] = ch.get("finish_reason") or out["finish"]
        except httpx.HTTPError as e:
            out["error"] = repr(e)
        finished_at[i] = time.monotonic()
        return out

    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10)) as c:
        tasks = [asyncio.create_task(stream(c, i)) for i in range(n)]
        for _ in range(n):
            await asyncio.wait_for(started.acquire(), 240)
        t_term = time.monotonic()
        proc.p.send_signal(signal.SIGTERM)
        in_flight = n - len(finished_at)
        # while draining: /ready 503, new work refused with 503 + Retry-After (not a refused connection)
        async with httpx.AsyncClient(timeout=30) as c2:
            await asyncio.sleep(0.3)
            ready = await c2.get(url + "/ready")
            new = await c2.post(url + "/v1/chat/completions", json={"model": "aligngate", "messages": MSG,
                                                                     "max_tokens": 2})
        draining_seen = len(finished_at) < n  # the checks above ran while streams were still going
        results = await asyncio.gather(*tasks)
    code = await asyncio.to_thread(proc.p.wait, 180)
    t_exit = time.monotonic()
    broken = [r for r in results if not (r["done"] and r["error"] is None and r["tokens"] == max_tokens
                                          and r["finish"] == "length")]
    assert in_flight >= 1, "every stream ended before SIGTERM: the test proved nothing"
    assert broken == [], broken
    if draining_seen:
        assert ready.status_code == 503 and ready.json().get("draining") is True
        assert new.status_code == 503 and new.headers["retry-after"] and new.json()["error"]["code"] == "draining"
    assert code == 0, proc.tail()
    assert max(finished_at.values()) <= t_exit
    print(f"\nSIGTERM: {in_flight} of {n} streams in flight at the signal, broken 0 of {in_flight}; "
          f"last stream done {max(finished_at.values()) - t_term:.2f} s after SIGTERM, exit 0 after "
          f"{t_exit - t_term:.2f} s; 503-while-draining checked: {draining_seen}")
