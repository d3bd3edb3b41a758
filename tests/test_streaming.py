"""serve/api/streaming.py on its own: the request watch and the SSE response, driven through the ASGI interface with
hand-made `receive`/`send` (the disconnect and a stalled socket cannot be timed reliably through a real server)."""

from __future__ import annotations

import asyncio

from serve.api.streaming import EventStream, RequestTimeout, RequestWatch


def _receive(disconnect_after: float | None):
    async def receive():
        if disconnect_after is None:
            await asyncio.Event().wait()  # the client stays
        await asyncio.sleep(disconnect_after)
        return {"type": "http.disconnect"}
    return receive


def test_a_stream_sends_its_chunks_then_ends_and_disarms_the_watch():
    async def main():
        sent = []

        async def send(message):
            sent.append(message)

        async def body():
            yield b"a"
            yield b"b"

        watch = RequestWatch(_receive(None))
        watch.deadline_at(asyncio.get_running_loop().time() + 60)
        await EventStream(body(), watch, {"X-Id": "1"})({}, None, send)
        assert sent[0]["type"] == "http.response.start" and (b"x-id", b"1") in sent[0]["headers"]
        assert [m.get("body") for m in sent[1:]] == [b"a", b"b", b""] and sent[-1]["more_body"] is False
        assert watch._watcher is None and watch._timer is None and asyncio.current_task().cancelling() == 0
    asyncio.run(main())


def test_a_client_gone_mid_stream_cancels_the_wait_and_ends_quietly():
    async def main():
        seen = []

        async def send(message):
            pass

        async def body():
            yield b"first"
            try:
                await asyncio.sleep(30)  # the engine's next token, long in coming
            except asyncio.CancelledError:
                seen.append(watch.caught())
                return
            yield b"never"

        watch = RequestWatch(_receive(0.05))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await EventStream(body(), watch, {})({}, None, send)
        assert seen == ["client"] and loop.time() - t0 < 5
        assert asyncio.current_task().cancelling() == 0  # the cancellation was consumed, not left pending
    asyncio.run(main())


def test_the_deadline_during_a_stalled_write_is_thrown_into_the_body():
    async def main():
        seen = []
        stalled = asyncio.Event()

        async def send(message):
            if message.get("body") == b"big":
                stalled.set()
                await asyncio.Event().wait()  # a client that stopped reading: the write never completes

        async def body():
            try:
                yield b"big"
                yield b"more"
            except RequestTimeout:
                seen.append("timeout")
                yield b"error event"

        async def respond():  # the watch belongs to the task that sends the response, as in a request
            watch = RequestWatch(_receive(None))
            watch.deadline_at(asyncio.get_running_loop().time() + 0.1)
            await EventStream(body(), watch, {})({}, None, send)
            return asyncio.current_task().cancelling()

        assert await asyncio.wait_for(respond(), 5) == 0
        assert stalled.is_set() and seen == ["timeout"]
    asyncio.run(main())


def test_a_cancellation_from_elsewhere_propagates():
    async def main():
        async def send(message):
            pass

        async def body():
            yield b"x"
            await asyncio.sleep(30)
            yield b"y"

        async def respond():
            await EventStream(body(), RequestWatch(_receive(None)), {})({}, None, send)

        task = asyncio.create_task(respond())
        await asyncio.sleep(0.05)
        task.cancel()  # e.g. the server shutting down: not the watch's doing, so not swallowed
        try:
            await task
        except asyncio.CancelledError:
            return
        raise AssertionError("the cancellation was swallowed")
    asyncio.run(main())
