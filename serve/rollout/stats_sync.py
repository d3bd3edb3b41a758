"""The canary gate's inputs shared by all replicas: each replica's request outcomes and rewards, merged into every
replica's `Stats`, so every controller judges the whole canary's traffic and not its own 1/N share of it.

With N replicas behind a load balancer, one replica sees about 1/N of the canary's requests: judged alone it
needs N times longer to reach a stage's minimum, and its tests have the power of a 1/N sample (and the first
replica to pass its own gate would advance the stage for all). Here every `interval_s` each replica appends what
it recorded since its last append to one Redis stream (XADD: one entry per batch, msgpack, the stream capped at
`maxlen` entries) and reads the entries the other replicas appended since the last one it saw (XREAD), adding
them to its own windows (wall-clock times converted to its monotonic clock). A replica that starts, or restarts,
reads the last `window_s` first, so it resumes a rollout with the evidence gathered so far.

Redis unavailable (serve/redisconn.py: short timeouts and a breaker, never an error on the request path): each
replica judges what it has — its own traffic — until Redis is back; its batches wait in a bounded outbox.
Redis streams rather than pub/sub: a replica that was away catches up from its last id.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque

import msgspec

from serve.logs import get_logger
from serve.redisconn import SafeRedis
from serve.rollout.stats import Stats

log = get_logger(__name__)


class StatsSync:
    def __init__(self, stats: Stats, url: str, prefix: str, interval_s: float = 0.5, window_s: float = 600.0,
                 maxlen: int = 200_000, replica: str | None = None):
        self.stats = stats
        self.url = url
        self.key = f"{prefix}:stats"
        self.interval_s = interval_s
        self.window_s = window_s
        self.maxlen = maxlen
        self.replica = replica or os.urandom(6).hex()
        self.redis: SafeRedis | None = None
        self.last_id = "0-0"
        self.sent = self.received = 0
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one sync at a time (the loop, and callers such as tests)
        self._encode = msgspec.msgpack.encode
        self._decode = msgspec.msgpack.decode

    async def start(self) -> None:
        self.redis = SafeRedis(self.url)
        self.stats.outbox = deque(maxlen=100_000)  # Stats.record appends here from now on
        self.last_id = f"{int((time.time() - self.window_s) * 1000)}-0"  # resume: the window's worth first
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.redis is not None:
            await self.redis.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync_once()
            except Exception as e:  # noqa: BLE001 - a bad batch must not stop the sharing
                log.warning("stats_sync_failed", error=repr(e))
            await asyncio.sleep(self.interval_s)

    async def sync_once(self) -> None:
        """Push this replica's new records, pull the others' (both at most one round trip when idle)."""
        async with self._lock:
            await self._sync()

    async def _sync(self) -> None:
        assert self.redis is not None
        outbox = self.stats.outbox
        if outbox:
            batch = list(outbox)
            data = self._encode(batch)
            r = await self.redis.call(lambda c: c.xadd(self.key, {"r": self.replica, "d": data}, maxlen=self.maxlen,
                                                       approximate=True))
            if r.ok:
                for _ in range(len(batch)):
                    outbox.popleft()
                self.sent += len(batch)
        for _ in range(20):  # catch up in pages, bounded per tick
            r = await self.redis.call(lambda c: c.xread({self.key: self.last_id}, count=200))
            if not r.ok or not r.value:
                return
            entries = r.value[0][1]
            for entry_id, fields in entries:
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                if fields.get(b"r", b"").decode() == self.replica:
                    continue
                records = self._decode(fields[b"d"])
                self.stats.merge(records)
                self.received += len(records)
            if len(entries) < 200:
                return
