"""The in-process engines' processes end with the gateway, however the gateway ends (issue 24).

vLLM runs each in-process engine as a tree of processes: gateway → `VLLM::EngineCore` → `VLLM::Worker`. With
the `spawn` start method (serve/engines/engine_vllm.py) nothing ties a child's life to its parent's: a gateway killed
with SIGKILL (the OOM killer, a Kubernetes grace period that ran out) left every EngineCore and Worker running
under pid 1 (~0.8 + 2 GB each), and SIGTERM did not end an orphaned core. Three pieces here:

1. Child side (`child_setup`, run by the vLLM plugin's `register()`, which vLLM calls in every process it starts).
   The EngineCore - a direct child of the gateway - makes itself the leader of a new process group, which its
   Worker inherits, so one `killpg` ends one engine's whole tree. Every engine process runs a watchdog thread that
   SIGKILLs it (the EngineCore: its group) the moment its parent pid changes, i.e. the parent died and the process
   was re-parented. Not `PR_SET_PDEATHSIG` for the EngineCore: it fires when the *thread* that spawned the child
   ends, and the gateway builds engines in an asyncio pool thread. A Worker is spawned by the EngineCore's main
   thread, so it also gets `PR_SET_PDEATHSIG(SIGKILL)` (kernel-side: it works even if the worker's Python is stuck
   holding the GIL). Both also watch the gateway itself (pid and /proc start time, from the environment), and a
   process that finds the gateway already dead when the plugin first runs in it - a gateway killed while the
   engine was still importing vLLM, when `getppid()` is already 1 - ends itself at once.
2. A pid file per EngineCore in `<cache_dir>/engines/` (its pid and /proc start time, its gateway's pid and start
   time, the version). A gateway starting on the same cache dir reports every engine core left by a dead gateway
   (`stale_engine_core`) and ends it only when it is provably that process (same pid *and* start time), so a
   recycled pid is never killed; cores of a gateway that is still alive are left alone.
3. Gateway side: which EngineCore each version's start spawned (a context variable, carried by
   `asyncio.to_thread` into the thread that builds the engine, read by a wrapper of vLLM's
   `CoreEngineProcManager`), so a start past its deadline, or a stop that left something behind, can end exactly
   that version's processes (`kill_version`).

The gateway marks itself with `ALIGNGATE_GATEWAY_PID`; processes without it (vLLM's own server using the same
plugin) are left untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from serve.logs import get_logger

log = get_logger(__name__)

GATEWAY_PID_ENV = "ALIGNGATE_GATEWAY_PID"
GATEWAY_START_ENV = "ALIGNGATE_GATEWAY_START"  # the gateway's /proc start time: that pid is still that gateway
PIDDIR_ENV = "ALIGNGATE_ENGINE_PIDDIR"
VERSION_ENV = "ALIGNGATE_ENGINE_VERSION"  # set around each spawn: the version the new EngineCore serves
WATCHDOG_ENV = "ALIGNGATE_ENGINE_WATCHDOG"  # "off": no watchdog (tests: make an orphan on purpose)
HANG_ENV = "ALIGNGATE_ENGINE_HANG"  # set by the gateway for one spawn: that EngineCore hangs in its start-up
FAULT_HANG_ENV = "ALIGNGATE_FAULT_START_HANG"
"""TEST ONLY, read by the gateway: `version[:times]` makes that version's next `times` (default 1) engine starts
hang inside the real EngineCore process (before its handshake), so the start deadline can be exercised."""

WATCH_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1

# --- /proc ------------------------------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22): with the pid, it names one
    process for good; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return int(fields[19])  # field 22 of the whole line


def is_process(pid: int, started: int | None) -> bool:
    """`pid` is still the very process that started at `started` (and not a zombie)."""
    if started is None or start_time(pid) != started:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL an EngineCore and its descendants: its process group when it leads one (it made one in
    `child_setup`), and each descendant found through /proc as well (a core started without the group)."""
    with contextlib.suppress(OSError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    for p in [*descendants(pid), pid]:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


# --- child side (every process vLLM starts) ---------------------------------------------------------------------


def child_setup() -> None:
    """Run in every process vLLM starts (through the plugin's `register()`); a no-op outside a gateway's tree,
    in the gateway itself, and when called again."""
    global _child_done
    gateway = os.environ.get(GATEWAY_PID_ENV, "")
    me = os.getpid()
    if _child_done or not gateway.isdigit() or int(gateway) == me:
        return
    _child_done = True
    gateway_start = os.environ.get(GATEWAY_START_ENV, "")
    gateway_id = (int(gateway), int(gateway_start) if gateway_start.isdigit() else None)
    if not _gateway_alive(gateway_id):
        # the gateway died before this process got here (a spawned child imports vLLM for seconds before the
        # plugin runs): its parent may already be pid 1, so the parent check below cannot tell; nobody will use it
        log.warning("engine_orphaned_at_start", pid=os.getpid(), gateway_pid=gateway_id[0])
        os.kill(os.getpid(), signal.SIGKILL)
    parent = os.getppid()
    is_core = parent == int(gateway)
    if is_core:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)  # its Worker inherits the group: one killpg ends this engine
        _write_pidfile(int(gateway))
    else:
        _set_pdeathsig()
    if os.environ.get(WATCHDOG_ENV, "on") != "off":
        threading.Thread(target=_watch, args=(parent, is_core, gateway_id), name="aligngate-parent-watchdog",
                         daemon=True).start()
    if is_core and os.environ.pop(HANG_ENV, None) == "1":  # test hook (FAULT_HANG_ENV): a start that never ends
        log.warning("engine_start_hang_injected", pid=me, version=os.environ.get(VERSION_ENV))
        while True:
            time.sleep(3600)


