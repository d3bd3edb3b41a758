"""A benchmark run's outputs: the result record (`new_result`), its markdown table, PNG plots (latency CDFs, p99
vs rate), and `write`, which puts JSON + markdown + PNG in the output folder and refreshes the README section."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from benchmarks.profiles import Profile
from benchmarks.run_metrics import METRICS, PERCENTILES, med

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"


def new_result(scenario: str, prof: Profile, smoke: bool, model: str, systems: dict[str, str], baseline: str,
               argv: list[str]) -> dict:
    from benchmarks.machine import machine_facts

    return {"benchmark": "aligngate", "scenario": scenario, "profile": prof.name, "smoke": smoke,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m benchmarks " + " ".join(argv), "machine": machine_facts(), "model": model,
            "slo_ms": prof.slo_ms, "reward_floor": prof.reward_floor, "profile_settings": prof.describe(),
            "systems": systems, "baseline": baseline, "entries": [], "notes": []}


def fmt(x, d=1) -> str:
    return "n/a" if x is None else (f"{x:.{d}f}" if isinstance(x, (int, float)) else str(x))


def markdown(result: dict) -> str:
    """The run's table: medians over rounds, per load and system."""
    slo = ", ".join(f"{k} ≤ {v:g} ms" for k, v in result["slo_ms"].items())
    m = result["machine"]
    head = [f"**{result['scenario']}** — profile `{result['profile']}`{' (smoke)' if result['smoke'] else ''}, "
            f"{result['created']}; {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}, load average at start "
            f"{m['loadavg_at_start'][0]:.1f}. SLOs for goodput: {slo}; reward floor {result['reward_floor']:g}. "
            f"Per-system cells: medians over rounds (systems alternated A B / B A in one run, new prompts each "
            f"round); the ratio leads with the pooled p99 (every request of every round) and its bootstrap CI.", "",
            "| load | system | TTFT p50/p90/p99 ms | TPOT p50/p90/p99 ms | ITL p50/p90/p99 ms | E2E p50/p90/p99 ms "
            "| req/s | goodput | reward-goodput | ok / refused / failed | p99 E2E vs baseline: pooled [95% CI] / median of rounds |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["entries"]:
        for name, runs in e["runs"].items():
            trip = {mt: "/".join(fmt(med(runs, f"p{p}_{mt}_ms"), 1 if mt != "tpot" else 2) for p in PERCENTILES)
                    for mt in METRICS}
            refused = med(runs, "refused_429_503")
            rr = e["ratio_over_baseline"].get(name, {})
            pooled = rr.get("p99_e2el_ms_pooled") or {}
            lo, hi = pooled.get("ci95") or (None, None)
            ratio = "baseline" if name == result["baseline"] else (
                f"**{fmt(pooled.get('ratio'), 3)}** [{fmt(lo, 2)}, {fmt(hi, 2)}] / "
                f"{fmt((rr.get('p99_e2el_ms') or {}).get('median'), 3)}")
            head.append(f"| {e['label']} | {name} | {trip['ttft']} | {trip['tpot']} | {trip['itl']} | {trip['e2el']} | "
                        f"{fmt(med(runs, 'request_throughput'))} | {fmt(med(runs, 'request_goodput'))} | "
                        f"{fmt(med(runs, 'reward_goodput'))} | {fmt(med(runs, 'completed'), 0)} / {fmt(refused, 0)} / "
                        f"{fmt(med(runs, 'failed'), 0)} | {ratio} |")
    for k, v in result.get("summary", {}).items():
        head.append(f"\n- **{k}**: {v}")
    for n in result.get("notes", []):
        head.append(f"\n- {n}")
    return "\n".join(head) + "\n"


def plot(result: dict, path: Path) -> None:
    """Latency CDFs per system (E2E, pooled over rounds; the last entries), and p99 E2E vs request rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    def plain(axis) -> None:
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())

    entries = result["entries"][-3:]
    rates = [e["rate"] for e in result["entries"]]
    sweep = len(set(rates)) >= 2 and all(r is not None and not math.isinf(r) for r in rates)
    ncols = len(entries) + (1 if sweep else 0)
    fig, axes = plt.subplots(1, max(ncols, 1), figsize=(4.6 * max(ncols, 1), 4), squeeze=False)
    axes = axes[0]
    for ax, e in zip(axes, entries):
        lo, hi = math.inf, 0.0
        for name, runs in e["runs"].items():
            xs = sorted(x for r in runs for x in r.get("e2el_ms_all", []))
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=name)
                lo, hi = min(lo, max(xs[0], 1e-3)), max(hi, xs[-1])
        wide = hi / lo > 20 if hi else False
        if wide:
            ax.set_xscale("log")
            plain(ax.xaxis)
        ax.set_xlabel(f"end-to-end latency (ms{', log' if wide else ''})")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"E2E CDF, {e['label']}", fontsize=9)
        ax.axhline(0.99, color="grey", lw=0.5, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if sweep:
        ax = axes[-1]
        names = list(result["entries"][0]["runs"])
        ys = []
        for name in names:
            pts = [(e["rate"], med(e["runs"][name], "p99_e2el_ms")) for e in result["entries"] if name in e["runs"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{name} p99")
            ys += [p[1] for p in pts if p[1]]
        ax.set_xlabel("offered request rate (req/s)")
        ax.set_ylabel("p99 E2E (ms)")
        if max(rates) / min(rates) > 20:
            ax.set_xscale("log")
            plain(ax.xaxis)
        if ys and max(ys) / max(min(ys), 1e-3) > 20:
            ax.set_yscale("log")
            plain(ax.yaxis)
        ax.set_title("p99 vs request rate", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    m = result["machine"]
    fig.suptitle(f"{result['scenario']} ({result['profile']} profile) — {m['cpu']}, {m['cores']} cores, "
                 f"GPU {m['gpu'] or 'none'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(result: dict, out_dir: Path, update_readme: bool) -> Path:
    """JSON + markdown + PNG into out_dir (named after scenario and profile); the README section if asked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['scenario'].replace('-', '_')}_{result['profile']}{'_smoke' if result['smoke'] else ''}"
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (out_dir / f"{stem}.md").write_text(md)
    try:
        plot(result, out_dir / f"{stem}.png")
    except Exception as e:  # noqa: BLE001 - a plot must not lose a finished run
        print(f"plot failed: {e!r}", file=sys.stderr)
    if update_readme:
        readme_section(result["scenario"], md, result["command"], js.relative_to(ROOT) if js.is_relative_to(ROOT)
                       else js)
    print(md)
    print(f"wrote {js}, {js.with_suffix('.md').name}, {js.with_suffix('.png').name}")
    return js


def readme_section(scenario: str, md: str, command: str, path) -> None:
    """Replace the scenario's block in benchmarks/README.md (between its markers) with the latest table."""
    start, end = f"<!-- result:{scenario} -->", f"<!-- /result:{scenario} -->"
    block = f"{start}\nReproduce: `{command}` → `{path}` (+ `.md`, `.png`)\n\n{md}{end}"
    text = README.read_text() if README.exists() else ""
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += f"\n### {scenario}\n\n{block}\n"
    README.write_text(text)
