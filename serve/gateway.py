"""The gateway's state: one engine per configured version, the router, the metrics.

Engines start in the background in configuration order (stable first) so the HTTP server is up at once:
/health answers, and requests get a 503 with Retry-After until their version is ready.
"""

from __future__ import annotations

import asyncio
import gc

from serve.engines import engine_procs
from serve.admission.admission import Admission
from serve.rewards.best_of import AuditCrossCheck, BestOfMetrics
from serve.config import Settings, VersionSpec
from serve.engines.drain import Drain
from serve.engines.engine import Engine
from serve.engines.engine_start import StartStatus, start_with_retries
from serve.engines.engine_start import attempt as start_attempt
from serve.engines.engine_remote import RemoteEngine
from serve.rollout.lifecycle import Lifecycle
from serve.logs import get_logger
from serve.monitor.metrics import Metrics
from serve.monitor.quality import Quality
from serve.rewards.reward_floor import FloorHits
from serve.rollout.router import Router
from serve.rollout.shadow import Shadow
from serve.rollout.stats import Stats
from serve.engines.supervisor import Supervisor

log = get_logger(__name__)


def make_engine(spec: VersionSpec, settings: Settings) -> Engine:
    if spec.url:
        return RemoteEngine(spec, settings.remote_timeout_s, settings.remote_connect_timeout_s,
                            settings.remote_header_timeout_s)
    # vLLM (and torch under it) only where a version runs in process: importing it costs ~2.4 s and hundreds of
    # MB, which a replica in front of remote vLLM servers (the scale-out path) never needs
    from serve.engines.engine_vllm import VLLMEngine

    return VLLMEngine(spec, settings.cache_dir)


