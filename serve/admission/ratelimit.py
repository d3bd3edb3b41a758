"""Per-key limits: requests per minute, tokens per minute, requests in flight. In Redis when `redis_url` is set
(so N replicas enforce one limit, not N), else in process.

Windows are sliding, kept as 60 one-second buckets (a hash {bucket index: amount} per key and limit): a request
counts until its bucket leaves the window, so at most `rpm` requests are admitted in any 60 s (to the second).
Tokens: prompt (estimated) + max_tokens are reserved at admission and corrected to the actual usage at the end.
Concurrency: a sorted set of leases scored by expiry; each replica renews its live leases every ttl/3, so the
slots of a replica that crashed free themselves after `lease_ttl_s`.

One Lua script checks all three limits and commits only if all pass (atomic: two replicas cannot both take the
last slot), with the clock of the Redis server (replicas' clocks may differ).

Redis unavailable (down, slow, restarting): the decision falls back to this replica's in-process limiter with
the same limits, a warning is logged once, and nothing fails — while Redis is away N replicas may admit up to N
times a limit. Leases taken in Redis before the outage expire by their TTL. When Redis answers again (the
circuit breaker of serve/redisconn.py probes it), decisions go back to Redis; local counts are not copied over.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from serve.admission.auth import KeyPolicy
from serve.logs import get_logger
from serve.redisconn import RedisOptions, SafeRedis

log = get_logger(__name__)

WINDOW_MS = 60_000
BUCKET_MS = 1_000

# KEYS: rpm hash, tpm hash, concurrency zset.  ARGV: rpm, tpm, conc (0 = no limit), cost, window_ms, bucket_ms,
# lease id, lease ttl ms.  Returns {1, bucket} or {0, limit name, retry ms, used, limit}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, conc, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local window, bucket, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[8])
local nb = math.floor(window / bucket)
local cur = math.floor(now / bucket)
local oldest = cur - nb + 1
local function usage(key)
  local flat = redis.call('HGETALL', key)
  local used, buckets = 0, {}
  for i = 1, #flat, 2 do
    local b, v = tonumber(flat[i]), tonumber(flat[i + 1])
    if b < oldest then redis.call('HDEL', key, flat[i]) else used = used + v; buckets[#buckets + 1] = {b, v} end
  end
  return used, buckets
end
local function wait_ms(used, buckets, need, limit)
  table.sort(buckets, function(x, y) return x[1] < y[1] end)
  local freed = 0
  for _, bv in ipairs(buckets) do
    freed = freed + bv[2]
    if used - freed + need <= limit then return (bv[1] + nb) * bucket - now end
  end
  return window
end
if rpm > 0 then
  local used, b = usage(KEYS[1])
  if used + 1 > rpm then return {0, 'rpm', wait_ms(used, b, 1, rpm), used, rpm} end
end
if tpm > 0 then
  local used, b = usage(KEYS[2])
  if used + cost > tpm then return {0, 'tpm', wait_ms(used, b, cost, tpm), used, tpm} end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local n = redis.call('ZCARD', KEYS[3])
  if n >= conc then return {0, 'concurrency', 1000, n, conc} end
end
if rpm > 0 then redis.call('HINCRBY', KEYS[1], cur, 1); redis.call('PEXPIRE', KEYS[1], window + bucket) end
if tpm > 0 then redis.call('HINCRBY', KEYS[2], cur, cost); redis.call('PEXPIRE', KEYS[2], window + bucket) end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[7]); redis.call('PEXPIRE', KEYS[3], ttl * 2)
end
return {1, cur}
"""

# KEYS: rpm hash, tpm hash, concurrency zset.  ARGV: lease id, bucket, token delta, request delta.
# A bucket that has already left the window is not recreated (HEXISTS): there is nothing left to correct.
_RELEASE = """
redis.call('ZREM', KEYS[3], ARGV[1])
local d = tonumber(ARGV[3])
if d ~= 0 and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[2], d) end
local r = tonumber(ARGV[4])
if r ~= 0 and redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then redis.call('HINCRBY', KEYS[1], ARGV[2], r) end
return 1
"""

# KEYS: concurrency zset.  ARGV: ttl ms, lease ids...  Only leases still present are renewed (XX).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"""

LIMIT_NAMES = {"rpm": "requests-per-minute", "tpm": "tokens-per-minute", "concurrency": "concurrency"}


class RateLimited(Exception):
    def __init__(self, key_id: str, limit: str, retry_after_s: int, used: int, value: int):
        self.key_id, self.limit, self.retry_after_s, self.used, self.value = key_id, limit, retry_after_s, used, value
        super().__init__(f"API key `{key_id}`: {LIMIT_NAMES[limit]} limit reached ({limit} limit {value}, "
                         f"{'in flight' if limit == 'concurrency' else 'used'} {used}); retry after {retry_after_s} s")


