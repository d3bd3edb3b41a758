"""Reward cache and audit reward model benchmarks → benchmarks/results/cache.json.

1. LRU hit latency: `RewardCache.get_lru(...)` (normalise + hash + look-up + counter), per call, p50/p99
   (target p99 ≤ 5 µs); also the full `await get_or_compute(...)` on an LRU hit.
2. Redis hit latency on loopback: a second replica (empty LRU) reading scores the first one wrote, per call
   through `get_or_compute` (target p99 ≤ 1 ms). Starts its own `redis-server` on a free port.
3. Replay workload: a synthetic stream of requests with repeated answers (Zipf-popular prompts, a few answer
   variants each, some differing only in whitespace), replayed against 1 replica (LRU), 2 replicas (LRU each)
   and 2 replicas sharing Redis: the fraction of reward computations saved.
4. Audit reward model: onnxruntime vs torch throughput at batch 32 on a tiny reward model built by the training
   module (random weights: throughput does not depend on them), interleaved runs, plus max |ONNX − torch|.

Timings include `time.perf_counter_ns()` overhead (reported as `timer_overhead_ns`). On a 2-core machine shared
with other jobs the tails are noisy: `loadavg` is recorded at start and end.

    .venv/bin/python benchmarks/bench_cache.py [--n 100000] [--rm-dir DIR] [--out benchmarks/results/cache.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_facts  # noqa: E402
from serve.rewards.cache import CacheConfig, RewardCache  # noqa: E402


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary_us(samples_ns: list[int]) -> dict:
    us = [x / 1000 for x in samples_ns]
    return {"n": len(us), "p50_us": pct(us, 0.5), "p90_us": pct(us, 0.9), "p99_us": pct(us, 0.99),
            "p999_us": pct(us, 0.999), "max_us": max(us)}


def texts(rng: random.Random, n: int, plen: int = 120, rlen: int = 240) -> list[tuple[str, str]]:
    words = "the of and to a in is that for it as was with be by on not he I this are or his from at".split()

    def t(k: int) -> str:
        out, size = [], 0
        while size < k:
            w = rng.choice(words)
            out.append(w)
            size += len(w) + 1
        return " ".join(out)

    return [(t(plen), t(rlen)) for _ in range(n)]


async def one() -> float:
    return 0.5


async def bench_lru(n: int) -> dict:
    rng = random.Random(0)
    pairs = texts(rng, 10_000)
    c = RewardCache(None, CacheConfig(lru_size=20_000))
    for p, r in pairs:
        await c.put("rm-v1", p, r, 0.5)
    timer = []
    for _ in range(10_000):
        t0 = time.perf_counter_ns()
        t1 = time.perf_counter_ns()
        timer.append(t1 - t0)
    get = c.get_lru
    lat = []
    for i in range(n):
        p, r = pairs[i % len(pairs)]
        t0 = time.perf_counter_ns()
        s = get("rm-v1", p, r)
        lat.append(time.perf_counter_ns() - t0)
        assert s is not None
    full = []
    for i in range(n // 4):
        p, r = pairs[i % len(pairs)]
        t0 = time.perf_counter_ns()
        res = await c.get_or_compute("rm-v1", p, r, one)
        full.append(time.perf_counter_ns() - t0)
        assert res.tier == "lru"
    await c.close()
    return {"get_lru": summary_us(lat), "get_or_compute_lru_hit": summary_us(full),
            "timer_overhead_ns_p50": pct(timer, 0.5), "prompt_chars": 120, "response_chars": 240,
            "entries": len(pairs), "target_p99_us": 5.0}


async def bench_redis(url: str, n: int) -> dict:
    rng = random.Random(1)
    pairs = texts(rng, n)
    a, b = RewardCache(url), RewardCache(url)
    for p, r in pairs:
        await a.put("rm-v1", p, r, 0.25)
    await a.drain()
    for _ in range(200):  # warm the connection pool
        await b.redis.call(lambda c: c.ping())
    lat, not_redis = [], 0
    for p, r in pairs:
        t0 = time.perf_counter_ns()
        res = await b.get_or_compute("rm-v1", p, r, one)
        dt = time.perf_counter_ns() - t0
        if res.tier == "redis":
            lat.append(dt)
        else:  # a timed-out call (breaker opened): counted, not mixed into the hit latencies
            not_redis += 1
    out = {"get_or_compute_redis_hit": summary_us(lat), "target_p99_us": 1000.0, "not_served_by_redis": not_redis,
           "redis_errors": b.redis.errors, "socket_timeout_s": b.cfg.redis.socket_timeout}
    await a.close()
    await b.close()
    return out


def replay_stream(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Zipf(1.1)-popular prompts among 3,000; each has 3 answer variants (p = .6/.3/.1); 15% of answers come
    back with extra whitespace (same normalised text)."""
    rng = random.Random(seed)
    n_prompts = 3000
    weights = [1 / (k + 1) ** 1.1 for k in range(n_prompts)]
    prompts = rng.choices(range(n_prompts), weights=weights, k=n)
    out = []
    for pid in prompts:
        v = rng.choices((0, 1, 2), weights=(0.6, 0.3, 0.1))[0]
        resp = f"answer {v} to question {pid}."
        if rng.random() < 0.15:
            resp = "  " + resp.replace(" ", "  ") + "\n"
        out.append((f"question {pid}: what is the answer?", resp))
    return out


