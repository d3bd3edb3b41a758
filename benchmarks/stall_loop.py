"""Reproduce the in-process engine start-up stall on demand (issue 21 item 1).

What the gateway does when a version is registered beside a serving one, in a loop: one process (like the
gateway) runs engine A (`serve.engines.engine_vllm.VLLMEngine`, the tiny default stable model) under a steady trickle of
requests, and starts a second engine B beside it, `--cycles` times: start (with a deadline), one request, stop.
A start past the deadline is a stall: py-spy dumps of this process's threads and of B's EngineCore and Worker
are saved, then B's processes are killed (serve.engines.engine_procs) and the loop goes on.

Suspects are switched by the environment every engine process inherits (`--bind`, `--omp-wait`):
`VLLM_CPU_OMP_THREADS_BIND` (auto: every engine's worker binds core 0 on this 2-core machine; `nobind`; or a
distinct core per engine) and `OMP_WAIT_POLICY` (PASSIVE: idle OpenMP threads of the running engine sleep
instead of spinning).

    python -m benchmarks.stall_loop --cycles 10 --bind auto
    python -m benchmarks.stall_loop --cycles 10 --bind nobind --omp-wait PASSIVE

Results: benchmarks/results/stall_loop-<variant>.json (every cycle's start time or stall), dumps under
benchmarks/results/stall_dumps/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _dump(pid: int, out: Path) -> str:
    spy = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
    try:
        r = subprocess.run([spy, "dump", "--pid", str(pid), "--native"], capture_output=True, text=True, timeout=60)
        text = r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        text = f"py-spy failed: {e!r}"
    out.write_text(text)
    return text


async def _dump_all(version: str, dumps: Path, stem: str) -> dict[str, str]:
    """py-spy dumps of this process (the gateway side) and of the version's EngineCore and its workers."""
    from serve.engines import engine_procs

    out = {}
    cores = engine_procs.pids(version)
    for pid in [os.getpid(), *cores, *(d for c in cores for d in engine_procs.descendants(c))]:
        f = dumps / f"{stem}-{pid}.txt"
        await asyncio.to_thread(_dump, pid, f)
        out[str(pid)] = str(f.relative_to(RESULTS.parent.parent))
    return out


