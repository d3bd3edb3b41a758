"""Canary benchmark: routing decision overhead, and time from an injected canary fault to automatic rollback.

    .venv/bin/python -m benchmarks.bench_canary [--vllm-url URL] [--rate 20] [--out benchmarks/results/canary.json]

1. Routing overhead: `Router.route` (sticky and unkeyed, three versions) and the per-request `Stats.record`,
   100,000 decisions each, p50/p99 in µs (target p99 ≤ 50 µs).
2. Fault to rollback: a real vLLM server (started here unless --vllm-url) behind an aligngate whose `stable`
   and `canary` versions both point at it; a rollout at 10% with traffic at --rate req/s (open loop, a new
   user per request); after a warm-up, the canary is made to fail (error_rate=1) or slow (+1 s) through the
   test-only fault endpoint; we time until the controller has rolled back (target ≤ 10 s) and count the
   client-visible failures (which can only be canary requests sent before the rollback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

ADMIN_KEY = "bench-admin-key"


# --- load --------------------------------------------------------------------------------------------------
async def drive(url: str, rate: float, stop: asyncio.Event, results: list, prefix: str = "u",
                max_tokens: int = 4, client: httpx.AsyncClient | None = None) -> None:
    """Open-loop load: one request every 1/rate s, each from a new user, until `stop` is set. Appends
    (t_sent, t_done, status, version, user) to `results`."""
    own = client is None
    client = client or httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=256))
    tasks: set[asyncio.Task] = set()

    async def one(i: int) -> None:
        t0 = time.monotonic()
        body = {"model": "aligngate", "messages": [{"role": "user", "content": f"{i % 50}+{i % 7}="}],
                "max_tokens": max_tokens, "user": f"{prefix}-{i}"}
        try:
            r = await client.post(url + "/v1/chat/completions", json=body)
            results.append((t0, time.monotonic(), r.status_code, r.headers.get("x-aligngate-version"), body["user"]))
        except httpx.HTTPError:
            results.append((t0, time.monotonic(), 0, None, body["user"]))

    i = 0
    start = time.monotonic()
    while not stop.is_set():
        t = asyncio.create_task(one(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    if own:
        await client.aclose()


def admin(url: str, method: str, path: str, body: dict | None = None, key: str = ADMIN_KEY) -> dict:
    r = httpx.request(method, url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def gateway_env(vllm_url: str, cache_dir: str, **extra: str) -> dict[str, str]:
    versions = [{"name": "stable", "url": vllm_url, "weight": 1}, {"name": "canary", "url": vllm_url, "weight": 0}]
    env = {"ALIGNGATE_VERSIONS": json.dumps(versions), "ALIGNGATE_ADMIN_KEY": ADMIN_KEY,
           "ALIGNGATE_ALLOW_FAULT_INJECTION": "1", "ALIGNGATE_CACHE_DIR": cache_dir,
           "ALIGNGATE_CANARY__TICK_S": "0.25", "ALIGNGATE_LOG_LEVEL": "warning"}
    env.update(extra)
    return env


async def fault_to_rollback(url: str, kind: str, rate: float, warmup_s: float = 4.0, limit_s: float = 30.0) -> dict:
    admin(url, "POST", "/admin/canary/start", {"version": "canary", "stages": [0.1, 0.5, 1.0],
                                               "min_requests": 1_000_000, "reason": f"bench {kind}"})
    results: list = []
    stop = asyncio.Event()
    load = asyncio.create_task(drive(url, rate, stop, results, prefix=f"{kind}-{random.random():.6f}"))
    await asyncio.sleep(warmup_s)
    fault = {"error_rate": 1.0} if kind == "error" else {"latency_s": 1.0}
    await asyncio.to_thread(admin, url, "POST", "/admin/versions/canary/fault", fault)
    t_fault = time.monotonic()
    t_rb = None
    state = None
    while time.monotonic() - t_fault < limit_s:
        st = await asyncio.to_thread(admin, url, "GET", "/admin/status")
        state = st["rollout"]["state"]
        if state == "rolled_back":
            t_rb = time.monotonic()
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)  # traffic after the rollback: must all be answered by stable
    stop.set()
    await load
    await asyncio.to_thread(admin, url, "DELETE", "/admin/versions/canary/fault")
    reason = st["rollout"].get("reason")
    failed = [r for r in results if r[2] != 200]
    # error answers carry no version header: the sticky bucket of the user says where the request went
    from serve.rollout.router import Router

    at10 = Router("aligngate", ["stable", "canary"], {"stable": 0.9, "canary": 0.1})
    after = [r for r in results if t_rb and r[0] > t_rb + 0.5]
    return {
        "kind": kind, "rate_rps": rate, "rolled_back": state == "rolled_back",
        "fault_to_rollback_s": round(t_rb - t_fault, 3) if t_rb else None, "reason": reason,
        "requests": len(results), "client_visible_failures": len(failed),
        "failures_on_canary": sum(1 for r in failed if (r[3] or at10.route("aligngate", r[4]).version) == "canary"),
        "canary_requests_after_fault": sum(1 for r in results if r[0] >= t_fault and
                                           (r[3] or at10.route("aligngate", r[4]).version) == "canary"),
        "canary_answers_after_rollback": sum(1 for r in after if r[3] == "canary"),
        "failures_after_rollback": sum(1 for r in after if r[2] != 200),
    }


def tiny_model() -> Path:
    """A tiny random-weight policy, built once per machine (seconds) under a lock: canary mechanics need a real
    engine, not a trained one."""
    import fcntl
    import shutil

    from serve.config import default_cache_dir
    from training.tiny import build_tiny_policy

    root = default_cache_dir() / "test-models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / "canary-tiny"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            tmp = root / "canary-tiny.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            build_tiny_policy(tmp, size="tiny", seed=0)
            tmp.rename(target)
    return target


def routing_overhead(n: int = 100_000) -> dict:
    from serve.rollout.router import Router
    from serve.rollout.stats import Stats

    r = Router("aligngate", ["stable", "canary", "v2"], {"stable": 0.85, "canary": 0.1, "v2": 0.05})
    s = Stats()
    keys = [f"user-{i}" for i in range(n)]
    out = {}
    for name, fn in (("route_sticky", lambda k: r.route("aligngate", k)),
                     ("route_unkeyed", lambda k: r.route("aligngate")),
                     ("stats_record", lambda k: s.record("canary", 0.01, 0.1, "200"))):
        ns = []
        pc = time.perf_counter_ns
        for k in keys:
            t = pc()
            fn(k)
            ns.append(pc() - t)
        ns.sort()
        out[name] = {"p50_us": ns[len(ns) // 2] / 1000, "p99_us": ns[int(0.99 * len(ns))] / 1000,
                     "mean_us": statistics.fmean(ns) / 1000, "n": n}
    return out


async def main_async(args) -> dict:
    from benchmarks.procs import start_aligngate, start_vllm_server

    result: dict = {"routing": routing_overhead(), "targets": {"routing_p99_us": 50, "fault_to_rollback_s": 10}}
    print(json.dumps(result["routing"], indent=2))
    log_dir = Path(tempfile.mkdtemp(prefix="bench-canary-"))
    procs = []
    try:
        vllm_url = args.vllm_url
        if not vllm_url:
            model = args.model or str(tiny_model())
            proc, vllm_url = start_vllm_server("vllm", log_dir, model, "policy")
            procs.append(proc)
        proc, url = start_aligngate("aligngate", log_dir, env=gateway_env(vllm_url, str(log_dir)))
        procs.append(proc)
        result["fault_to_rollback"] = []
        for kind in ("error", "latency"):
            r = await fault_to_rollback(url, kind, args.rate)
            print(json.dumps(r, indent=2))
            result["fault_to_rollback"].append(r)
    finally:
        for p in reversed(procs):
            p.stop()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-url", help="use this running vLLM server instead of starting one")
    ap.add_argument("--model", help="model directory for the vLLM server (default: a tiny random policy)")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "canary.json"))
    args = ap.parse_args()
    result = asyncio.run(main_async(args))
    result["host"] = {"cpus": __import__("os").cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
