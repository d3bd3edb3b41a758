"""Two-tier reward cache: in-process LRU (bounded, TTL) → Redis (TTL, shared by replicas) → compute.

Why: the same answer to the same prompt comes back often (retries, popular prompts, templated answers — the seeds
saw 40% of reward computations saved), and a reward-model pass costs far more than a dictionary look-up. The
LRU answers in microseconds on the replica that saw the answer; Redis shares scores between replicas; only a miss
in both pays for `compute()`.

Key: blake2b-128 of (reward-model version, normalised prompt, normalised response), (each part is
length-prefixed, so no text can forge another triple's key). The normaliser
`normalise_text` is deliberately small:
  - Unicode NFC (the same text typed on different systems — precomposed vs combining accents — is one key);
  - whitespace: leading/trailing stripped, every run of Unicode whitespace collapsed to one ASCII space.
Deliberately NOT normalised, because a reward model can score them differently: letter case, punctuation,
NFKC compatibility forms (full-width letters, ligatures), zero-width characters, emoji, numbers' formatting.
Caching across those would hand one answer another's score. The reward-model version is part of the key, so a
new reward model never sees an old model's scores.

Concurrency: concurrent identical misses compute once (single-flight; the Redis look-up is inside the flight too).
If `compute()` raises, every waiter gets the exception and nothing is cached.

Failure: Redis is optional (`redis_url=None` → LRU only). A Redis that is down, slow or restarted costs at most
one short timeout, then the circuit breaker in `serve.redisconn` skips it until a probe succeeds; the caller
never sees a Redis exception. Redis writes go through one background task that pipelines up to `write_batch` SETs
per round trip from a bounded deque (a burst of misses cannot exhaust the connection pool; when Redis is
unavailable the writes are dropped — it is a cache).

Metrics (on the `CollectorRegistry` passed in, read at scrape time from plain counters so the LRU hit path
touches no lock): `aligngate_reward_cache_lookups_total{tier, result}` (tier lru|redis; result
hit|miss|unavailable), `..._computes_total`, `..._coalesced_total`, `..._dropped_writes_total`,
`..._redis_errors_total`, `..._redis_up`, `..._lru_entries`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serve.redisconn import RedisOptions, SafeRedis

Tier = Literal["lru", "redis"]


def normalise_text(text: str) -> str:
    """NFC, strip, collapse whitespace runs to one space. See the module docstring for what is NOT normalised."""
    # fast path: printable ASCII, stripped, no double space ⇒ already normal (the common case, ~3x cheaper)
    if text.isascii() and text.isprintable() and "  " not in text and text == text.strip():
        return text
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def cache_key(rm_version: str, prompt: str, response: str) -> str:
    """Hex blake2b-128 of `len(v):v len(p):p r` over the normalised texts (length prefixes: unambiguous)."""
    p, r = normalise_text(prompt), normalise_text(response)
    return hashlib.blake2b(f"{len(rm_version)}:{rm_version}{len(p)}:{p}{r}".encode("utf-8", "surrogatepass"),
                           digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheResult:
    score: float
    cached: bool
    tier: Tier | None  # where the score came from; None = computed now


@dataclass
class CacheConfig:
    lru_size: int = 100_000
    lru_ttl: float = 600.0  # seconds
    redis_ttl: int = 86_400  # seconds
    key_prefix: str = "aligngate:reward:"
    write_batch: int = 256  # SETs per pipelined round trip
    max_pending_writes: int = 10_000
    redis: RedisOptions = field(default_factory=RedisOptions)


@dataclass
class CacheStats:
    lru_hits: int = 0
    lru_misses: int = 0
    redis_hits: int = 0
    redis_misses: int = 0
    redis_skipped: int = 0  # look-ups not sent because Redis was unavailable
    computes: int = 0
    coalesced: int = 0  # callers who waited on another caller's identical in-flight miss


class _LRU:
    """OrderedDict LRU with a per-entry expiry (monotonic seconds). Not thread-safe: use from the event loop."""

    __slots__ = ("data", "size", "ttl", "clock")

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]):
        self.data: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.size, self.ttl, self.clock = size, ttl, clock

    def get(self, key: str) -> float | None:
        item = self.data.get(key)
        if item is None:
            return None
        if item[1] <= self.clock():
            del self.data[key]
            return None
        self.data.move_to_end(key)
        return item[0]

    def put(self, key: str, score: float) -> None:
        self.data[key] = (score, self.clock() + self.ttl)
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)


class RewardCache:
    """`await cache.get_or_compute(rm_version, prompt, response, compute)` → `CacheResult`. Never raises for Redis."""

    def __init__(self, redis_url: str | None = None, config: CacheConfig | None = None,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic):
        self.cfg = config or CacheConfig()
        self.stats = CacheStats()
        self._lru = _LRU(self.cfg.lru_size, self.cfg.lru_ttl, clock)
        self._inflight: dict[str, asyncio.Future[CacheResult]] = {}
        self._writes: deque[tuple[str, float]] = deque(maxlen=self.cfg.max_pending_writes)
        self._writer: asyncio.Task | None = None
        self._writes_idle: asyncio.Event | None = None
        self.dropped_writes = 0
        self.registry = registry if registry is not None else CollectorRegistry()
        self.redis: SafeRedis | None = None
        if redis_url:
            self.redis = SafeRedis(redis_url, self.cfg.redis, clock=clock)
        # plain ints on the hot path, read by a collector at scrape time (a prometheus Counter.inc takes a lock)
        self.registry.register(_CacheCollector(self))

    # --- sync fast path ------------------------------------------------------------------------------------
    def get_lru(self, rm_version: str, prompt: str, response: str) -> float | None:
        """The in-process tier only, synchronously (a few µs). Counts as an LRU look-up."""
        return self.get_lru_key(cache_key(rm_version, prompt, response))

    def get_lru_key(self, key: str) -> float | None:
        s = self._lru.get(key)
        if s is None:
            self.stats.lru_misses += 1
        else:
            self.stats.lru_hits += 1
        return s

    # --- the full path ------------------------------------------------------------------------------------
    async def get_or_compute(self, rm_version: str, prompt: str, response: str,
                             compute: Callable[[], Awaitable[float]]) -> CacheResult:
        key = cache_key(rm_version, prompt, response)
        s = self.get_lru_key(key)
        if s is not None:
            return CacheResult(s, True, "lru")
        fut = self._inflight.get(key)
        if fut is not None:
            self.stats.coalesced += 1
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            res = await self._fill(key, compute)
        except BaseException as e:
            if not fut.done():
                if isinstance(e, asyncio.CancelledError):
                    fut.cancel()
                else:
                    fut.set_exception(e)
                    fut.exception()  # mark retrieved: no "exception never retrieved" if nobody else waited
            raise
        else:
            fut.set_result(res)
            return res
        finally:
            self._inflight.pop(key, None)

    async def _fill(self, key: str, compute: Callable[[], Awaitable[float]]) -> CacheResult:
        if self.redis is not None:
            r = await self.redis.call(lambda c: c.get(self.cfg.key_prefix + key))
            if r.ok and r.value is not None:
                try:
                    score = float(r.value)
                except ValueError:
                    score = None
                if score is not None:
                    self.stats.redis_hits += 1
                    self._lru.put(key, score)
                    return CacheResult(score, True, "redis")
            if r.ok:
                self.stats.redis_misses += 1
            else:
                self.stats.redis_skipped += 1
        self.stats.computes += 1
        score = float(await compute())
        self._store(key, score)
        return CacheResult(score, False, None)

    # --- writes: LRU now, Redis through one background writer that pipelines SETs -----------------------------
    def _store(self, key: str, score: float) -> None:
        self._lru.put(key, score)
        if self.redis is None or not self.redis.available():
            return
        if len(self._writes) == self._writes.maxlen:
            self.dropped_writes += 1  # the deque drops the oldest: a cache may lose writes, a request may not wait
        self._writes.append((key, score))
        if self._writer is None or self._writer.done():
            self._writes_idle = asyncio.Event()
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="aligngate-cache-writer")

    async def _write_loop(self) -> None:
        try:
            while self._writes:
                batch = [self._writes.popleft() for _ in range(min(len(self._writes), self.cfg.write_batch))]
                prefix, ttl = self.cfg.key_prefix, self.cfg.redis_ttl

                async def setmany(c, batch=batch):
                    p = c.pipeline(transaction=False)
                    for k, v in batch:
                        p.set(prefix + k, repr(v), ex=ttl)
                    return await p.execute()

                if not (await self.redis.call(setmany)).ok:
                    self.dropped_writes += len(batch) + len(self._writes)
                    self._writes.clear()  # Redis is unavailable: drop, the breaker decides when to try again
        finally:
            self._writes_idle.set()

    async def put(self, rm_version: str, prompt: str, response: str, score: float) -> None:
        """Store a score computed elsewhere (e.g. the in-pass value) in both tiers."""
        self._store(cache_key(rm_version, prompt, response), float(score))

    async def drain(self) -> None:
        """Wait for pending background Redis writes (tests, shutdown)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writes_idle.wait())
            await asyncio.sleep(0)

    def clear_lru(self) -> None:
        self._lru.data.clear()

    async def close(self) -> None:
        await self.drain()
        if self.redis is not None:
            await self.redis.close()


