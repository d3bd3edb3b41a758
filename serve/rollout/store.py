"""Control-plane state store: versions, weights, rollout (plan, stage, state) and the audit log.

The state is one JSON document with a revision number `rev`. Every change is a read-modify-write applied by
`update(fn)`: `fn` gets a copy of the current document and returns the new one (or None for "no change");
the store commits it only if nobody else committed in between (compare-and-set on `rev`), else it re-reads
and calls `fn` again. So several gateway replicas (or the controller and an admin call in one replica) never
lose each other's updates, and a decision made on a stale view (e.g. "advance from stage 1") is re-checked
against the current one.

Two backends: `MemoryStore` (one replica, the default) and `RedisStore` (`redis_url`: replicas agree; a
restarted replica reads where the rollout was). Redis keys: `<prefix>:state` (the document), `<prefix>:audit`
(a list of JSON entries, newest last, capped).
"""

from __future__ import annotations

import abc
import asyncio
import copy
import json
import time
from collections.abc import Callable

AUDIT_CAP = 10_000


class StoreUnavailable(RuntimeError):
    """The backing store could not be reached (Redis down): admin calls get a 503, the controller retries."""


def empty_state() -> dict:
    return {"rev": 0, "versions": {}, "weights": {}, "stable": None, "rollout": None}


class Store(abc.ABC):
    kind = "abstract"

    @abc.abstractmethod
    async def load(self) -> dict: ...

    @abc.abstractmethod
    async def rev(self) -> int: ...

    @abc.abstractmethod
    async def update(self, fn: Callable[[dict], dict | None]) -> dict: ...

    @abc.abstractmethod
    async def append_audit(self, entry: dict) -> None: ...

    @abc.abstractmethod
    async def audit(self, limit: int = 100) -> list[dict]: ...

    async def close(self) -> None:
        return None


class MemoryStore(Store):
    kind = "memory"

    def __init__(self) -> None:
        self._state = empty_state()
        self._audit: list[dict] = []
        self._lock = asyncio.Lock()

    async def load(self) -> dict:
        return copy.deepcopy(self._state)

    async def rev(self) -> int:
        return self._state["rev"]

    async def update(self, fn: Callable[[dict], dict | None]) -> dict:
        async with self._lock:
            new = fn(copy.deepcopy(self._state))
            if new is not None:
                new["rev"] = self._state["rev"] + 1
                self._state = new
            return copy.deepcopy(self._state)

    async def append_audit(self, entry: dict) -> None:
        self._audit.append(entry)
        del self._audit[:-AUDIT_CAP]

    async def audit(self, limit: int = 100) -> list[dict]:
        return copy.deepcopy(self._audit[-limit:])


class RedisStore(Store):
    kind = "redis"

    def __init__(self, url: str, prefix: str = "aligngate"):
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.key = f"{prefix}:state"
        self.audit_key = f"{prefix}:audit"
        self.r = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, decode_responses=True,
                                   health_check_interval=10)

    async def _call(self, coro):
        from redis.exceptions import ConnectionError as RConnErr
        from redis.exceptions import TimeoutError as RTimeout

        try:
            return await coro
        except (RConnErr, RTimeout, OSError) as e:
            raise StoreUnavailable(f"redis at {self.url} unavailable: {type(e).__name__}: {e}") from e

    async def load(self) -> dict:
        raw = await self._call(self.r.get(self.key))
        return json.loads(raw) if raw else empty_state()

    async def rev(self) -> int:
        raw = await self._call(self.r.get(self.key))
        return json.loads(raw)["rev"] if raw else 0

    async def update(self, fn: Callable[[dict], dict | None]) -> dict:
        from redis.exceptions import WatchError

        async def txn():
            async with self.r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(self.key)
                        raw = await pipe.get(self.key)
                        cur = json.loads(raw) if raw else empty_state()
                        new = fn(copy.deepcopy(cur))
                        if new is None:
                            await pipe.unwatch()
                            return cur
                        new["rev"] = cur["rev"] + 1
                        pipe.multi()
                        pipe.set(self.key, json.dumps(new))
                        await pipe.execute()
                        return new
                    except WatchError:
                        continue

        return await self._call(txn())

    async def append_audit(self, entry: dict) -> None:
        async def push():
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.rpush(self.audit_key, json.dumps(entry))
                pipe.ltrim(self.audit_key, -AUDIT_CAP, -1)
                await pipe.execute()

        await self._call(push())

    async def audit(self, limit: int = 100) -> list[dict]:
        raw = await self._call(self.r.lrange(self.audit_key, -limit, -1))
        return [json.loads(x) for x in raw]

    async def close(self) -> None:
        try:
            await self.r.aclose()
        except Exception:
            pass


def make_store(redis_url: str | None, prefix: str = "aligngate") -> Store:
    return RedisStore(redis_url, prefix) if redis_url else MemoryStore()


def audit_entry(who: str, action: str, target: str | None = None, why: str | None = None, **details) -> dict:
    return {"ts": time.time(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": who,
            "action": action, "target": target, "why": why, "details": details}
