"""The scenarios of `python -m benchmarks <scenario>`: which systems start, which loads they get, what is summarised.
This module holds the engine-backed comparisons and the registry; the capacity scenarios (`overhead`, `overload`)
are in `benchmarks/capacity.py`, the run's context in `benchmarks/context.py`.

Every scenario alternates its systems (A B, B A, ...) in one run, with load from vLLM's own bench machinery
(`benchmarks.load.run_load`), and writes one JSON + markdown + PNG (`benchmarks.report.write`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
from pathlib import Path

from benchmarks import harness as H
from benchmarks.capacity import overhead, overload
from benchmarks.context import Ctx, Skip
from benchmarks.procs import ROOT, free_port, start_command

LITELLM_VENV = ROOT / ".cache" / "bench-venvs" / "litellm"
LITELLM_REQUIREMENT = "litellm[proxy]"
BENCH_KEY = "sk-aligngate-bench-" + secrets.token_hex(16)  # loopback only, per run


def _rates(ctx: Ctx) -> list[H.Load]:
    return [ctx.load(r) for r in ctx.prof.rates]


# --- vs-vllm and reward: the systems of systems.py -----------------------------------------------------------
def _paired(ctx: Ctx, scenario: str, rounds: int | None = None) -> dict:
    from benchmarks.systems import start_systems

    names, baseline = {"vs-vllm": (["vllm", "aligngate"], "vllm"),
                       "reward": (["reward-off", "reward-on", "second-pass"], "reward-off")}[scenario]

    def starter(name: str):
        def start() -> tuple[str, list]:
            urls, procs, _ = start_systems(scenario, ctx.model, ctx.work, reward_off=ctx.reward_off,
                                           engine=ctx.engine_fields(), server=ctx.server_kwargs(), only={name})
            return urls[name], procs

        return start

    systems = ctx.systems({n: starter(n) for n in names})
    desc = {"vllm": "vLLM's own OpenAI server (python -m vllm.entrypoints.openai.api_server), same model/settings",
            "aligngate": "aligngate, in-process vLLM engine, " + ("same weights without the value head (reward off)"
                                                                 if ctx.reward_off else "in-pass reward on"),
            "reward-off": "aligngate, same weights without the value head (no reward)",
            "reward-on": "aligngate, in-pass reward (value head fused into the logits step)",
            "second-pass": "aligngate, reward read by one more engine step over prompt+response (reward_position=eos)"}
    result = ctx.result(systems, baseline, {n: desc[n] for n in systems})
    result["entries"] = H.alternate(systems, _rates(ctx), rounds or ctx.prof.rounds, baseline, ctx.model, ctx.work,
                                    ctx.prof)
    return result


VS_VLLM_MIN_ROUNDS = 5  # a 1% question: fewer rounds leave the pooled p99's CI far wider than the margin


def vs_vllm(ctx: Ctx) -> dict:
    r = _paired(ctx, "vs-vllm", None if ctx.smoke else max(ctx.prof.rounds, VS_VLLM_MIN_ROUNDS))
    r["summary"] = {"target": "aligngate p99 E2E ≤ 1.00× vLLM's own server (goal ≤ 0.95×)",
                    **_ratio_summary(r, "aligngate")}
    return r


def reward(ctx: Ctx) -> dict:
    r = _paired(ctx, "reward")
    r["summary"] = {**_ratio_summary(r, "reward-on"), **_ratio_summary(r, "second-pass")}
    return r


def _ratio_summary(r: dict, name: str) -> dict:
    """The headline first: the pooled p99 E2E ratio (every request of every round) with its bootstrap 95% CI;
    then the median of the per-round ratios and the p50 / TTFT medians."""
    out = {}
    for e in r["entries"]:
        rr = e["ratio_over_baseline"].get(name, {})
        pooled = rr.get("p99_e2el_ms_pooled") or {}
        lo, hi = pooled.get("ci95") or (None, None)
        out[f"{name} / {r['baseline']} at {e['label']}"] = (
            f"pooled p99 E2E {H.fmt(pooled.get('ratio'), 3)}× [95% CI {H.fmt(lo, 3)}, {H.fmt(hi, 3)}]; "
            f"median of rounds {H.fmt((rr.get('p99_e2el_ms') or {}).get('median'), 3)}×, "
            f"p50 E2E {H.fmt((rr.get('p50_e2el_ms') or {}).get('median'), 3)}×, "
            f"p99 TTFT {H.fmt((rr.get('p99_ttft_ms') or {}).get('median'), 3)}×")
    return out


# --- vs-litellm ---------------------------------------------------------------------------------------------
def litellm_config(path: Path, upstreams: list[str], upstream_model: str = H.PUBLIC_MODEL) -> Path:
    """Two deployments of the public model, weights 9:1, `simple-shuffle` (LiteLLM's weighted random)."""
    first, second = upstreams[0], upstreams[-1]
    path.write_text(f"""model_list:
  - model_name: {H.PUBLIC_MODEL}
    litellm_params:
      model: hosted_vllm/{upstream_model}
      api_base: {first}/v1
      api_key: none
      weight: 9
  - model_name: {H.PUBLIC_MODEL}
    litellm_params:
      model: hosted_vllm/{upstream_model}
      api_base: {second}/v1
      api_key: none
      weight: 1
router_settings:
  routing_strategy: simple-shuffle
litellm_settings:
  telemetry: false
  drop_params: false
""")
    return path


def start_litellm(ctx: Ctx, upstreams: list[str]) -> str:
    ok, msg = H.ensure_venv(LITELLM_VENV, LITELLM_REQUIREMENT, "import litellm.proxy.proxy_server")
    print(f"LiteLLM: {msg}", flush=True)
    if not ok:
        raise Skip(f"vs-litellm skipped: LiteLLM could not be installed into its own venv ({LITELLM_VENV}): {msg}")
    port = free_port()
    cfg = litellm_config(ctx.work / "litellm.yaml", upstreams, ctx.upstream_model)
    cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", "1"]
    env = {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": BENCH_KEY,
           "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "True"}
    url = f"http://127.0.0.1:{port}"
    ctx.procs.append(start_command("litellm", ctx.work, cmd, url + "/health/liveliness", env=env))
    return url


def vs_litellm(ctx: Ctx) -> dict:
    ups = ctx.upstreams(ctx.vllm_servers)
    lite = start_litellm(ctx, ups)
    # both proxies check an API key (LiteLLM refuses to start without a master key); the load generator sends
    # it as vLLM's bench does, from OPENAI_API_KEY
    os.environ["OPENAI_API_KEY"] = BENCH_KEY
    gw = ctx.gateway("aligngate", [H.version_spec("stable", ctx.prof, 0.9, url=ups[0]),
                                   H.version_spec("canary", ctx.prof, 0.1, url=ups[-1])],
                     ALIGNGATE_API_KEYS=json.dumps([{"id": "bench", "key": BENCH_KEY}]))
    systems = {"litellm": lite, "aligngate": gw}
    result = ctx.result(systems, "litellm", {
        "litellm": f"LiteLLM proxy ({LITELLM_REQUIREMENT} in {LITELLM_VENV.relative_to(ROOT)}), simple-shuffle, "
                   f"two deployments weights 9:1 → {ups}",
        "aligngate": f"aligngate remote mode, versions stable 0.9 / canary 0.1 → {ups}"})
    result["upstreams"] = ups
    ctx.warm(systems)
    result["entries"] = H.alternate(systems, _rates(ctx), ctx.prof.rounds, "litellm", ctx.model, ctx.work, ctx.prof)
    result["summary"] = {"target": "aligngate p99 E2E ≤ 0.5× LiteLLM's", **_ratio_summary(result, "aligngate")}
    result["notes"].append("both proxies in front of the same vLLM server(s); remote-mode aligngate returns no "
                           "reward (the value head needs the in-process engine), so reward-goodput is n/a here")
    result["notes"].append("LiteLLM forwards ignore_eos (every answer has the asked length upstream), but puts its "
                           "usage in a chunk that still has a (empty) choice, which vLLM's bench client reads as "
                           "one more token chunk and skips the usage: LiteLLM's output-token count then comes from "
                           "re-tokenising the text (a few tokens short) and its TPOT reads slightly high; TTFT and "
                           "E2E are unaffected")
    return result


# --- canary -------------------------------------------------------------------------------------------------
def canary(ctx: Ctx) -> dict:
    if ctx.engine == "remote":
        up = ctx.upstreams(1)[0]
        one = [H.version_spec("stable", ctx.prof, 1.0, url=up)]
        two = [H.version_spec("stable", ctx.prof, 0.9, url=up), H.version_spec("canary", ctx.prof, 0.1, url=up)]
        how = f"remote mode, every version → the same vLLM server {up}"
    else:
        one = [H.version_spec("stable", ctx.prof, 1.0, model=ctx.model)]
        two = [H.version_spec("stable", ctx.prof, 0.9, model=ctx.model),
               H.version_spec("canary", ctx.prof, 0.1, model=ctx.model)]
        how = "in-process engines (the canary has its own engine, same weights)"
    systems = ctx.systems({"no-canary": lambda: ctx.start_gateway("no-canary", one),
                           "canary-10": lambda: ctx.start_gateway("canary-10", two)})
    result = ctx.result(systems, "no-canary", {"no-canary": f"aligngate, one version (stable 1.0); {how}",
                                               "canary-10": f"aligngate, stable 0.9 / canary 0.1; {how}"})
    result["entries"] = H.alternate(systems, _rates(ctx), ctx.prof.rounds, "no-canary", ctx.model, ctx.work, ctx.prof)
    result["summary"] = _ratio_summary(result, "canary-10")
    for e in result["entries"]:
        split: dict[str, int] = {}
        for run in e["runs"]["canary-10"]:
            for v, n in (run.get("versions") or {}).items():
                split[v] = split.get(v, 0) + n
        if split:
            result["summary"][f"canary share at {e['label']}"] = f"{split.get('canary', 0) / sum(split.values()):.3f}"
    return result


# --- cache --------------------------------------------------------------------------------------------------
def cache(ctx: Ctx) -> dict:
    """Cold vs warm reward cache, LRU only vs LRU+Redis. The cached reward is the finalize-step (EOS) value
    (`reward_position=eos`): a miss costs one more engine step, a hit skips it. Greedy decoding (temperature 0)
    and a repeated seed make the warm pass ask exactly the questions, and get exactly the answers, of the cold one.
    """
    sys.path.insert(0, str(ROOT))
    from tests.redis_fixture import RedisServer

    redis = RedisServer().start()
    try:
        versions = [H.version_spec("stable", ctx.prof, 1.0, model=ctx.model)]
        systems = ctx.systems({
            "lru-only": lambda: ctx.start_gateway("lru-only", versions, ALIGNGATE_REWARD_POSITION="eos"),
            "lru+redis": lambda: ctx.start_gateway("lru+redis", versions, ALIGNGATE_REWARD_POSITION="eos",
                                                   ALIGNGATE_REDIS_URL=redis.url)})
        result = ctx.result(systems, "lru-only", {
            "lru-only": "aligngate, reward at EOS (finalize step) cached in the in-process LRU only",
            "lru+redis": f"aligngate, same, LRU then Redis ({redis.url}, a local redis-server)"})
        rate = ctx.prof.rates[0]
        names = list(systems)
        runs = {phase: {n: [] for n in names} for phase in ("cold", "warm")}
        for rnd in range(ctx.prof.rounds):
            for name in H.rotate(names, rnd):
                sysx = systems[name]
                url = sysx.start() if isinstance(sysx, H.Launcher) else sysx
                try:
                    for phase in ("cold", "warm"):  # same seed twice: new prompts, then the same prompts again
                        load = ctx.load(rate, seed=1000 + rnd, temperature=0.0, label=phase)
                        s = H.run_load(url, load, ctx.model, ctx.work, f"{name}-{phase}-{rnd}",
                                       ctx.prof.slo_ms, ctx.prof.reward_floor)
                        s["round"] = rnd
                        runs[phase][name].append(s)
                        print(f"[{phase}] round {rnd} " + H.line(name, s) + f", cached {s.get('reward_cached')}",
                              flush=True)
                finally:
                    if isinstance(sysx, H.Launcher):
                        sysx.stop()
        for phase in ("cold", "warm"):
            load = ctx.load(rate, temperature=0.0)
            result["entries"].append({"label": phase, "rate": rate, "load": load.describe(), "runs": runs[phase],
                                      "ratio_over_baseline": H.ratios(runs[phase], "lru-only")})
        result["summary"] = {}
        for n in names:
            w = {m: [a[m] / b[m] for a, b in zip(runs["warm"][n], runs["cold"][n]) if a.get(m) and b.get(m)]
                 for m in ("p50_e2el_ms", "p99_e2el_ms")}
            result["summary"][f"{n} warm / cold"] = (
                f"p50 E2E {H.fmt(statistics.median(w['p50_e2el_ms']) if w['p50_e2el_ms'] else None, 3)}×, "
                f"p99 E2E {H.fmt(statistics.median(w['p99_e2el_ms']) if w['p99_e2el_ms'] else None, 3)}×; "
                f"cached rewards warm {H.fmt(H.med(runs['warm'][n], 'reward_cached'), 0)} / "
                f"cold {H.fmt(H.med(runs['cold'][n], 'reward_cached'), 0)}")
        result["micro"] = _cache_micro(redis.url, ctx.smoke)
        result["summary"]["cache look-ups (bench_cache.py pieces)"] = (
            f"LRU hit p99 {result['micro']['lru']['get_lru']['p99_us']:.1f} µs, Redis hit (second replica, "
            f"loopback) p99 {result['micro']['redis']['get_or_compute_redis_hit']['p99_us']:.0f} µs")
        result["notes"].append("reward_position=eos for both systems: the only reward the cache holds is the "
                               "finalize-step value (the in-pass value is free and never cached)")
    finally:
        redis.stop()
    return result


def _cache_micro(redis_url: str, smoke: bool) -> dict:
    from benchmarks.bench_cache import bench_lru, bench_redis

    async def go() -> dict:
        return {"lru": await bench_lru(2_000 if smoke else 50_000),
                "redis": await bench_redis(redis_url, 200 if smoke else 3_000)}

    return asyncio.run(go())


SCENARIOS = {
    "vs-vllm": (vs_vllm, "aligngate (in-process engine) vs vLLM's own OpenAI server, same model"),
    "vs-litellm": (vs_litellm, "aligngate (remote mode, 0.9/0.1) vs LiteLLM proxy (simple-shuffle 9:1), "
                               "same vLLM server(s); LiteLLM installed into its own venv"),
    "canary": (canary, "a 10% canary (stable 0.9 / canary 0.1) vs no canary (one version), same model"),
    "reward": (reward, "in-pass reward on vs off vs the unfused second-pass alternative"),
    "cache": (cache, "cold vs warm reward cache, LRU only vs LRU+Redis (reward at EOS)"),
    "overhead": (overhead, "the gateway alone in front of a fake upstream vs that upstream direct; req/s swept"),
    "overload": (overload, "2× measured capacity vs unloaded: admitted p99, 429/503 share, RSS"),
}