_child_done = False


def _watch(parent: int, leader: bool, gateway: tuple[int, int | None]) -> None:
    while os.getppid() == parent and _gateway_alive(gateway):
        time.sleep(WATCH_INTERVAL_S)
    # the parent (or the gateway above it) is gone: nobody will ever use or stop this engine
    if leader and os.getpgrp() == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _gateway_alive(gateway: tuple[int, int | None]) -> bool:
    """The gateway is still running: that very process when its start time is known, else any process by its pid
    (not a zombie)."""
    pid, started = gateway
    if started is not None:
        return is_process(pid, started)
    st = start_time(pid)
    return st is not None and is_process(pid, st)


def _set_pdeathsig() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog still runs
        pass


def _write_pidfile(gateway: int) -> None:
    d = os.environ.get(PIDDIR_ENV)
    if not d:
        return
    me = os.getpid()
    rec = {"pid": me, "start": start_time(me), "gateway_pid": gateway, "gateway_start": start_time(gateway),
           "version": os.environ.get(VERSION_ENV, "")}
    path = Path(d) / f"{rec['version'] or 'engine'}-{me}.json"
    with contextlib.suppress(OSError):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(path)


# --- gateway side -----------------------------------------------------------------------------------------------


@dataclass
class Stale:
    """An engine core recorded in the pid directory whose gateway is gone."""

    pid: int
    version: str
    gateway_pid: int
    killed: bool

    def to_dict(self) -> dict:
        return {"pid": self.pid, "version": self.version, "gateway_pid": self.gateway_pid, "killed": self.killed}


_piddir: Path | None = None
_hangs: dict[str, int] = {}
_spawn_lock = threading.Lock()
_procs: dict[str, list[tuple[int, int | None]]] = {}  # version -> [(EngineCore pid, start time)]
starting: contextvars.ContextVar[str | None] = contextvars.ContextVar("aligngate_starting_version", default=None)


def prepare(cache_dir: Path) -> list[Stale]:
    """Once per gateway process, before its first engine: mark the process as a gateway (its engines' children
    watch it), and end the engine cores earlier gateways on this cache dir left behind."""
    global _piddir
    if _piddir is not None:
        return []
    _piddir = Path(cache_dir) / "engines"
    _piddir.mkdir(parents=True, exist_ok=True)
    os.environ[GATEWAY_PID_ENV] = str(os.getpid())
    os.environ[GATEWAY_START_ENV] = str(start_time(os.getpid()) or "")
    os.environ[PIDDIR_ENV] = str(_piddir)
    _hangs.update(_parse_hangs(os.environ.get(FAULT_HANG_ENV, "")))
    return reap_stale(_piddir)