class TooLargeForKey(Exception):
    """One request's token reservation alone exceeds the key's tpm: it can never be admitted (a 400, not a 429)."""


@dataclass(slots=True)
class Lease:
    policy: KeyPolicy
    lease_id: str
    bucket: int
    cost: int
    remote: bool  # held in Redis (else in this replica's local limiter)


class _Window:
    """The in-process twin of the Lua window: {bucket index: amount}, same expiry and retry rule."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}

    def usage(self, oldest: int) -> int:
        for b in [b for b in self.buckets if b < oldest]:
            del self.buckets[b]
        return sum(self.buckets.values())

    def wait_ms(self, used: int, need: int, limit: int, nb: int, bucket_ms: int, now_ms: int, window_ms: int) -> int:
        freed = 0
        for b in sorted(self.buckets):
            freed += self.buckets[b]
            if used - freed + need <= limit:
                return (b + nb) * bucket_ms - now_ms
        return window_ms


class LocalLimiter:
    """Per-replica limits (no Redis, or Redis unavailable)."""

    def __init__(self, window_ms: int = WINDOW_MS, bucket_ms: int = BUCKET_MS, clock=time.monotonic):
        self.window_ms, self.bucket_ms, self.clock = window_ms, bucket_ms, clock
        self.rpm: dict[str, _Window] = {}
        self.tpm: dict[str, _Window] = {}
        self.inflight: dict[str, int] = {}

    def admit(self, p: KeyPolicy, cost: int, lease_id: str) -> Lease:
        now = int(self.clock() * 1000)
        nb = self.window_ms // self.bucket_ms
        cur = now // self.bucket_ms
        oldest = cur - nb + 1
        checks = (("rpm", self.rpm, p.rpm, 1), ("tpm", self.tpm, p.tpm, cost))
        for name, table, limit, need in checks:
            if limit:
                w = table.setdefault(p.id, _Window())
                used = w.usage(oldest)
                if used + need > limit:
                    wait = w.wait_ms(used, need, limit, nb, self.bucket_ms, now, self.window_ms)
                    raise RateLimited(p.id, name, _seconds(wait), used, limit)
        n = self.inflight.get(p.id, 0)
        if p.max_concurrency and n >= p.max_concurrency:
            raise RateLimited(p.id, "concurrency", 1, n, p.max_concurrency)
        for _, table, limit, need in checks:
            if limit:
                w = table[p.id]
                w.buckets[cur] = w.buckets.get(cur, 0) + need
        if p.max_concurrency:
            self.inflight[p.id] = n + 1
        return Lease(p, lease_id, cur, cost, remote=False)

    def release(self, lease: Lease, token_delta: int, request_delta: int) -> None:
        p = lease.policy
        if p.max_concurrency:
            self.inflight[p.id] = max(0, self.inflight.get(p.id, 0) - 1)
        for table, delta in ((self.tpm, token_delta), (self.rpm, request_delta)):
            w = table.get(p.id)
            if delta and w is not None and lease.bucket in w.buckets:
                w.buckets[lease.bucket] = max(0, w.buckets[lease.bucket] + delta)


def _seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


class RateLimiter:
    """Admission by key. `acquire` raises RateLimited / TooLargeForKey; `release` is synchronous (the Redis part
    runs in a background task) so it can be called from any request's final bookkeeping."""

    def __init__(self, redis_url: str | None, prefix: str = "aligngate", lease_ttl_s: float = 30.0,
                 registry: CollectorRegistry | None = None, window_ms: int = WINDOW_MS, bucket_ms: int = BUCKET_MS,
                 redis_options: RedisOptions | None = None):
        self.redis_url, self.prefix = redis_url, prefix
        self.window_ms, self.bucket_ms = window_ms, bucket_ms
        self.ttl_ms = int(lease_ttl_s * 1000)
        self.local = LocalLimiter(window_ms, bucket_ms)
        # Longer timeouts than the cache's 50 ms: a check that times out on a busy (not dead) Redis falls back to
        # per-replica limits and may have been counted too. A dead Redis fails at once whatever the timeout, and
        # while the breaker is open only its probe pays the wait.
        self.redis_options = redis_options or RedisOptions(socket_timeout=0.5, connect_timeout=0.5, backoff=0.5)
        self.redis: SafeRedis | None = None
        self._scripts: tuple | None = None
        self._live: dict[str, Lease] = {}  # Redis leases this replica holds (renewed by the heartbeat)
        self._tasks: set[asyncio.Task] = set()
        self._heartbeat: asyncio.Task | None = None
        self._ids = itertools.count()
        self._tag = f"{os.getpid()}-{time.time_ns() % 10**9}"
        reg = registry or CollectorRegistry()
        self.limited = Counter("aligngate_rate_limited", "Requests refused by a per-key limit",
                               ["key_id", "limit"], registry=reg)
        self.fallbacks = Counter("aligngate_rate_limit_local_fallback",
                                 "Limit decisions taken locally because Redis was unavailable", registry=reg)

    # --- life cycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.redis_url:
            self.redis = SafeRedis(self.redis_url, self.redis_options, on_state=self._on_state)
            c = self.redis.client
            self._scripts = (c.register_script(_ADMIT), c.register_script(_RELEASE), c.register_script(_RENEW))
            self._heartbeat = asyncio.create_task(self._renew_loop())

    async def close(self) -> None:
        if self._heartbeat:
            self._heartbeat.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        if self.redis:
            await self.redis.close()

    def _on_state(self, up: bool) -> None:
        if up:
            log.info("rate_limits_shared_again", redis=self.redis_url)
        else:
            log.warning("rate_limits_local", redis=self.redis_url,
                        detail="Redis unavailable: per-key limits are enforced per replica until it is back")

    def _keys(self, key_id: str) -> list[str]:
        base = f"{self.prefix}:rl:{{{key_id}}}"  # one hash tag per key id: its three keys share a cluster slot
        return [f"{base}:rpm", f"{base}:tpm", f"{base}:conc"]

    # --- decisions -----------------------------------------------------------------------------------------
    async def acquire(self, p: KeyPolicy, cost: int) -> Lease | None:
        if not p.limited:
            return None
        if p.tpm and cost > p.tpm:
            raise TooLargeForKey(f"this request reserves {cost} tokens (prompt + max_tokens), more than API key "
                                 f"`{p.id}`'s whole tokens-per-minute limit ({p.tpm}); lower max_tokens")
        lease_id = f"{self._tag}-{next(self._ids)}"
        try:
            if self.redis is not None and self._scripts is not None:
                admit = self._scripts[0]
                args = [p.rpm or 0, p.tpm or 0, p.max_concurrency or 0, cost, self.window_ms, self.bucket_ms,
                        lease_id, self.ttl_ms]
                res = await self.redis.call(lambda r: admit(keys=self._keys(p.id), args=args))
                if res.ok:
                    v = res.value
                    if int(v[0]) == 1:
                        lease = Lease(p, lease_id, int(v[1]), cost, remote=True)
                        if p.max_concurrency:
                            self._live[lease_id] = lease
                        return lease
                    name = v[1].decode() if isinstance(v[1], bytes) else str(v[1])
                    raise RateLimited(p.id, name, _seconds(int(v[2])), int(v[3]), int(v[4]))
                self.fallbacks.inc()
            return self.local.admit(p, cost, lease_id)
        except RateLimited as e:
            self.limited.labels(p.id, e.limit).inc()
            raise

    def release(self, lease: Lease | None, used_tokens: int | None = None, refund: bool = False) -> None:
        """End of a request. `used_tokens` (prompt + completion) corrects the reservation (None: keep it);
        `refund` takes the request back entirely (the gateway refused it after admission, e.g. a full queue)."""
        if lease is None:
            return
        token_delta = -lease.cost if refund else (used_tokens - lease.cost if used_tokens is not None else 0)
        request_delta = -1 if refund else 0
        if not lease.remote:
            self.local.release(lease, token_delta, request_delta)
            return
        self._live.pop(lease.lease_id, None)
        task = asyncio.get_running_loop().create_task(self._release_remote(lease, token_delta, request_delta))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release_remote(self, lease: Lease, token_delta: int, request_delta: int) -> None:
        release = self._scripts[1]  # type: ignore[index]
        args = [lease.lease_id, lease.bucket, token_delta, request_delta]
        # failure is fine: the lease expires by its TTL, the token correction is lost (the reservation stands)
        await self.redis.call(lambda r: release(keys=self._keys(lease.policy.id), args=args))  # type: ignore[union-attr]

    async def _renew_loop(self) -> None:
        renew = self._scripts[2]  # type: ignore[index]
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            by_key: dict[str, list[str]] = {}
            for lease in list(self._live.values()):
                by_key.setdefault(lease.policy.id, []).append(lease.lease_id)
            for key_id, ids in by_key.items():
                keys, args = [self._keys(key_id)[2]], [self.ttl_ms, *ids]
                await self.redis.call(lambda r, k=keys, a=args: renew(keys=k, args=a))  # type: ignore[union-attr]
