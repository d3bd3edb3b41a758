"""Reward cache: normaliser, LRU bound and TTL, single-flight, Redis sharing and TTL, Redis killed and restarted."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest

from serve.rewards.cache import CacheConfig, RewardCache, cache_key, normalise_text
from serve.redisconn import RedisOptions
from tests.redis_fixture import redis_server, redis_url  # noqa: F401


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def scorer(value: float = 0.5, delay: float = 0.0):
    calls = {"n": 0}

    async def compute() -> float:
        calls["n"] += 1
        if delay:
            await asyncio.sleep(delay)
        return value

    return compute, calls


def test_normaliser_keeps_case_and_punctuation():
    assert normalise_text("  Caf\u0065\u0301 \t\n au  lait ") == "Caf\u00e9 au lait"
    assert cache_key("rm1", "p", "a  b") == cache_key("rm1", " p ", "a\u00a0b")  # NBSP is whitespace
    assert cache_key("rm1", "p", "I love you") != cache_key("rm1", "p", "i love you")
    assert cache_key("rm1", "p", "3") != cache_key("rm1", "p", "3!")
    assert cache_key("rm1", "p", "x") != cache_key("rm2", "p", "x")
    assert cache_key("rm1", "ab", "c") != cache_key("rm1", "a", "bc")
    assert cache_key("rm1", "p", "\uff21") != cache_key("rm1", "p", "A")  # full-width A: not NFKC-folded


async def test_lru_hit_ttl_and_bound():
    clock = FakeClock()
    reg = CollectorRegistry()
    c = RewardCache(None, CacheConfig(lru_size=3, lru_ttl=10), registry=reg, clock=clock)
    compute, calls = scorer(0.7)
    r = await c.get_or_compute("rm", "p", "a", compute)
    assert (r.score, r.cached, r.tier) == (0.7, False, None)
    r = await c.get_or_compute("rm", " p", "a ", compute)
    assert (r.score, r.cached, r.tier) == (0.7, True, "lru")
    assert c.get_lru("rm", "p", "a") == 0.7
    clock.t += 10.5
    assert c.get_lru("rm", "p", "a") is None  # expired
    await c.get_or_compute("rm", "p", "a", compute)
    assert calls["n"] == 2
    for i in range(5):  # bounded: only the 3 most recent stay
        await c.get_or_compute("rm", "p", f"x{i}", compute)
    assert len(c._lru.data) == 3 and c.get_lru("rm", "p", "x0") is None and c.get_lru("rm", "p", "x4") == 0.7
    text = generate_latest(reg).decode()
    assert 'aligngate_reward_cache_lookups_total{result="hit",tier="lru"}' in text
    assert "aligngate_reward_cache_computes_total 7.0" in text
    await c.close()


async def test_single_flight_and_errors():
    c = RewardCache(None)
    compute, calls = scorer(0.3, delay=0.05)
    res = await asyncio.gather(*[c.get_or_compute("rm", "p", "same", compute) for _ in range(50)])
    assert calls["n"] == 1 and all(r.score == 0.3 for r in res)
    assert sum(not r.cached for r in res) == 50 and c.stats.coalesced == 49  # one flight, everyone got it

    async def boom() -> float:
        await asyncio.sleep(0.01)
        raise RuntimeError("rm down")

    out = await asyncio.gather(*[c.get_or_compute("rm", "p", "bad", boom) for _ in range(5)], return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in out)
    assert c.get_lru("rm", "p", "bad") is None and not c._inflight  # nothing cached, nothing left in flight
    await c.close()


async def test_redis_shared_between_replicas_and_ttl(redis_url):
    cfg = CacheConfig(redis_ttl=1)
    a, b = RewardCache(redis_url, cfg), RewardCache(redis_url, cfg)
    compute, calls = scorer(0.9)
    assert (await a.get_or_compute("rm", "p", "r", compute)).tier is None
    await a.drain()
    r = await b.get_or_compute("rm", "p", "r", compute)
    assert (r.score, r.cached, r.tier) == (0.9, True, "redis") and calls["n"] == 1
    assert (await b.get_or_compute("rm", "p", "r", compute)).tier == "lru"
    await asyncio.sleep(1.2)  # Redis TTL expires
    fresh = RewardCache(redis_url, cfg)
    assert (await fresh.get_or_compute("rm", "p", "r", compute)).tier is None and calls["n"] == 2
    for c in (a, b, fresh):
        await c.close()


async def test_redis_killed_and_restarted(redis_server):
    redis_server.start()
    opts = RedisOptions(socket_timeout=0.03, connect_timeout=0.03, backoff=0.1, max_backoff=0.4)
    c = RewardCache(redis_server.url, CacheConfig(redis=opts))
    compute, calls = scorer(0.4)
    await c.get_or_compute("rm", "p", "warm", compute)
    await c.drain()
    redis_server.kill()
    worst = 0.0
    for i in range(200):  # keeps serving: LRU hits and computes, no exception, no added latency once open
        t0 = time.perf_counter()
        r1 = await c.get_or_compute("rm", "p", "warm", compute)
        r2 = await c.get_or_compute("rm", "p", f"new{i}", compute)
        dt = time.perf_counter() - t0
        worst = max(worst, dt) if i else worst
        assert r1.tier == "lru" and r2.score == 0.4
    assert worst < 0.15, worst  # at most one short timeout per probe
    assert not c.redis.up and c.redis.skipped > 100  # the breaker answered, not the network
    redis_server.start()  # empty Redis on the same port
    deadline = time.monotonic() + 5
    i = 0
    while time.monotonic() < deadline and not c.redis.up:
        await c.get_or_compute("rm", "p", f"after{i}", compute)
        i += 1
        await asyncio.sleep(0.05)
    assert c.redis.up, "did not reconnect"
    await c.get_or_compute("rm", "p", "post-restart", compute)
    await c.drain()
    other = RewardCache(redis_server.url)
    r = await other.get_or_compute("rm", "p", "post-restart", compute)
    assert r.tier == "redis"  # writes land in the restarted Redis again
    await other.close()
    await c.close()


async def test_redis_absent_from_start():
    from tests.redis_fixture import _free_port

    c = RewardCache(f"redis://127.0.0.1:{_free_port()}/0", CacheConfig(redis=RedisOptions(backoff=5)))
    compute, calls = scorer(0.1)
    t0 = time.perf_counter()
    for _ in range(20):
        assert (await c.get_or_compute("rm", "p", "x", compute)).score == 0.1
    assert time.perf_counter() - t0 < 0.5 and calls["n"] == 1
    await c.close()
