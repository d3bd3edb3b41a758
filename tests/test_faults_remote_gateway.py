"""Faults, end to end: a real gateway in front of a real vLLM server whose backends (through a TCP proxy) become
unreachable and come back; a version with one dead URL of two still answers every request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest

from benchmarks.procs import free_port
from tests.dead_url import dead_url as _dead_url
from tests.waits import wait_for as _wait


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
