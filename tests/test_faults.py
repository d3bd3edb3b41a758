"""Fault handling below the chaos tests: the supervisor's detection, restart and backoff (driven tick by tick on a
fake clock), the remote engine's backend choice and its one retry before the first byte (real sockets: a refused
port, a port that accepts and never answers, upstreams that stream and then drop the connection), the drain
guard, and a real gateway in front of a real vLLM server whose backends become unreachable and come back."""

from __future__ import annotations

from tests.waits import wait_for as _wait

import asyncio
import contextlib
import json
import socket
import time
from types import SimpleNamespace

import httpx
import pytest

from benchmarks.procs import free_port
from serve.config import VersionSpec
from serve.drain import Drain, DrainGuard
from serve.engine import EngineError, GenerationRequest
from serve.engine_remote import RemoteEngine
from serve.metrics import Metrics
from serve.supervisor import Supervisor
from tests.redis_fixture import redis_server, redis_url  # noqa: F401  (fixtures)


def metric(text: str, name: str, **labels) -> float | None:
    """One series' value from Prometheus text (None when absent)."""
    import re

    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return None


# --- supervisor ------------------------------------------------------------------------------------------------
class FakeEngine:
    """Just what the supervisor reads: ready, alive(), restart() (failing the first `fail` times)."""

    def __init__(self, name: str, restartable: bool = True, fail: int = 0):
        self.name, self.restartable, self.fail = name, restartable, fail
        self.ready, self.start_error, self.dead, self.restart_calls = False, None, False, 0

    async def alive(self) -> bool:
        return not self.dead

    async def restart(self) -> None:
        self.restart_calls += 1
        if self.fail:
            self.fail -= 1
            raise RuntimeError("engine core failed to start")
        self.dead, self.ready = False, True


def _gateway(*engines) -> SimpleNamespace:
    return SimpleNamespace(engines={e.name: e for e in engines}, metrics=Metrics())


async def _tick(sup: Supervisor) -> None:
    await sup.tick()
    for w in sup.watches.values():  # let a recovery started by this tick run to its end
        if w.task is not None and not w.task.done():
            await w.task


@pytest.mark.asyncio
async def test_supervisor_restarts_a_dead_engine_with_backoff():
    now = [100.0]
    e = FakeEngine("canary", fail=2)
    gw = _gateway(e)
    sup = Supervisor(gw, backoff_s=1.0, backoff_max_s=4.0, clock=lambda: now[0])
    await _tick(sup)
    assert sup.watches["canary"].state == "starting"  # not up yet: starting engines are not supervised
    e.ready = True
    await _tick(sup)
    assert sup.watches["canary"].state == "up" and e.restart_calls == 0

    e.dead = True  # the engine core died
    await _tick(sup)  # noticed: out of service, first restart at once — it fails
    assert e.ready is False and e.restart_calls == 1 and sup.watches["canary"].state == "down"
    now[0] += 0.9
    await _tick(sup)
    assert e.restart_calls == 1  # backoff 1 s not over
    now[0] += 0.1
    await _tick(sup)
    assert e.restart_calls == 2 and sup.watches["canary"].state == "down"  # failed again: backoff now 2 s
    now[0] += 1.9
    await _tick(sup)
    assert e.restart_calls == 2
    now[0] += 0.1
    await _tick(sup)
    assert e.restart_calls == 3 and e.ready and sup.watches["canary"].state == "up"
    text = gw.metrics.render().decode()
    assert metric(text, "aligngate_engine_restarts_total", version="canary") == 3
    assert metric(text, "aligngate_engine_up", version="canary") == 1
    assert sup.status("canary")["restarts"] == 3


@pytest.mark.asyncio
async def test_supervisor_backoff_is_capped_and_remote_versions_are_probed_not_restarted():
    now = [0.0]
    local = FakeEngine("local", fail=1000)
    remote = FakeEngine("remote", restartable=False)
    local.ready = remote.ready = True
    sup = Supervisor(_gateway(local, remote), backoff_s=1.0, backoff_max_s=4.0, clock=lambda: now[0])
    await _tick(sup)
    local.dead = remote.dead = True
    await _tick(sup)
    gaps, last = [], now[0]
    for _ in range(60):  # 30 s of 0.5 s ticks
        now[0] += 0.5
        before = local.restart_calls
        await _tick(sup)
        if local.restart_calls > before:
            gaps.append(now[0] - last)
            last = now[0]
    assert gaps[:3] == [1.0, 2.0, 4.0] and all(g == 4.0 for g in gaps[3:])  # doubling, capped at 4 s
    assert remote.ready is False and sup.watches["remote"].state == "down"
    remote.dead = False  # its server answers again: the next probe brings it back, nothing restarted
    for _ in range(12):
        now[0] += 0.5
        await _tick(sup)
    assert remote.ready and sup.watches["remote"].state == "up" and remote.restart_calls == 0
    text = sup.gw.metrics.render().decode()
    assert metric(text, "aligngate_engine_restarts_total", version="remote") is None
    assert metric(text, "aligngate_engine_up", version="local") == 0


