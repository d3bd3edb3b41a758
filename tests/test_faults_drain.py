"""Faults, the drain guard: in-flight work is counted, and new work is refused (503 + Retry-After) while
draining."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve.engines.drain import Drain, DrainGuard


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
