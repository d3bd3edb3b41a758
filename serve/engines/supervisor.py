"""Engine supervisor: notices a version whose engine died (or whose remote backends all became unreachable), takes
it out of service, and brings it back by itself.

Out of service means `engine.ready` is False, which the rest of the gateway already understands: routed requests
go to the stable version (`completions._route`), a request naming the version gets 503 + Retry-After, `/ready` is
false for it. The supervisor only adds detection and recovery:

- Detection. Every `supervise_interval_s` it asks each supervised engine `alive()` — a cheap check that never
  generates (in-process: vLLM's own dead-engine flag, set by its monitor thread the moment the EngineCore process
  exits; remote: `GET /v1/models` on each backend). The in-process engine also reports itself not ready the instant
  vLLM flags the core dead, so routing does not wait for the next tick.
- Recovery, with exponential backoff (`restart_backoff_s` doubling up to `restart_backoff_max_s`, back to the
  start once an engine has stayed up for `restart_backoff_reset_s`): an in-process engine is restarted (old
  `AsyncLLM` shut down, a new one built: ~20 s on a small CPU); a remote version is probed until a backend answers
  again (the gateway cannot restart someone else's server). Each in-process restart attempt counts in
  `aligngate_engine_restarts_total{version}` (attempts, so a crash loop shows as a climbing counter);
  `aligngate_engine_up{version}` is 1 while the version is in service.
- Only engines that were up once are supervised: one that is still starting, or failed to start at all (bad path,
  bad config), is left to the start-up code and reported by /ready — restarting a misconfigured engine in a loop
  would only burn the CPU the healthy versions need.

- A restart has the version's start deadline (`engine_start_timeout_s`, or the version's `start_timeout_s`): past
  it the processes it spawned are killed and it is a failed attempt like any other (reason: the deadline), retried
  after the backoff.

Events are structured logs: `engine_down`, `engine_restarting`, `engine_restart_timeout` (serve/engines/engine_start.py), `engine_restart_failed`,
`engine_recovered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from serve.engines.engine import Engine
from serve.engines.engine_start import within_deadline
from serve.logs import get_logger

log = get_logger(__name__)

State = Literal["starting", "up", "down", "recovering"]


@dataclass
class Watch:
    """One version as the supervisor sees it."""

    state: State = "starting"
    since: float = 0.0  # monotonic time of the last state change
    backoff: float = 0.0  # wait before the next recovery attempt
    next_try: float = 0.0
    attempts: int = 0  # recovery attempts since the version went down
    restarts: int = 0  # in-process restart attempts, ever
    reason: str | None = None  # why it went down (last error)
    task: asyncio.Task | None = None

    def to_dict(self) -> dict:
        return {"state": self.state, "restarts": self.restarts, "reason": self.reason}


class Supervisor:
    def __init__(self, gw, interval_s: float = 1.0, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 backoff_reset_s: float = 120.0, clock=time.monotonic,
                 deadline_s: Callable[[str], float | None] = lambda name: None,
                 kill: Callable[[str], list[int]] = lambda name: []):
        """`deadline_s(version)`: how long one restart of an in-process engine may take (the version's start
        deadline, serve/engines/engine_start.py); `kill(version) -> pids`: ends the processes a restart spawned."""
        self.gw = gw
        self.deadline_s, self.kill = deadline_s, kill
        self.interval_s, self.backoff_s, self.backoff_max_s = interval_s, backoff_s, backoff_max_s
        self.backoff_reset_s = backoff_reset_s
        self.clock = clock
        self.watches: dict[str, Watch] = {}
        self._task: asyncio.Task | None = None
        reg = gw.metrics.registry
        from prometheus_client import Counter, Gauge

        self.restarts_total = Counter("aligngate_engine_restarts", "In-process engine restart attempts, by version",
                                      ["version"], registry=reg)
        self.up = Gauge("aligngate_engine_up", "1 while the version's engine is in service", ["version"], registry=reg)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="engine-supervisor")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *(w.task for w in self.watches.values())] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):  # cancelled, or already failed and logged
                await t

    def forget(self, name: str) -> None:
        """A version was unloaded: stop watching it (and any recovery in progress); its series leave /metrics."""
        w = self.watches.pop(name, None)
        if w and w.task:
            w.task.cancel()
        self.up.remove_by_labels({"version": name})
        self.restarts_total.remove_by_labels({"version": name})

    def status(self, name: str) -> dict | None:
        w = self.watches.get(name)
        return w.to_dict() if w else None

    # --- the loop ----------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the supervisor must outlive any single odd engine
                log.error("supervisor_tick_failed", error=repr(e), exc_info=e)

    async def tick(self) -> None:
        # the real engine under a test-only fault wrapper (serve.engines.faults.FaultyEngine)
        engines = [(n, e.unwrap()) for n, e in list(self.gw.engines.items())]
        for name in [n for n in self.watches if n not in self.gw.engines]:
            self.forget(name)
        await asyncio.gather(*(self._check(n, e) for n, e in engines))

    async def _check(self, name: str, engine: Engine) -> None:
        now = self.clock()
        w = self.watches.get(name)
        if w is None:
            w = self.watches[name] = Watch(since=now, backoff=self.backoff_s)
        if w.state == "starting":
            if engine.ready:
                self._set(name, w, "up")
            return
        if w.state == "recovering":
            return
        if w.state == "up":
            try:
                ok = engine.ready and await engine.alive()
                reason = None if ok else engine.down_reason or "not ready"
            except Exception as e:  # noqa: BLE001 — a liveness check that raises is a failed check
                ok, reason = False, f"{type(e).__name__}: {e}"
            if ok:
                if now - w.since > self.backoff_reset_s:
                    w.backoff = self.backoff_s  # stayed up long enough: the next failure starts afresh
                return
            engine.ready = False
            w.reason, w.attempts, w.next_try = reason, 0, now  # the first recovery attempt goes at once
            self._set(name, w, "down")
            log.error("engine_down", version=name, kind=type(engine).__name__, reason=reason)
        if w.state == "down" and now >= w.next_try:
            self._set(name, w, "recovering")
            w.task = asyncio.create_task(self._recover(name, engine, w), name=f"recover-{name}")

    async def _recover(self, name: str, engine: Engine, w: Watch) -> None:
        w.attempts += 1
        try:
            if engine.restartable:
                w.restarts += 1
                self.restarts_total.labels(name).inc()
                log.warning("engine_restarting", version=name, attempt=w.attempts, reason=w.reason)
                t0 = self.clock()
                # the same deadline as a first start; each recovery is its own task, so a hung restart
                # holds up no other version or the admin API
                await within_deadline(engine, engine.restart(), self.deadline_s(name), self.kill, "restart")
                ok = engine.ready
                if ok:
                    log.warning("engine_recovered", version=name, how="restart", attempts=w.attempts,
                                restart_s=round(self.clock() - t0, 2))
            else:  # remote: nothing to restart here, wait for a backend to answer again
                ok = await engine.alive()
                if ok:
                    engine.ready = True
                    log.warning("engine_recovered", version=name, how="probe", attempts=w.attempts)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 — a failed restart is retried after the backoff
            ok = False
            w.reason = f"{type(e).__name__}: {e}"
        if ok:
            self._set(name, w, "up")
            return
        w.next_try = self.clock() + w.backoff
        log.error("engine_restart_failed" if engine.restartable else "engine_still_down",
                  version=name, attempt=w.attempts, retry_in_s=w.backoff, reason=w.reason)
        # a remote probe is one cheap GET: keep trying at least every 5 s so a returning backend is seen soon
        cap = self.backoff_max_s if engine.restartable else min(self.backoff_max_s, 5.0)
        w.backoff = min(w.backoff * 2, cap)
        self._set(name, w, "down")

    def _set(self, name: str, w: Watch, state: State) -> None:
        w.state, w.since = state, self.clock()
        self.up.labels(name).set(1 if state == "up" else 0)