def reap_stale(piddir: Path) -> list[Stale]:
    """End the engine cores in `piddir` whose gateway is dead; drop the records of processes that are gone."""
    found = []
    for f in sorted(piddir.glob("*.json")):
        try:
            rec = json.loads(f.read_text())
            pid, gw = int(rec["pid"]), int(rec["gateway_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                f.unlink()
            continue
        if not is_process(pid, rec.get("start")):  # ended (or the pid is someone else's now): only the file
            with contextlib.suppress(OSError):
                f.unlink()
            continue
        if is_process(gw, rec.get("gateway_start")):  # another live gateway's engine on this cache dir
            continue
        kill_tree(pid)
        stale = Stale(pid, str(rec.get("version", "")), gw, killed=True)
        log.warning("stale_engine_core", **stale.to_dict(), reason="its gateway is gone (killed without a "
                    "clean stop); same pid and start time as recorded, so it is ours: ended")
        found.append(stale)
        with contextlib.suppress(OSError):
            f.unlink()
    return found


def _parse_hangs(spec: str) -> dict[str, int]:
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, times = item.partition(":")
        out[name] = int(times or 1)
    return out


def track_spawns() -> None:
    """Wrap vLLM's `CoreEngineProcManager` (idempotent): each EngineCore it starts is recorded under the version
    being started (`starting`), and learns that version (its pid file's name) through the environment, set under
    a lock for the few milliseconds of the spawn so two versions starting at once cannot mix them up."""
    from vllm.v1.engine import utils

    cls = utils.CoreEngineProcManager
    if getattr(cls.__init__, "_aligngate_tracked", False):
        return
    original = cls.__init__

    def __init__(self, *args, **kwargs):  # noqa: N807
        version = starting.get()
        with _spawn_lock:
            os.environ[VERSION_ENV] = version or ""
            if version and _hangs.get(version, 0) > 0:
                _hangs[version] -= 1
                os.environ[HANG_ENV] = "1"
            try:
                original(self, *args, **kwargs)
            finally:
                os.environ.pop(HANG_ENV, None)
                if version:
                    _procs.setdefault(version, []).extend(
                        (p.pid, start_time(p.pid)) for p in getattr(self, "processes", []) if p.pid)

    __init__._aligngate_tracked = True  # type: ignore[attr-defined]
    cls.__init__ = __init__
    # The EngineCore's entry point becomes `engine_core_entry` (the spawned child imports it from this module),
    # so the watchdog starts before vLLM's start-up handshake, which would wait forever for a dead gateway and
    # comes before vLLM loads the plugins (where `child_setup` would run otherwise).
    from vllm.v1.engine.core import EngineCoreProc

    global _vllm_run_engine_core
    _vllm_run_engine_core = EngineCoreProc.run_engine_core
    EngineCoreProc.run_engine_core = staticmethod(engine_core_entry)


_vllm_run_engine_core = None  # vLLM's own entry, where this process patched it (not in a spawned child)


def engine_core_entry(*args, **kwargs):
    """An EngineCore process spawned by the gateway: the watchdog first (a gateway killed while this process was
    still importing is noticed here: the process ends), then vLLM's own entry point."""
    child_setup()
    run = _vllm_run_engine_core
    if run is None:  # the spawned child: vLLM's class is unpatched here
        from vllm.v1.engine.core import EngineCoreProc

        run = EngineCoreProc.run_engine_core
    return run(*args, **kwargs)


def pids(version: str) -> list[int]:
    """The version's EngineCore processes that are still running."""
    return [pid for pid, started in _procs.get(version, []) if is_process(pid, started)]


def kill_version(version: str) -> list[int]:
    """SIGKILL every process tree this gateway started for `version` (a start past its deadline; what a stop left
    behind), and drop their records and pid files. Returns the EngineCore pids that were still running."""
    recorded = _procs.pop(version, [])
    alive = [pid for pid, started in recorded if is_process(pid, started)]
    for pid in alive:
        kill_tree(pid)
    if _piddir is not None:
        for pid, _ in recorded:
            with contextlib.suppress(OSError):
                (_piddir / f"{version}-{pid}.json").unlink()
    return alive


def forget_stopped(version: str) -> None:
    """After a stop: whatever of the version's processes vLLM's shutdown did not end is killed (and logged)."""
    left = kill_version(version)
    if left:
        log.warning("engine_processes_left_after_stop", version=version, pids=left)
