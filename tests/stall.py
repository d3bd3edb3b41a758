"""The signature of the known in-process engine start-up stall (issue 21), read from a gateway's log, so a test
quarantines that failure and nothing else.

The stall, as seen in CI: an in-process engine's EngineCore logs its OpenMP thread-binding plan for the
worker (`ompmultiprocessing ... core ids=[...]`), and then its Worker never logs anything: a healthy Worker's first
line comes from `CPUWorker.init_device` (the `LD_PRELOAD` warnings), after `init_cpu_memory_env` (the NUMA
memory set-up in `CPUWorker.__init__`), so a silent worker stopped before or in that set-up. Precisely, in the
log after the last `engine_starting` event:
  1. a line `(EngineCore pid=P) ... core ids=` (the core planned the worker's CPU binding and spawned it),
  2. after it, no line from any `(Worker pid=...)`,
  3. and no sign of any other outcome: no `engine_ready`, no `engine_start_failed`, no `Traceback`;
  4. with `now`: the plan line is at least `min_silence_s` old (vLLM's own timestamp, local time), so a start
     that is merely slow and reached the plan just before the wait ran out does not match.
A crash, a refused config, a slow but progressing start: none of those match, and the test fails on them.
"""

from __future__ import annotations

import re
from datetime import datetime

_CORE_IDS = re.compile(r"^\(EngineCore pid=(\d+)\) \w+ (\d\d-\d\d \d\d:\d\d:\d\d) .*core ids=")


def stall_signature(log: str, now: datetime | None = None, min_silence_s: float = 60.0) -> str | None:
    """A one-line description when the log shows the known stall (see above), else None."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if '"event": "engine_starting"' in line]
    if not starts:
        return None
    after = lines[starts[-1] + 1:]
    plan = next(((i, m.group(1)) for i, line in enumerate(after) if (m := _CORE_IDS.match(line))), None)
    if plan is None:
        return None
    i, core = plan
    m = _CORE_IDS.match(after[i])
    silent_s = None
    if now is not None:
        at = datetime.strptime(f"{now.year}-{m.group(2)}", "%Y-%m-%d %H:%M:%S")
        silent_s = (now - at).total_seconds()
        if silent_s < min_silence_s:
            return None
    rest = after[i + 1:]
    if any(line.startswith("(Worker pid=") for line in rest):
        return None
    if any(s in line for line in after for s in ('"engine_ready"', '"engine_start_failed"', "Traceback")):
        return None
    return (f"EngineCore {core} planned its worker's CPU binding ({after[i].split('core ids=')[1].strip()}), "
            f"then the worker logged nothing in the {len(rest)} lines after"
            + (f" nor in {silent_s:.0f} s" if silent_s is not None else "") + " (stopped before init_device)")