async def bench_replay(url: str | None, n: int) -> dict:
    stream = replay_stream(n)
    results = {}

    async def run(name: str, replicas: list[RewardCache]) -> None:
        computes = 0

        async def compute() -> float:
            nonlocal computes
            computes += 1
            return 0.5

        for i, (p, r) in enumerate(stream):
            c = replicas[i % len(replicas)]
            await c.get_or_compute("rm-v1", p, r, compute)
            if url and i % 64 == 0:
                await c.drain()  # let background Redis writes land, as they would between real requests
        tiers = {"lru": sum(c.stats.lru_hits for c in replicas), "redis": sum(c.stats.redis_hits for c in replicas)}
        results[name] = {"requests": len(stream), "computes": computes, "saved_fraction": 1 - computes / len(stream),
                         "hits_by_tier": tiers}
        for c in replicas:
            await c.close()

    await run("1_replica_lru", [RewardCache(None)])
    await run("2_replicas_lru_only", [RewardCache(None), RewardCache(None)])
    if url:
        await run("2_replicas_lru_redis", [RewardCache(url), RewardCache(url)])
    distinct = len({(p, " ".join(r.split())) for p, r in stream})
    results["workload"] = {"requests": len(stream), "distinct_normalised_answers": distinct,
                           "upper_bound_saved": 1 - distinct / len(stream), "generator": replay_stream.__doc__}
    return results


def bench_audit(rm_dir: str | None, repeats: int) -> dict:
    from serve.rewards.audit import benchmark_backends

    if rm_dir is None:
        import torch

        from training import reward_model as RM

        torch.manual_seed(0)
        rm_dir = tempfile.mkdtemp(prefix="aligngate-rm-") + "/rm"
        RM.save(RM.ScoreWrapper(RM.new_reward_model(RM.RMConfig(size="tiny"))), rm_dir)
    out = {f"threads_{t}": benchmark_backends(rm_dir, batch=32, response_len=32, repeats=repeats, threads=t)
           for t in (1, 2)}
    out["speedup_onnx_over_torch"] = min(v["speedup_onnx_over_torch"] for v in out.values())
    out["max_abs_diff"] = max(v["max_abs_diff"] for k, v in out.items() if k.startswith("threads_"))
    out["onnx_default"] = out["speedup_onnx_over_torch"] >= 1.3
    out["model"] = "tiny LlamaForSequenceClassification (training.tiny 'tiny': 2 layers, hidden 128)"
    out["rule"] = "ONNX is the audit default only if its throughput is >= 1.3x torch's"
    return out


async def amain(args) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from tests.redis_fixture import RedisServer

    out: dict = {"machine": machine_facts(), "command": "python " + " ".join(sys.argv)}
    out["lru"] = await bench_lru(args.n)
    print("lru", json.dumps(out["lru"]["get_lru"]))
    srv = RedisServer().start()
    try:
        out["redis"] = await bench_redis(srv.url, args.n_redis)
        print("redis", json.dumps(out["redis"]["get_or_compute_redis_hit"]))
        out["replay"] = await bench_replay(srv.url, args.n_replay)
        print("replay", json.dumps({k: v.get("saved_fraction", v.get("upper_bound_saved"))
                                    for k, v in out["replay"].items()}))
    finally:
        srv.stop()
    if not args.skip_audit:
        out["audit"] = bench_audit(args.rm_dir, args.audit_repeats)
        print("audit", json.dumps({k: out["audit"][k] for k in ("speedup_onnx_over_torch", "max_abs_diff")}))
    out["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="LRU look-ups")
    ap.add_argument("--n-redis", type=int, default=5_000, help="Redis hits")
    ap.add_argument("--n-replay", type=int, default=20_000, help="replayed requests")
    ap.add_argument("--rm-dir", default=None, help="a reward model dir (default: build a tiny one)")
    ap.add_argument("--audit-repeats", type=int, default=30)
    ap.add_argument("--skip-audit", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cache.json")
    args = ap.parse_args(argv)
    out = asyncio.run(amain(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
