"""The capacity scenarios: the gateway's own cost in front of a fake upstream, swept in req/s until p99 breaks
(`overhead`), and what admission does at 2x measured capacity (`overload`)."""

from __future__ import annotations

import math
import statistics
import sys
import time

from benchmarks import harness as H
from benchmarks.context import Ctx
from benchmarks.procs import free_port, start_command


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
            s = H.run_load(url, H.round_load(loads[name], rnd), ctx.model, ctx.work, f"{name}-{rnd}",
                           ctx.prof.slo_ms, ctx.prof.reward_floor)
            time.sleep(0.5)
            after = H.process_rss_mb(gw.p.pid)
            s.update({"rss_before_mb": before, "rss_after_mb": after, "gateway_alive": gw.alive(), "round": rnd,
                      "seed": loads[name].seed + rnd, "offered_rate": loads[name].rate,
                      "refused_share": s["refused_429_503"] / max(1, sum(s["status_counts"].values()))})
            runs[name].append(s)
            print(f"[{name}] round {rnd} " + H.line(name, s) + f", RSS {before} -> {after}", flush=True)
    result["entries"] = [{"label": "unloaded vs 2× capacity", "rate": loads["2x-capacity"].rate,
                          "load": loads["2x-capacity"].describe(), "runs": runs,
                          "ratio_over_baseline": H.ratios(runs, "unloaded")}]
    ratio = result["entries"][0]["ratio_over_baseline"]["2x-capacity"]["p99_e2el_ms"]["median"]
    over = runs["2x-capacity"]
    rss1 = H.process_rss_mb(gw.p.pid)
    pooled = result["entries"][0]["ratio_over_baseline"]["2x-capacity"].get("p99_e2el_ms_pooled") or {}
    lo, hi = pooled.get("ci95") or (None, None)
    goodput = H.med(over, "request_goodput")
    good_share = goodput / capacity if goodput is not None and capacity else None
    # refusing more must not look better: the admitted p99 only counts while the gateway still serves ≥ 0.9× of
    # what it can (goodput: answered within every SLO)
    met = (pooled.get("ratio") is not None and pooled["ratio"] <= 1.5 and good_share is not None
           and good_share >= 0.9)
    result["summary"] = {
        "target": "admitted p99 ≤ 1.5× the unloaded p99 while goodput at 2× ≥ 0.9× measured capacity; no crash; "
                  "memory bounded",
        "admitted p99 E2E / unloaded p99 E2E, pooled [95% CI]": f"{H.fmt(pooled.get('ratio'), 3)} "
                                                                f"[{H.fmt(lo, 3)}, {H.fmt(hi, 3)}]",
        "admitted p99 E2E / unloaded p99 E2E, median of rounds": H.fmt(ratio, 2),
        "goodput at 2× (req/s within every SLO) / capacity": f"{H.fmt(goodput, 1)} / {H.fmt(capacity, 1)} = "
                                                              f"{H.fmt(good_share, 3)}",
        "target met": met,
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