class _CacheCollector:
    """Prometheus view of `CacheStats`, computed at scrape time."""

    def __init__(self, cache: RewardCache):
        self.c = cache

    def describe(self):
        return []

    def collect(self):
        st, c = self.c.stats, self.c
        look = CounterMetricFamily("aligngate_reward_cache_lookups", "Reward cache look-ups by tier and result",
                                   labels=["tier", "result"])
        look.add_metric(["lru", "hit"], st.lru_hits)
        look.add_metric(["lru", "miss"], st.lru_misses)
        look.add_metric(["redis", "hit"], st.redis_hits)
        look.add_metric(["redis", "miss"], st.redis_misses)
        look.add_metric(["redis", "unavailable"], st.redis_skipped)
        yield look
        yield CounterMetricFamily("aligngate_reward_cache_computes", "Reward computations (misses in every tier)",
                                  value=st.computes)
        yield CounterMetricFamily("aligngate_reward_cache_coalesced",
                                  "Callers served by another caller's identical in-flight computation",
                                  value=st.coalesced)
        yield CounterMetricFamily("aligngate_reward_cache_dropped_writes", "Redis writes dropped (Redis unavailable "
                                  "or too many pending)", value=c.dropped_writes)
        if c.redis is not None:
            yield CounterMetricFamily("aligngate_reward_cache_redis_errors", "Redis calls that failed or timed out",
                                      value=c.redis.errors)
            yield GaugeMetricFamily("aligngate_reward_cache_redis_up", "1 while Redis is in use (breaker closed)",
                                    value=1 if c.redis.up else 0)
        yield GaugeMetricFamily("aligngate_reward_cache_lru_entries", "Entries in the in-process LRU",
                                value=len(c._lru.data))
