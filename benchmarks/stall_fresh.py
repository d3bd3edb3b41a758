"""Reproduce the engine start-up stall the way CI met it (issue 21 item 1): a fresh `aligngate serve` on its
embedded default (stable + canary, two in-process engines), started again and again; the second engine's start is
watched in the gateway's log. When its worker goes silent with the stall's signature (`tests/stall.py`) for
`--silence` seconds, every process of the gateway's tree is dumped with py-spy (`--native`), and the gateway is
stopped; the loop goes on.

    python -m benchmarks.stall_fresh --cycles 40 --cache-dir /tmp/stall-cache

Results: benchmarks/results/stall_fresh.json (every cycle's time to ready, or its stall and its dumps); dumps under
benchmarks/results/stall_dumps/fresh-*.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            out.append(k)
            todo.append(k)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _dump(pid: int, out: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        r = subprocess.run([spy, "dump", "--pid", str(pid), "--native"], capture_output=True, text=True, timeout=90)
        text = r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        text = f"py-spy failed: {e!r}"
    status = ""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        status += "\nwchan: " + Path(f"/proc/{pid}/wchan").read_text()
        status += "\nstack:\n" + Path(f"/proc/{pid}/stack").read_text()
    except OSError:
        pass
    out.write_text(f"# pid {pid}: {_cmdline(pid)}\n{text}\n# /proc\n{status}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--cache-dir", required=True, help="ALIGNGATE_CACHE_DIR with the default models (built if not)")
    ap.add_argument("--silence", type=float, default=45.0, help="seconds of worker silence that count as a stall")
    ap.add_argument("--give-up", type=float, default=300.0, help="seconds after which a start counts as failed")
    ap.add_argument("--out", default=str(RESULTS / "stall_fresh.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from stall import stall_signature

    from benchmarks.procs import start_aligngate

    dumps = RESULTS / "stall_dumps"
    dumps.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stall-fresh-"))
    cycles = []
    for c in range(1, args.cycles + 1):
        t0 = time.time()
        proc, url = start_aligngate(f"fresh-{c}", work, env={"ALIGNGATE_CACHE_DIR": args.cache_dir}, wait="health")
        log = work / f"fresh-{c}.log"
        rec: dict = {"cycle": c}
        try:
            while True:
                text = log.read_text(errors="replace")
                if text.count('"event": "engine_ready"') >= 2:
                    rec["ready_s"] = round(time.time() - t0, 1)
                    break
                sig = stall_signature(text, now=datetime.now(), min_silence_s=args.silence)
                if sig:
                    rec["stall"] = sig
                    stem = f"fresh-{datetime.now():%H%M%S}-c{c}"
                    pids = [proc.p.pid, *_descendants(proc.p.pid)]
                    rec["dumps"] = {}
                    for pid in pids:
                        f = dumps / f"{stem}-{pid}.txt"
                        _dump(pid, f)
                        rec["dumps"][str(pid)] = str(f.relative_to(RESULTS.parent.parent))
                    shutil.copy(log, dumps / f"{stem}-gateway.log")
                    rec["stalled_s"] = round(time.time() - t0, 1)
                    break
                if time.time() - t0 > args.give_up:
                    rec["failed"] = "no second engine_ready and no stall signature"
                    shutil.copy(log, dumps / f"fresh-c{c}-failed-gateway.log")
                    break
                time.sleep(2)
        finally:
            proc.stop()
        rec["load_1m"] = os.getloadavg()[0]
        cycles.append(rec)
        print(json.dumps(rec), flush=True)
        Path(args.out).write_text(json.dumps({"cycles": cycles, "stalls": sum("stall" in r for r in cycles),
                                             "at": datetime.utcnow().isoformat() + "Z"}, indent=1))


if __name__ == "__main__":
    main()