# --- remote engine: backends and the retry before the first byte ---------------------------------------------------
def _chunk(text: str, finish: str | None = None) -> bytes:
    body = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


class FakeUpstream:
    """A minimal OpenAI-compatible streaming server on a real socket. `mode`: "ok" streams three chunks and
    [DONE]; "drop" streams one chunk, then resets the connection in the middle of the chunked body."""

    def __init__(self, mode: str = "ok"):
        self.mode, self.requests, self.port, self.server = mode, 0, free_port(), None
        self.writers: set = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeUpstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        """Gone, like a killed server: the port closes and open (keep-alive) connections are reset."""
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                if line.startswith("GET /v1/models"):
                    body = json.dumps({"data": [{"id": "fake"}]}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
                    await writer.drain()
                    continue
                self.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                parts = [_chunk("a"), _chunk("b"), _chunk("c", "length"), b"data: [DONE]\n\n"]
                for i, p in enumerate(parts):
                    writer.write(f"{len(p):x}\r\n".encode() + p + b"\r\n")
                    await writer.drain()
                    if self.mode == "drop":
                        await asyncio.sleep(0.05)
                        writer.write(b"ff\r\npartial")  # a chunk announced and never completed
                        await writer.drain()
                        writer.transport.abort()
                        return
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


@contextlib.contextmanager
def blackhole():
    """A port that completes the TCP handshake (kernel backlog) and never reads or answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


async def _engine(urls: list[str], header_timeout_s: float = 15.0) -> RemoteEngine:
    e = RemoteEngine(VersionSpec(name="r", urls=urls, remote_model="fake"), 30.0, 2.0, header_timeout_s)
    e.ready = True  # every backend marked up, as if each answered its probe: the failure is met by requests
    return e


def _req(i: int) -> GenerationRequest:
    return GenerationRequest(request_id=f"t{i}", kind="completion", prompt="x", max_tokens=3)


async def _text(e: RemoteEngine, i: int) -> str:
    return "".join(d.text for s in [s async for s in e.generate(_req(i))] for d in s.deltas)


def test_version_spec_urls_backward_compatible():
    assert VersionSpec(name="a", url="http://h:1").backend_urls() == ["http://h:1"]
    v = VersionSpec(name="b", urls=["http://h:1", "http://h:2"])
    assert v.url == "http://h:1" and v.backend_urls() == ["http://h:1", "http://h:2"]
    assert VersionSpec(**v.model_dump()).backend_urls() == ["http://h:1", "http://h:2"]  # store round trip
    assert VersionSpec(name="c", url="http://h:1", urls=["http://h:2", "http://h:1"]).backend_urls() == \
        ["http://h:1", "http://h:2"]
    with pytest.raises(ValueError):
        VersionSpec(name="d", model="/m", urls=["http://h:1"])


@pytest.mark.asyncio
@pytest.mark.parametrize("failure", ["refused", "no_answer"])
async def test_remote_retries_once_on_another_backend_before_the_first_byte(failure):
    up = await FakeUpstream().start()
    with blackhole() as hole:
        bad = _dead_url() if failure == "refused" else hole
        e = await _engine([bad, up.url], header_timeout_s=0.5)
        try:
            texts = [await _text(e, i) for i in range(6)]
        finally:
            await e.stop()
            await up.stop()
    assert texts == ["abc"] * 6  # every request answered, none failed
    assert e.retries >= 1 and up.requests == 6  # the bad backend was tried once, then never again (marked down)
    bad_b = next(b for b in e.backends if b.base == bad)
    assert bad_b.up is False and ("Connect" in bad_b.last_error or "Timeout" in bad_b.last_error)


@pytest.mark.asyncio
async def test_remote_never_retries_after_output_was_handed_on():
    a, b = await FakeUpstream("drop").start(), await FakeUpstream("drop").start()
    e = await _engine([a.url, b.url])
    got = []
    try:
        with pytest.raises(EngineError, match="failed"):
            async for step in e.generate(_req(0)):
                got.extend(d.text for d in step.deltas)
    finally:
        await e.stop()
        await a.stop()
        await b.stop()
    assert got == ["a"]  # the first chunk went on to the caller ...
    assert a.requests + b.requests == 1 and e.retries == 0  # ... so the failure is not retried elsewhere


@pytest.mark.asyncio
async def test_remote_all_backends_down_means_not_ready_until_a_probe_succeeds():
    up = await FakeUpstream().start()
    port = up.port
    e = await _engine([_dead_url(), up.url])
    try:
        assert await e.alive() and e.ready
        await up.stop()
        with pytest.raises(EngineError):  # the request that finds both gone fails (it was in flight) ...
            await _text(e, 0)
        assert e.ready is False and "Connect" in e.down_reason  # ... and the version is out at once
        assert await e.alive() is False
        up = FakeUpstream()
        up.port = port
        await up.start()
        assert await e.alive() and e.ready  # back on the next probe
        assert await _text(e, 1) == "abc"
    finally:
        await e.stop()
        await up.stop()


@pytest.mark.asyncio
async def test_remote_least_in_flight_choice():
    e = await _engine(["http://h1:1", "http://h2:1", "http://h3:1"])
    b1, b2, b3 = e.backends
    b1.in_flight, b2.in_flight, b3.in_flight = 3, 1, 2
    assert e._pick([]) is b2
    assert e._pick([b2]) is b3
    b1.in_flight = b2.in_flight = b3.in_flight = 0
    assert {e._pick([]).base for _ in range(6)} == {b.base for b in e.backends}  # ties rotate
    b1.up = b2.up = False
    assert e._pick([]) is b3 and e._pick([b3]) in (b1, b2)  # marked-down ones only when nothing else is left
    await e.stop()


# --- drain guard -------------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_drain_guard_counts_work_and_refuses_new_work_when_draining():
    release = asyncio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    drain = Drain()
    guard = DrainGuard(app, drain, retry_after_s=7)
    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    call = asyncio.create_task(guard({"type": "http", "path": "/v1/completions"}, None, send))
    await asyncio.sleep(0.01)
    assert drain.active == 1
    drain.begin()
    refused: list[dict] = []

    async def send2(m):
        refused.append(m)

    await guard({"type": "http", "path": "/v1/chat/completions"}, None, send2)
    assert refused[0]["status"] == 503 and (b"retry-after", b"7") in refused[0]["headers"]
    assert json.loads(refused[1]["body"])["error"]["code"] == "draining"
    release.set()
    await call
    assert sent[0]["status"] == 200 and drain.active == 0 and drain.refused == 1


# --- a real gateway, a real vLLM server, backends that go away and come back --------------------------------------
class TcpProxy:
    """Forwards a fixed loopback port to a real server; `stop()` closes the port and cuts every connection, like a
    backend host that went away; `start()` brings it back on the same port."""

    def __init__(self, target_port: int):
        self.target, self.port, self.server, self.conns = target_port, free_port(), None, set()
        self.loop = asyncio.new_event_loop()
        import threading

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def _handle(self, r, w):
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        self.conns.update({w, uw})
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        self.conns.difference_update({w, uw})

    def start(self) -> None:
        async def go():
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self._run(go())

    def stop(self) -> None:
        async def go():
            self.server.close()
            for w in list(self.conns):
                w.transport.abort()
            await self.server.wait_closed()
        self._run(go())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)


def _ready(url: str) -> dict:
    return httpx.get(url + "/ready", params={"verbose": "true"}, timeout=60).json()


def _chat(url: str, model: str = "aligngate", **kw) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": "2+3="}], "max_tokens": 4, **kw})


@pytest.fixture(scope="module")
def proxy(vllm_server):
    p = TcpProxy(int(vllm_server.rsplit(":", 1)[1]))
    p.start()
    yield p
    p.close()


@pytest.fixture(scope="module")
def remote_pair_gateway(start_gateway, vllm_server, proxy):
    """stable: the vLLM server direct. pair: a dead port and the proxy (weight 0.5). duo: the proxy and the server
    direct. Cheap: no engine in the gateway process."""
    versions = [{"name": "stable", "url": vllm_server, "weight": 0.5},
                {"name": "pair", "urls": [_dead_url(), proxy.url], "weight": 0.5},
                {"name": "duo", "urls": [proxy.url, vllm_server], "weight": 0.0}]
    return start_gateway("gateway-faults-remote", env={"ALIGNGATE_VERSIONS": json.dumps(versions),
                                                       "ALIGNGATE_SUPERVISE_INTERVAL_S": "0.5"})


def test_two_urls_one_dead_port_all_requests_succeed(remote_pair_gateway):
    r = _ready(remote_pair_gateway)
    assert r["ready"] and r["versions"]["pair"]["ready"]
    dead = [u for u, b in r["versions"]["pair"]["backends"].items() if not b["up"]]
    assert len(dead) == 1 and "Connect" in r["versions"]["pair"]["backends"][dead[0]]["error"]
    got = [_chat(remote_pair_gateway, "pair", user=f"d-{i}") for i in range(12)]
    got += [_chat(remote_pair_gateway, user=f"d-{i}") for i in range(12)]
    assert all(x.status_code == 200 for x in got), [x.text for x in got if x.status_code != 200]
    assert {x.headers["x-aligngate-version"] for x in got[12:]} == {"stable", "pair"}


def test_remote_backend_unreachable_then_back(remote_pair_gateway, proxy):
    url = remote_pair_gateway
    proxy.stop()
    try:
        # pair has no backend left: out of service (by the first failed request or the next probe)
        _wait(lambda: not _ready(url)["versions"]["pair"]["ready"], 30, "pair not ready")
        r = httpx.get(url + "/ready", timeout=60)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "Connect" in r.json()["versions"]["pair"]["error"]
        assert r.json()["versions"]["duo"]["ready"] and r.json()["versions"]["stable"]["ready"]
        # routed requests go to stable; naming the version gets 503 + Retry-After; duo still answers (its other
        # backend), whatever backend each request tries first
        routed = [_chat(url, user=f"u-{i}") for i in range(16)]
        assert all(x.status_code == 200 and x.headers["x-aligngate-version"] == "stable" for x in routed)
        explicit = _chat(url, "pair")
        assert explicit.status_code == 503 and explicit.headers["retry-after"]
        assert explicit.json()["error"]["code"] == "engine_not_ready"
        duo = [_chat(url, "duo") for _ in range(8)]
        assert all(x.status_code == 200 for x in duo), [x.text for x in duo]
    finally:
        proxy.start()
    t0 = time.monotonic()
    _wait(lambda: httpx.get(url + "/ready", timeout=60).status_code == 200, 60, "ready again")
    print(f"\nremote backend back -> /ready 200 in {time.monotonic() - t0:.2f} s")
    assert _chat(url, "pair").status_code == 200
    assert all(_chat(url, "duo").status_code == 200 for _ in range(4))


# --- the canary gate while the control-plane store is unreachable ------------------------------------------------

@pytest.mark.asyncio
async def test_canary_gate_rolls_back_locally_while_the_store_is_partitioned(redis_url, redis_server):  # noqa: F811
    """Redis frozen (SIGSTOP: every call times out, like a partition) during a rollout whose canary fails: this
    replica stops routing to the canary at once, and the rollback reaches the store when Redis answers again."""
    import signal as sig

    from serve.canary import CanaryController
    from serve.config import Settings
    from serve.gateway import Gateway
    from serve.store import RedisStore, StoreUnavailable

    versions = [VersionSpec(name="stable", url=_dead_url(), weight=1.0),
                VersionSpec(name="canary", url=_dead_url(), weight=0.0)]
    settings = Settings(versions=versions, redis_url=redis_url, redis_prefix="t-partition")
    gw = Gateway(settings, versions)  # not started: no engines, only the state the controller acts on
    store = RedisStore(redis_url, "t-partition")
    ctl = CanaryController(gw, store, settings.canary)
    await ctl._seed()
    await ctl.start_rollout("canary", "admin", "partition test", stages=[0.5, 1.0], min_requests=10**6)
    assert gw.router.weights["canary"] == pytest.approx(0.5)
    redis_server.proc.send_signal(sig.SIGSTOP)
    try:
        for _ in range(30):
            gw.stats.record("canary", 0.01, None, "502")
            gw.stats.record("stable", 0.01, 0.02, "200")
        with pytest.raises(StoreUnavailable):
            await ctl.tick()
        assert gw.router.weights["canary"] == 0.0  # rolled back on this replica despite the store
        assert {gw.router.route("aligngate", f"p-{i}").version for i in range(200)} == {"stable"}
        with pytest.raises(StoreUnavailable):
            await ctl.tick()  # still down: no new decision, still rolled back here
    finally:
        redis_server.proc.send_signal(sig.SIGCONT)
    await ctl.tick()  # the store answers: the pending rollback is committed, shared, audited
    st = await store.load()
    assert st["rollout"]["state"] == "rolled_back" and st["rollout"]["rolled_back_by"] == "controller"
    assert "error rate" in st["rollout"]["reason"] and st["weights"]["canary"] == 0.0
    assert [e["action"] for e in await store.audit()][-1] == "rollback"
    assert ctl._pending_rollback is None and gw.router.weights["canary"] == 0.0
    await store.close()
    await gw.quality.close()
