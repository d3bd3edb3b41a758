"""The scenarios of `python -m benchmarks <scenario>`: which systems start, which loads they get, what is summarised.

Every scenario alternates its systems (A B, B A, ...) in one run, with load from vLLM's own bench machinery
(`benchmarks.harness.run_load`), and writes one JSON + markdown + PNG (`benchmarks.harness.write`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import harness as H
from benchmarks.procs import (
    ROOT,
    Proc,
    free_port,
    start_aligngate,
    start_command,
    start_vllm_server,
)

LITELLM_VENV = ROOT / ".cache" / "bench-venvs" / "litellm"
LITELLM_REQUIREMENT = "litellm[proxy]"
BENCH_KEY = "sk-aligngate-bench-" + secrets.token_hex(16)  # loopback only, per run


class Skip(Exception):
    """The scenario cannot run here (e.g. LiteLLM would not install); the message says why."""


@dataclass
class Ctx:
    scenario: str
    prof: H.Profile
    smoke: bool
    model: str
    out: Path
    argv: list[str]
    dataset: str = "random"
    vllm_urls: list[str] = field(default_factory=list)
    engine: str = "local"
    vllm_servers: int = 1
    reward_off: bool = False  # vs-vllm: serve the weights without the value head (the gateway alone, no reward)
    admission: str = "adaptive"  # overload: limits.adaptive on (latency-bounded) or the plain bounded FIFO
    adaptive: str = "{}"  # overload: the limits.adaptive settings (JSON)
    exclusive: bool = False  # one engine-backed system resident at a time (GPU profiles: engines can't share it)
    upstream_model: str = H.PUBLIC_MODEL  # the model name the vLLM server(s) serve
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aligngate-bench-")))
    procs: list[Proc] = field(default_factory=list)

    def load(self, rate: float, n: int | None = None, **kw) -> H.Load:
        return H.Load(rate=rate, num_prompts=n or self.prof.num_prompts, input_len=self.prof.input_len,
                      output_len=self.prof.output_len, dataset=self.dataset, **kw)

    def engine_fields(self) -> dict:
        p = self.prof
        return {"max_num_seqs": p.max_num_seqs, "dtype": p.dtype, "max_model_len": p.max_model_len,
                "enforce_eager": p.enforce_eager}

    def server_kwargs(self) -> dict:
        p = self.prof
        return {"dtype": p.dtype, "max_model_len": p.max_model_len, "enforce_eager": p.enforce_eager,
                "extra": list(p.server_extra)}

    def vllm_server(self, name: str = "vllm") -> str:
        kw = self.server_kwargs()
        proc, url = start_vllm_server(name, self.work, self.model, H.PUBLIC_MODEL, "--max-num-seqs",
                                      str(self.prof.max_num_seqs), *kw.pop("extra"), **kw)
        self.procs.append(proc)
        return url

    def upstreams(self, n: int) -> list[str]:
        """The vLLM server(s) remote-mode systems sit in front of: the given URLs, or n started here."""
        if self.vllm_urls:
            import httpx

            self.upstream_model = httpx.get(self.vllm_urls[0] + "/v1/models", timeout=30).json()["data"][0]["id"]
            return self.vllm_urls
        return [self.vllm_server(f"vllm-{i}") for i in range(n)]

    def start_gateway(self, name: str, versions: list[dict], **env: str) -> tuple[str, list[Proc]]:
        proc, url = start_aligngate(name, self.work, env=H.gateway_env(versions, self.work, name, **env))
        return url, [proc]

    def gateway(self, name: str, versions: list[dict], **env: str) -> str:
        url, procs = self.start_gateway(name, versions, **env)
        self.procs.extend(procs)
        return url

    def systems(self, starters: dict) -> dict:
        """name -> starter () -> (url, procs). Started (and warmed) now, or — exclusive mode — wrapped in
        `Launcher`s that `H.alternate` starts one at a time."""
        if self.exclusive:
            return {n: H.Launcher(f, warm=lambda url, n=n: self.warm({n: url})) for n, f in starters.items()}
        out = {}
        for n, f in starters.items():
            url, procs = f()
            self.procs.extend(procs)
            out[n] = url
        self.warm(out)
        return out

    def warm(self, systems: dict[str, str]) -> None:
        """A few requests per system first (one-off costs: connections, compiled paths, allocator)."""
        load = self.load(10.0, 4 if self.smoke else 16, seed=12345)
        for name, url in systems.items():
            s = H.run_load(url, load, self.model, self.work, f"warm-{name}", self.prof.slo_ms, self.prof.reward_floor)
            if not s["completed"]:  # a system that answers nothing would only produce a table of zeros
                import httpx

                r = httpx.post(url + "/v1/completions", json={"model": H.PUBLIC_MODEL, "prompt": "1+1=",
                                                              "max_tokens": 4}, timeout=60,
                               headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"})
                raise RuntimeError(f"{name} ({url}) failed every warm-up request {s['status_counts']}; "
                                   f"one more: {r.status_code} {r.text[:500]}")

    def result(self, systems: dict, baseline: str, descriptions: dict[str, str]) -> dict:
        r = H.new_result(self.scenario, self.prof, self.smoke, self.model, descriptions, baseline, self.argv)
        r["urls"] = {n: u for n, u in systems.items() if isinstance(u, str)}
        r["one_system_at_a_time"] = self.exclusive
        return r

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def _rates(ctx: Ctx) -> list[H.Load]:
    return [ctx.load(r) for r in ctx.prof.rates]


# --- vs-vllm and reward: the systems of bench_serve.py ------------------------------------------------------
def _bench_serve(ctx: Ctx, scenario: str) -> dict:
    from benchmarks.bench_serve import start_systems

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
    result["entries"] = H.alternate(systems, _rates(ctx), ctx.prof.rounds, baseline, ctx.model, ctx.work, ctx.prof)
    return result


def vs_vllm(ctx: Ctx) -> dict:
    r = _bench_serve(ctx, "vs-vllm")
    r["summary"] = {"target": "aligngate p99 E2E ≤ 1.00× vLLM's own server (goal ≤ 0.95×)",
                    **_ratio_summary(r, "aligngate")}
    return r


def reward(ctx: Ctx) -> dict:
    r = _bench_serve(ctx, "reward")
    r["summary"] = {**_ratio_summary(r, "reward-on"), **_ratio_summary(r, "second-pass")}
    return r


def _ratio_summary(r: dict, name: str) -> dict:
    out = {}
    for e in r["entries"]:
        rr = e["ratio_over_baseline"].get(name, {})
        out[f"{name} / {r['baseline']} at {e['label']}"] = (
            f"p99 E2E {H.fmt((rr.get('p99_e2el_ms') or {}).get('median'), 3)}×, "
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


# --- overhead -----------------------------------------------------------------------------------------------
def overhead(ctx: Ctx) -> dict:
    """The gateway alone: aligngate (remote mode) in front of benchmarks/fake_upstream.py (a stand-in, here
    only) vs the same load sent to the fake upstream directly, alternated; requests/s swept until p99 breaks."""
    port = free_port()
    fake_url = f"http://127.0.0.1:{port}"
    ctx.procs.append(start_command("fake-upstream", ctx.work, [sys.executable, "-m", "benchmarks.fake_upstream",
                                                               "--port", str(port), "--model", H.PUBLIC_MODEL],
                                   fake_url + "/health"))
    gw = ctx.gateway("aligngate", [{"name": "stable", "url": fake_url, "weight": 1}])
    systems = {"direct": fake_url, "aligngate": gw}
    # CPU time per request of the server each system's requests land on first (the fake upstream for direct,
    # the gateway process for aligngate): a cost figure a loaded machine's scheduling noise does not move much
    pids = {"direct": ctx.procs[-2].p.pid, "aligngate": ctx.procs[-1].p.pid}
    cpu0: dict[str, float] = {}

    def before(name: str, load: H.Load, rnd: int) -> dict:
        cpu0[name] = H.process_cpu_s(pids[name])
        return {}

    def after(name: str, load: H.Load, rnd: int) -> dict:
        return {"server_cpu_s": H.process_cpu_s(pids[name]) - cpu0[name]}
    result = ctx.result(systems, "direct", {
        "direct": "benchmarks/fake_upstream.py (a fake OpenAI-compatible streaming server; no model) reached directly",
        "aligngate": "aligngate remote mode in front of that same fake upstream"})
    ctx.warm(systems)
    out_len = 8
    loads = [H.Load(rate=r, num_prompts=max(20, int(r * ctx.prof.overhead_seconds)), input_len=32, output_len=out_len,
                    dataset=ctx.dataset, label=f"{r:g} req/s") for r in ctx.prof.overhead_rates]

    def broken(entry: dict) -> bool:
        gwr = entry["runs"]["aligngate"]
        achieved = H.med(gwr, "request_throughput") or 0
        failed = H.med(gwr, "failed") or 0
        slo = ctx.prof.slo_ms["e2el"]
        direct_ok = (H.med(entry["runs"]["direct"], "p99_e2el_ms") or 0) <= slo / 2  # else the machine broke, not us
        return failed > 0 or achieved < 0.8 * entry["rate"] or ((H.med(gwr, "p99_e2el_ms") or 0) > slo and direct_ok)

    result["entries"] = H.alternate(systems, loads, ctx.prof.rounds, "direct", ctx.model, ctx.work, ctx.prof,
                                    before=before, after=after, stop_after=broken)
    for e in result["entries"]:
        for runs in e["runs"].values():
            for run in runs:
                run["server_cpu_ms_per_request"] = 1000 * run["server_cpu_s"] / max(1, run["completed"] or 0)
    result["summary"] = {"target": "gateway's own p50 ≤ 1 ms, p99 ≤ 5 ms at 500 req/s"}
    result["own_latency_ms"] = []
    for e in result["entries"]:
        row = {"rate": e["rate"]}
        for m in ("p50_e2el_ms", "p99_e2el_ms", "p50_ttft_ms", "p99_ttft_ms"):
            diffs = [a[m] - b[m] for a, b in zip(e["runs"]["aligngate"], e["runs"]["direct"])]
            row[m.replace("_ms", "_added_ms")] = statistics.median(diffs)
        row["achieved_req_s"] = H.med(e["runs"]["aligngate"], "request_throughput")
        row["gateway_cpu_ms_per_request"] = H.med(e["runs"]["aligngate"], "server_cpu_ms_per_request")
        row["fake_upstream_cpu_ms_per_request"] = H.med(e["runs"]["direct"], "server_cpu_ms_per_request")
        result["own_latency_ms"].append(row)
        result["summary"][f"own latency at {e['label']}"] = (
            f"p50 {row['p50_e2el_added_ms']:+.2f} ms, p99 {row['p99_e2el_added_ms']:+.2f} ms (E2E); "
            f"TTFT p50 {row['p50_ttft_added_ms']:+.2f} / p99 {row['p99_ttft_added_ms']:+.2f} ms; "
            f"achieved {H.fmt(row['achieved_req_s'])} req/s; gateway CPU {H.fmt(row['gateway_cpu_ms_per_request'], 2)} "
            f"ms/request (fake upstream alone {H.fmt(row['fake_upstream_cpu_ms_per_request'], 2)})")
    last = result["entries"][-1]
    result["summary"]["sweep ended"] = (f"p99 broke at {last['label']} (failures, < 0.8× the offered rate "
                                        f"achieved, or p99 E2E over the {ctx.prof.slo_ms['e2el']:g} ms SLO while "
                                        "the direct runs stayed under half of it)"
                                        if broken(last)
                                        else "at the last rate asked, p99 not broken")
    result["notes"].append(f"{out_len} output tokens per request, streamed; added latency = gateway-in-front minus "
                           "fake-upstream-direct, per round (same run, alternated), median over rounds; the load "
                           "generator, the gateway and the fake upstream share this machine's cores")
    return result


# --- overload -----------------------------------------------------------------------------------------------
def overload(ctx: Ctx) -> dict:
    """Offered load at 2× measured capacity vs unloaded, alternated: admitted requests' p99, the share refused
    (429/503 — whatever the gateway does), gateway RSS before/after each run."""
    if ctx.engine == "remote":
        version = H.version_spec("stable", ctx.prof, 1.0, url=ctx.upstreams(1)[0])
        how = "remote mode in front of one vLLM server"
    else:
        version = H.version_spec("stable", ctx.prof, 1.0, model=ctx.model)
        how = "in-process engine"
    gw_proc_index = len(ctx.procs)
    env = {"ALIGNGATE_LIMITS__ADAPTIVE": ctx.adaptive} if ctx.admission == "adaptive" else {}
    url = ctx.gateway("aligngate", [version], **env)
    gw = ctx.procs[gw_proc_index]
    ctx.warm({"aligngate": url})
    # capacity: a burst (all requests at once), completed requests per second
    burst = ctx.load(math.inf, 8 if ctx.smoke else max(100, ctx.prof.max_num_seqs * 2), seed=777, label="capacity")
    cap_run = H.run_load(url, burst, ctx.model, ctx.work, "capacity", ctx.prof.slo_ms, ctx.prof.reward_floor)
    capacity = cap_run["request_throughput"]
    print(f"capacity (burst of {burst.num_prompts}): {capacity:.1f} req/s", flush=True)
    secs = ctx.prof.overload_seconds
    loads = {"unloaded": ctx.load(max(1.0, 0.25 * capacity), max(6, int(0.25 * capacity * secs)), label="unloaded"),
             "2x-capacity": ctx.load(2 * capacity, max(6, int(2 * capacity * secs)), label="2x-capacity")}
    result = ctx.result({n: url for n in loads}, "unloaded", {
        "unloaded": f"aligngate ({how}, admission: {ctx.admission}"
                    f"{' ' + ctx.adaptive if ctx.admission == 'adaptive' else ''}) at 0.25× capacity "
                    f"({loads['unloaded'].rate:.1f} req/s)",
        "2x-capacity": f"the same gateway at 2× capacity ({loads['2x-capacity'].rate:.1f} req/s offered)"})
    result["capacity"] = {"req_s": capacity, "load": burst.describe(), "run": {k: v for k, v in cap_run.items()
                                                                           if not k.endswith("_all")}}
    runs: dict[str, list] = {n: [] for n in loads}
    rss0 = H.process_rss_mb(gw.p.pid)
    for rnd in range(ctx.prof.rounds):
        for name in H.rotate(list(loads), rnd):
            before = H.process_rss_mb(gw.p.pid)
            s = H.run_load(url, loads[name], ctx.model, ctx.work, f"{name}-{rnd}", ctx.prof.slo_ms,
                           ctx.prof.reward_floor)
            time.sleep(0.5)
            after = H.process_rss_mb(gw.p.pid)
            s.update({"rss_before_mb": before, "rss_after_mb": after, "gateway_alive": gw.alive(), "round": rnd,
                      "offered_rate": loads[name].rate,
                      "refused_share": s["refused_429_503"] / max(1, sum(s["status_counts"].values()))})
            runs[name].append(s)
            print(f"[{name}] round {rnd} " + H.line(name, s) + f", RSS {before} -> {after}", flush=True)
    result["entries"] = [{"label": "unloaded vs 2× capacity", "rate": loads["2x-capacity"].rate,
                          "load": loads["2x-capacity"].describe(), "runs": runs,
                          "ratio_over_baseline": H.ratios(runs, "unloaded")}]
    ratio = result["entries"][0]["ratio_over_baseline"]["2x-capacity"]["p99_e2el_ms"]["median"]
    over = runs["2x-capacity"]
    rss1 = H.process_rss_mb(gw.p.pid)
    result["summary"] = {
        "target": "admitted p99 within 1.5× of the unloaded p99; no crash; memory bounded",
        "admitted p99 E2E / unloaded p99 E2E": H.fmt(ratio, 2),
        "refused (429/503) share at 2×": H.fmt(H.med(over, "refused_share"), 3),
        "status codes at 2× (all rounds)": _sum_counts(over),
        "gateway alive at the end": gw.alive(),
        "gateway RSS (MiB, process / with engine children)": f"{rss0['rss_mb']} / {rss0['rss_tree_mb']} before, "
                                                             f"{rss1['rss_mb']} / {rss1['rss_tree_mb']} after"}
    result["notes"].append("capacity = completed req/s of a burst (all requests sent at once) just before the "
                           "rounds; 'admitted' = requests answered 200 (vLLM's latency metrics cover only those)")
    return result


def _sum_counts(runs: list[dict]) -> dict:
    total: dict[str, int] = {}
    for r in runs:
        for k, v in r["status_counts"].items():
            total[k] = total.get(k, 0) + v
    return total


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