async def _trickle(engine, stop: asyncio.Event, counts: dict) -> None:
    """A steady small load on the running engine (its OpenMP threads are busy, as in a serving gateway)."""
    from serve.engines.engine import GenerationRequest

    i = 0
    while not stop.is_set():
        i += 1
        req = GenerationRequest(request_id=f"trickle-{i}", kind="completion", prompt="1+1=", max_tokens=16,
                                temperature=1.0)
        try:
            async for _ in engine.generate(req):
                pass
            counts["ok"] += 1
        except Exception:  # noqa: BLE001 - counted, the loop is about engine B
            counts["err"] += 1
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> dict:
    from serve.engines import engine_procs
    from serve.config import VersionSpec
    from serve.default_models import ensure_default_models
    from serve.engines.engine import GenerationRequest
    from serve.engines.engine_vllm import VLLMEngine

    models = Path(args.cache_dir) / "models"
    if not (models / "default-stable").exists():
        ensure_default_models(Path(args.cache_dir))
    engine_procs.prepare(Path(tempfile.mkdtemp(prefix="stall-loop-")))
    variant = f"bind-{args.bind}" + (f"-omp-{args.omp_wait.lower()}" if args.omp_wait else "")
    dumps = RESULTS / "stall_dumps"
    dumps.mkdir(parents=True, exist_ok=True)

    def spec(name: str, model: str) -> VersionSpec:
        return VersionSpec(name=name, model=str(models / model), weight=1.0)

    bind_a, bind_b = (args.bind, args.bind) if args.bind in ("auto", "nobind") else args.bind.split("/")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind_a
    a = VLLMEngine(spec("a", "default-stable"))
    t0 = time.perf_counter()
    await a.start()
    print(f"[{variant}] engine A up in {time.perf_counter() - t0:.1f} s", flush=True)
    stop, counts = asyncio.Event(), {"ok": 0, "err": 0}
    trickle = asyncio.create_task(_trickle(a, stop, counts))
    cycles = []
    try:
        for k in range(args.cycles):
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind_b
            b = VLLMEngine(spec(f"b{k}", "default-canary"))
            t0 = time.perf_counter()
            rec: dict = {"cycle": k}
            try:
                start = asyncio.ensure_future(b.start())
                done, _ = await asyncio.wait({start}, timeout=min(args.dump_after, args.deadline))
                if not done:  # slow but not (yet) a stall: take the evidence while it is happening, keep waiting
                    rec["slow_dumps"] = await _dump_all(b.name, dumps, f"{variant}-cycle{k}-slow")
                    rec["slow_dumps_at_s"] = round(time.perf_counter() - t0, 2)
                await asyncio.wait_for(start, max(0.0, args.deadline - (time.perf_counter() - t0)))
                rec["start_s"] = round(time.perf_counter() - t0, 2)
                req = GenerationRequest(request_id=f"b-{k}", kind="completion", prompt="2+2=", max_tokens=4)
                async for _ in b.generate(req):
                    pass
                rec["outcome"] = "ok"
            except asyncio.TimeoutError:
                rec["outcome"] = "stall"
                rec["dumps"] = await _dump_all(b.name, dumps, f"{variant}-cycle{k}")
                rec["killed"] = engine_procs.kill_version(b.name)
            except Exception as e:  # noqa: BLE001
                rec["outcome"], rec["error"] = "error", repr(e)
            finally:
                await b.stop()
            print(f"[{variant}] cycle {k}: {rec}", flush=True)
            cycles.append(rec)
            _write(args, variant, cycles, counts)
    finally:
        stop.set()
        await trickle
        await a.stop()
    out = _write(args, variant, cycles, counts)
    print(json.dumps({k: v for k, v in out.items() if k != "per_cycle"}), flush=True)
    return out


def _write(args: argparse.Namespace, variant: str, cycles: list[dict], counts: dict) -> dict:
    """The results so far (written after every cycle, so a run cut short still leaves its numbers)."""
    stalls = sum(c["outcome"] == "stall" for c in cycles)
    starts = [c["start_s"] for c in cycles if "start_s" in c]
    out = {"variant": variant, "bind": args.bind, "omp_wait_policy": args.omp_wait, "deadline_s": args.deadline,
           "cycles": len(cycles), "stalls": stalls, "errors": sum(c["outcome"] == "error" for c in cycles),
           "start_s_median": sorted(starts)[len(starts) // 2] if starts else None,
           "start_s_max": max(starts) if starts else None,
           "slow_starts": sum("slow_dumps" in c for c in cycles), "dump_after_s": args.dump_after,
           "trickle": counts, "per_cycle": cycles,
           "machine_load_1m": os.getloadavg()[0], "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = RESULTS / f"stall_loop-{variant}{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--deadline", type=float, default=120.0, help="a start longer than this is a stall (s)")
    p.add_argument("--dump-after", type=float, default=60.0,
                   help="a start still running after this many seconds is slow: py-spy dumps are taken then "
                        "(evidence while it happens) and the wait goes on until --deadline")
    p.add_argument("--tag", default="", help="appended to the results file name (e.g. 50cycles)")
    p.add_argument("--bind", default="auto", help="VLLM_CPU_OMP_THREADS_BIND: auto, nobind, or 'A/B' per engine "
                                                  "(e.g. 0/1: engine A on core 0, engine B on core 1)")
    p.add_argument("--omp-wait", choices=["PASSIVE", "ACTIVE"], default=None, help="OMP_WAIT_POLICY")
    p.add_argument("--cache-dir", default=os.environ.get("ALIGNGATE_CACHE_DIR", "/tmp/aligngate-stall-loop"))
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.omp_wait:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