class Gateway:
    def __init__(self, settings: Settings, versions: list[VersionSpec]):
        self.settings = settings
        self.specs = {v.name: v for v in versions}
        self.engines: dict[str, Engine] = {v.name: make_engine(v, settings) for v in versions}
        self.router = Router(settings.public_model, [v.name for v in versions],
                             {v.name: v.weight for v in versions})
        self.metrics = Metrics()
        self.quality = Quality(settings, self.metrics.registry, lambda: self.router.stable)
        self.shadow = Shadow(self.metrics.registry)
        self.stats = Stats()  # per-version outcome windows: the canary gate's inputs
        self.alarm_sources: list = [self.quality.monitor]  # serve.monitor.alarms.AlarmSource
        # reward-guided serving (issue 20): k used per version, floor hits and the audit cross-check as gate alarms
        self.best_of_metrics = BestOfMetrics(self.metrics.registry)
        self.best_of_audit = AuditCrossCheck(self.best_of_metrics)
        self.floor_hits = FloorHits(self.metrics.registry)
        self.alarm_sources += [self.best_of_audit, self.floor_hits]
        self.controller = None  # serve.rollout.canary.CanaryController, made in start()
        self.stats_sync = None  # serve.rollout.stats_sync.StatsSync with a Redis: every replica's outcomes in self.stats
        # restarts dead in-process engines, re-admits remote versions whose backends answer again
        self.supervisor = Supervisor(self, settings.supervise_interval_s, settings.restart_backoff_s,
                                     settings.restart_backoff_max_s,
                                     deadline_s=lambda name: self._start_args(name)["deadline_s"],
                                     kill=engine_procs.kill_version)
        self.admission = Admission(settings.limits)  # per-version slots (serve/admission/admission.py)
        # add / promote / remove a version: the one place every part above hears of it (serve/rollout/lifecycle.py)
        self.lifecycle = Lifecycle(self.router, self.quality, self.stats, self.shadow, self.admission, self.metrics,
                                   self.supervisor)
        self.drain = Drain()  # SIGTERM: stop taking work, let in-flight requests finish (serve/engines/drain.py)
        self.starts: dict[str, StartStatus] = {n: StartStatus() for n in self.engines}  # serve/engines/engine_start.py
        self._starter: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        from serve.rollout.canary import CanaryController
        from serve.rollout.store import make_store

        # marks this process as the gateway its engines' processes watch, and ends the engine cores an earlier
        # gateway on this cache dir left behind when it was killed (serve/engines/engine_procs.py); cheap, and done even
        # with remote versions only: an in-process one may be registered later
        engine_procs.prepare(self.settings.cache_dir)
        self._starter = asyncio.create_task(self._start_all())
        await self.quality.start()
        for name in self.engines:
            self.lifecycle.add(name)
        if self.settings.redis_url:
            from serve.rollout.stats_sync import StatsSync

            self.stats_sync = StatsSync(self.stats, self.settings.redis_url, self.settings.redis_prefix,
                                        self.settings.canary.tick_s, self.settings.canary.window_s)
            await self.stats_sync.start()
        store = make_store(self.settings.redis_url, self.settings.redis_prefix)
        self.controller = CanaryController(self, store, self.settings.canary)
        await self.controller.start()
        self.supervisor.start()

    def engine_down(self, name: str) -> str | None:
        """Why a version that was serving is out of service now (its engine died, its backends are unreachable);
        None while it serves, and while it is still starting for the first time."""
        w = self.supervisor.watches.get(name)
        if w is None or w.state == "starting":
            return None
        engine = self.engines.get(name)
        if engine is not None and engine.ready:  # up (or restarted and warming up: already serving)
            return None
        # between the death and the supervisor's next tick only the engine itself knows why
        return w.reason or (engine.down_reason if engine is not None else None) or "engine down"

    def version_state(self, name: str) -> str:
        """One state per version, the same wherever it is shown (/ready?verbose=true, /admin/versions):
        `up` exactly when the engine serves; `down`/`recovering` (supervisor) after it served; `failed` when its
        start failed (and is perhaps being retried: see `start_retry_in_s`); else `starting`."""
        engine = self.engines.get(name)
        w = self.supervisor.watches.get(name)
        if w is not None and w.state in ("down", "recovering") and not (engine is not None and engine.ready):
            return w.state
        if engine is not None and engine.ready:
            return "up"
        st = self.starts.get(name)
        return "failed" if st is not None and st.state == "failed" else "starting"

    def add_version(self, spec: VersionSpec) -> None:
        """A version registered at runtime: routable at once (weight 0), its engine starts in the background."""
        engine = make_engine(spec, self.settings)
        self.specs[spec.name] = spec
        self.engines[spec.name] = engine
        self.starts[spec.name] = StartStatus()
        self.lifecycle.add(spec.name)
        self._spawn(self._start_one(engine))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_args(self, name: str) -> dict:
        spec = self.specs.get(name)
        deadline = (spec.start_timeout_s if spec is not None else None) or self.settings.engine_start_timeout_s
        return {"deadline_s": deadline, "kill": engine_procs.kill_version}

    async def _start_one(self, engine: Engine, first_done: bool = False) -> None:
        s, status = self.settings, self.starts.setdefault(engine.name, StartStatus())
        await start_with_retries(engine, status, retries=s.engine_start_retries, backoff_s=s.restart_backoff_s,
                                 backoff_max_s=s.restart_backoff_max_s, first_done=first_done,
                                 **self._start_args(engine.name))

    async def remove_version(self, name: str, drain_timeout_s: float = 30.0) -> None:
        """Drain and unload: stop routing to it, wait for its in-flight requests (bounded), stop its engine, and
        every part forgets it (serve/rollout/lifecycle.py)."""
        self.lifecycle.retire(name)
        gauge = self.metrics.version(name).in_flight
        deadline = asyncio.get_running_loop().time() + drain_timeout_s
        try:
            while gauge._value.get() > 0 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
        finally:  # an interrupted drain (the gateway stopping) still stops the engine: nothing is left running
            engine = self.engines.pop(name, None)
            self.specs.pop(name, None)
            self.starts.pop(name, None)
            self.lifecycle.remove(name)
            if engine is not None:
                try:
                    await engine.stop()
                except Exception as e:
                    log.warning("engine_stop_failed", version=name, error=repr(e))
        log.info("version_unloaded", version=name)

    async def _start_all(self) -> None:
        # one after the other (two engine start-ups side by side on a small CPU slow each other down); a start that
        # passes its deadline is retried in the background, so the next version starts meanwhile
        for engine in list(self.engines.values()):
            if not await start_attempt(engine, self.starts[engine.name], **self._start_args(engine.name)):
                self._spawn(self._start_one(engine, first_done=True))
        # As vLLM's server does after start-up: move the (large, static) start-up heap out of the collector's
        # sight so old-generation collections during serving are short.
        gc.collect()
        gc.freeze()

    async def wait_ready(self, timeout_s: float) -> None:
        """Block until every engine is ready (tests and the CLI's --wait use this)."""
        async def all_ready():
            while not all(e.ready or e.start_error for e in self.engines.values()):
                await asyncio.sleep(0.2)
        await asyncio.wait_for(all_ready(), timeout_s)

    async def stop(self) -> None:
        await self.supervisor.stop()  # first: no engine restart may begin while the engines are being stopped
        if self.controller is not None:
            await self.controller.stop()
        if self.stats_sync is not None:
            await self.stats_sync.stop()
        if self._starter and not self._starter.done():
            self._starter.cancel()
        for t in list(self._tasks):  # start retries, drains
            t.cancel()
        await self.shadow.close()
        await self.quality.close()
        for engine in list(self.engines.values()):
            try:
                await engine.stop()
            except Exception as e:
                log.warning("engine_stop_failed", version=engine.name, error=repr(e))
