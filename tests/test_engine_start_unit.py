"""serve/engines/engine_start.py's attempts, deadline and retries, with a stand-in engine whose start hangs (the real
hang, in a real EngineCore, is tests/test_engine_start.py)."""

from __future__ import annotations

import asyncio

import pytest

from serve.engines.engine import Engine
from serve.engines.engine_start import EngineStartTimeout, StartStatus, attempt, start_with_retries


class Hangs(Engine):
    """Its first `hangs` starts never return; later ones come up at once (it never generates)."""

    def __init__(self, hangs: int, restartable: bool = True):
        super().__init__("v")
        self.hangs, self.starts, self.stops = hangs, 0, 0
        self.restartable = restartable

    def generate(self, req):
        raise NotImplementedError

    async def probe(self, timeout_s: float) -> None:
        raise NotImplementedError

    async def alive(self) -> bool:
        return self.ready

    async def start(self) -> None:
        self.starts += 1
        if self.starts <= self.hangs:
            await asyncio.Event().wait()
        self.ready = True

    async def stop(self) -> None:
        self.stops += 1


@pytest.mark.asyncio
async def test_a_hung_start_is_killed_reported_and_retried():
    engine, status, killed = Hangs(hangs=2), StartStatus(), []

    def kill(name: str) -> list[int]:
        killed.append(name)
        return [4242]

    seen = []
    task = asyncio.create_task(start_with_retries(engine, status, deadline_s=0.2, retries=3, backoff_s=0.1,
                                                  backoff_max_s=1.0, kill=kill))
    while not task.done():
        seen.append((status.state, status.attempts))
        await asyncio.sleep(0.02)
    assert engine.ready and status.state == "up" and status.attempts == 3 and status.reason is None
    assert killed == ["v", "v"] and engine.stops == 2
    assert ("failed", 1) in seen and ("failed", 2) in seen  # reported failed between the attempts
    assert engine.start_error is None


@pytest.mark.asyncio
async def test_gives_up_after_the_retries_with_the_reason():
    engine, status = Hangs(hangs=10), StartStatus()
    await start_with_retries(engine, status, deadline_s=0.1, retries=1, backoff_s=0.05, backoff_max_s=1.0,
                             kill=lambda n: [7])
    assert status.state == "failed" and status.attempts == 2 and status.retry_at is None
    assert isinstance(engine.start_error, EngineStartTimeout) and "deadline of 0.1 s" in status.reason
    assert "[7]" in status.reason


@pytest.mark.asyncio
async def test_a_remote_engine_has_no_deadline():
    engine, status = Hangs(hangs=1, restartable=False), StartStatus()
    task = asyncio.create_task(attempt(engine, status, 0.05, kill=lambda n: pytest.fail("killed a remote engine")))
    await asyncio.sleep(0.3)
    assert not task.done() and status.state == "starting"  # still waiting for its upstream, as before
    task.cancel()
