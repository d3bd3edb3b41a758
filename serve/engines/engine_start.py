"""Starting a version's engine: a deadline per attempt, retries with backoff, and a status the gateway reports.

An in-process engine start can hang (issue 21: a second engine's worker stalled before its CPU set-up until the
gateway got SIGTERM). A start is one attempt with a deadline (`engine_start_timeout_s`, build + warm-up); past
it the attempt is cancelled, the processes it spawned are killed (`serve.engines.engine_procs.kill_version`, which also
makes vLLM's own wait for the engine core return), the version is reported `failed` with the reason, and the start
is retried after `restart_backoff_s` (doubling up to `restart_backoff_max_s`), at most `engine_start_retries`
times. Each version's start is its own task, so a hung start never holds up another version or the admin API.
A start that fails by itself (bad path, bad config) is not retried: it would fail again, and burn the CPU the
healthy versions need; /ready reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from collections.abc import Awaitable
from typing import Literal

from serve.engines.engine import Engine
from serve.logs import get_logger

log = get_logger(__name__)

StartState = Literal["starting", "up", "failed"]


class EngineStartTimeout(Exception):
    """An engine start passed its deadline (its processes were killed)."""


@dataclass
class StartStatus:
    state: StartState = "starting"
    attempts: int = 0
    reason: str | None = None  # the last failure
    retry_at: float | None = None  # monotonic time of the next attempt, while one is planned

    def to_dict(self) -> dict:
        out: dict = {"start_attempts": self.attempts}
        if self.reason:
            out["start_error"] = self.reason
        if self.retry_at is not None:
            out["start_retry_in_s"] = round(max(0.0, self.retry_at - time.monotonic()), 1)
        return out


async def within_deadline(engine: Engine, build: Awaitable[None], deadline_s: float | None, kill, what: str) -> None:
    """Await `build` (a start or a restart of `engine`) for at most `deadline_s` (None: no deadline). Past it:
    the processes it spawned are killed (`kill(name) -> pids`), whatever it built is stopped, and
    EngineStartTimeout says so. The one deadline behind first starts and supervisor restarts."""
    try:
        await asyncio.wait_for(build, deadline_s)
    except asyncio.TimeoutError:
        killed = kill(engine.name)
        with contextlib.suppress(Exception):
            await engine.stop()  # whatever the cancelled build made (an engine still warming up)
        log.error(f"engine_{what}_timeout", version=engine.name, deadline_s=deadline_s, killed=killed)
        raise EngineStartTimeout(f"engine {what} passed its deadline of {deadline_s:g} s; its processes {killed} "
                                 f"were killed") from None


async def attempt(engine: Engine, status: StartStatus, deadline_s: float, kill) -> bool:
    """One start of `engine` within `deadline_s`. True when it is up or failed for good; False when it passed the
    deadline (the caller retries). `kill(name) -> pids` ends the processes the attempt spawned."""
    inner = engine.unwrap()  # the real engine under a test-only fault wrapper
    status.state, status.retry_at = "starting", None
    status.attempts += 1
    inner.start_error = None
    # only an engine this gateway runs (and can kill and restart) has a deadline: a remote version waits for its
    # upstream for as long as it takes (serve/engines/engine_remote.py), and has no processes here to end
    deadline = deadline_s if inner.restartable else None
    try:
        await within_deadline(engine, engine.start(), deadline, kill, "start")
    except EngineStartTimeout as err:
        inner.start_error, status.state = err, "failed"
        status.reason = f"{err} (attempt {status.attempts})"
        return False
    except Exception as e:  # keep the others serving; /ready reports this one
        inner.start_error, status.state, status.reason = e, "failed", repr(e)
        log.error("engine_start_failed", version=engine.name, error=repr(e))
        return True
    status.state, status.reason = "up", None
    return True


async def start_with_retries(engine: Engine, status: StartStatus, deadline_s: float, retries: int, backoff_s: float,
                             backoff_max_s: float, kill, first_done: bool = False) -> None:
    """Attempts until one is up or failed for good, or the retries are spent; `first_done`: the first attempt
    already ran (and passed its deadline)."""
    backoff = backoff_s
    if not first_done and await attempt(engine, status, deadline_s, kill):
        return
    for _ in range(retries):
        status.retry_at = time.monotonic() + backoff
        log.warning("engine_start_retry", version=engine.name, in_s=backoff, attempts=status.attempts)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, backoff_max_s)
        if await attempt(engine, status, deadline_s, kill):
            return
    status.retry_at = None
    log.error("engine_start_gave_up", version=engine.name, attempts=status.attempts, reason=status.reason)

