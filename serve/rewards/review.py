"""Review queue for flagged answers (hard-constraint hits, alarms): a Redis list when configured, else JSONL.

Why: an alarm says *that* something is wrong; reviewers need the answers themselves, with provenance (version,
request id, prompt, response, reward, flags, time), to confirm reward hacking and to turn the cases into training
data. Submitting happens on the request path, so `submit()` only does a `put_nowait` on a bounded asyncio.Queue
and never raises; a background task drains the queue in batches and writes:
  - Redis (`redis_url`): `LPUSH` to one list (newest first), `LTRIM` to `max_len`; shared by every replica;
  - JSONL (`path`): appended lines (in a worker thread, so file I/O never blocks the loop); also the fallback
    when Redis is unavailable, so flagged answers are not lost while Redis is down;
  - neither: an in-memory ring of `max_len` items (one process, tests).
A full queue drops the new item and counts it (`dropped`): losing a review item beats slowing a request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serve.redisconn import RedisOptions, SafeRedis

log = logging.getLogger("aligngate.review")


@dataclass
class ReviewItem:
    version: str
    request_id: str | None
    prompt: str
    response: str
    reward: float | None  # the 0–1 reward the monitor saw (None if none was known)
    flags: list[str]
    time: float  # unix seconds
    reason: str = "hard_constraint"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))


def append_jsonl(path: Path, lines: list[str]) -> None:
    """Append whole lines in one write (blocking: call through `asyncio.to_thread`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def tail_jsonl(path: Path, limit: int) -> list[dict]:
    """The last `limit` rows, newest first (blocking)."""
    if not path.exists():
        return []
    rows: deque[str] = deque(maxlen=limit)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(line)
    out = []
    for line in reversed(rows):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class ReviewQueue:
    def __init__(self, path: str | Path | None = None, redis_url: str | None = None, key: str = "aligngate:review",
                 max_len: int = 100_000, queue_size: int = 10_000, batch: int = 100,
                 redis_options: RedisOptions | None = None):
        self.path = Path(path) if path is not None else None
        self.key = key
        self.max_len = max_len
        self.batch = batch
        self._redis_url = redis_url
        self._redis_opt = redis_options
        self.redis: SafeRedis | None = None
        self._q: asyncio.Queue[ReviewItem] = asyncio.Queue(maxsize=queue_size)
        self._mem: deque[str] = deque(maxlen=max_len)
        self._task: asyncio.Task | None = None
        self.submitted = 0
        self.dropped = 0
        self.written = 0
        self.fallback_writes = 0

    # --- request path ----------------------------------------------------------------------------------------
    def submit(self, item: ReviewItem) -> bool:
        """Queue an item for writing. Non-blocking, never raises; False if it was dropped (queue full)."""
        try:
            self._q.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        except Exception:  # noqa: BLE001
            self.dropped += 1
            return False
        self.submitted += 1
        self._ensure_writer()
        return True

    def _ensure_writer(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: `start()` (or the next submit inside a loop) starts the writer
        if self._redis_url and self.redis is None:
            self.redis = SafeRedis(self._redis_url, self._redis_opt)
        self._task = loop.create_task(self._writer(), name="aligngate-review-writer")

    async def start(self) -> None:
        self._ensure_writer()

    # --- background writer -----------------------------------------------------------------------------------
    async def _writer(self) -> None:
        while True:
            first = await self._q.get()
            items = [first]
            while len(items) < self.batch:
                try:
                    items.append(self._q.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self._write([i.to_json() for i in items])
            except Exception as e:  # noqa: BLE001 — the writer must survive anything
                log.warning("review write failed (%s); %d items lost", e, len(items))
                self.dropped += len(items)
            finally:
                for _ in items:
                    self._q.task_done()

    async def _write(self, lines: list[str]) -> None:
        if self.redis is not None:
            async def push(c):
                p = c.pipeline(transaction=False)
                p.lpush(self.key, *lines)
                p.ltrim(self.key, 0, self.max_len - 1)
                return await p.execute()

            if (await self.redis.call(push)).ok:
                self.written += len(lines)
                return
            if self.path is None:
                self._mem.extend(lines)  # Redis down, no file: keep them in memory
                self.fallback_writes += len(lines)
                return
            self.fallback_writes += len(lines)
        if self.path is not None:
            await asyncio.to_thread(append_jsonl, self.path, lines)
        else:
            self._mem.extend(lines)
        self.written += len(lines)

    # --- admin -----------------------------------------------------------------------------------------------
    async def list(self, limit: int = 50) -> list[dict]:
        """Newest first. From Redis when it answers, else the JSONL file, else memory."""
        limit = max(0, int(limit))
        if limit == 0:
            return []
        if self._redis_url and self.redis is None:
            self.redis = SafeRedis(self._redis_url, self._redis_opt)
        if self.redis is not None:
            r = await self.redis.call(lambda c: c.lrange(self.key, 0, limit - 1))
            if r.ok:
                return [json.loads(x) for x in r.value]
        if self.path is not None:
            return await asyncio.to_thread(tail_jsonl, self.path, limit)
        return [json.loads(x) for x in list(self._mem)[-limit:][::-1]]

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything submitted so far is written (tests, shutdown)."""
        self._ensure_writer()
        try:
            await asyncio.wait_for(self._q.join(), timeout)
        except asyncio.TimeoutError:
            pass

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None
        if self.redis is not None:
            await self.redis.close()
