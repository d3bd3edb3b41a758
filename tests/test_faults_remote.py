"""Faults, the remote engine: its backend choice (least in flight) and its one retry on another backend before the
first byte, never after (real sockets: a refused port, a port that accepts and never answers, upstreams that
stream and then drop the connection)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest

from benchmarks.procs import free_port
from serve.config import VersionSpec
from serve.engines.engine import EngineError, GenerationRequest
from serve.engines.engine_remote import RemoteEngine
from tests.dead_url import dead_url as _dead_url


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

