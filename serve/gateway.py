"""The gateway's state: one engine per configured version, the router, the metrics.

Engines start in the background in configuration order (stable first) so the HTTP server is up at once:
/health answers, and requests get a 503 with Retry-After until their version is ready.
"""

from __future__ import annotations

import asyncio
import gc

from serve.config import Settings, VersionSpec
from serve.drain import Drain
from serve.engine import Engine
from serve.engine_remote import RemoteEngine
from serve.logs import get_logger
from serve.metrics import Metrics
from serve.quality import Quality
from serve.router import Router
from serve.shadow import Shadow
from serve.stats import Stats
from serve.supervisor import Supervisor

log = get_logger(__name__)


def make_engine(spec: VersionSpec, settings: Settings) -> Engine:
    if spec.url:
        return RemoteEngine(spec, settings.remote_timeout_s, settings.remote_connect_timeout_s,
                            settings.remote_header_timeout_s)
    # vLLM (and torch under it) only where a version runs in process: importing it costs ~2.4 s and hundreds of
    # MB, which a replica in front of remote vLLM servers (the scale-out path) never needs
    from serve.engine_vllm import VLLMEngine

    return VLLMEngine(spec, settings.cache_dir)


class Gateway:
    def __init__(self, settings: Settings, versions: list[VersionSpec]):
        self.settings = settings
        self.specs = {v.name: v for v in versions}
        self.engines: dict[str, Engine] = {v.name: make_engine(v, settings) for v in versions}
        self.router = Router(settings.public_model, [v.name for v in versions],
                             {v.name: v.weight for v in versions})
        self.metrics = Metrics()
        self.quality = Quality(settings, self.metrics.registry, self.router.stable)
        self.shadow = Shadow(self.metrics.registry)
        self.stats = Stats()  # per-version outcome windows: the canary gate's inputs
        self.alarm_sources: list = [self.quality.monitor]  # serve.alarms.AlarmSource
        self.controller = None  # serve.canary.CanaryController, made in start()
        self.stats_sync = None  # serve.stats_sync.StatsSync with a Redis: every replica's outcomes in self.stats
        # restarts dead in-process engines, re-admits remote versions whose backends answer again
        self.supervisor = Supervisor(self, settings.supervise_interval_s, settings.restart_backoff_s,
                                     settings.restart_backoff_max_s)
        self.drain = Drain()  # SIGTERM: stop taking work, let in-flight requests finish (serve/drain.py)
        self._starter: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        from serve.canary import CanaryController
        from serve.store import make_store

        self._starter = asyncio.create_task(self._start_all())
        await self.quality.start()
        for name in self.engines:
            self.quality.watch_version(name)
        if self.settings.redis_url:
            from serve.stats_sync import StatsSync

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
        return w.reason or getattr(getattr(engine, "inner", engine), "down_reason", None) or "engine down"

    def add_version(self, spec: VersionSpec) -> None:
        """A version registered at runtime: routable at once (weight 0), its engine starts in the background."""
        engine = make_engine(spec, self.settings)
        self.specs[spec.name] = spec
        self.engines[spec.name] = engine
        self.quality.watch_version(spec.name)
        task = asyncio.create_task(self._start_one(engine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self, engine: Engine) -> None:
        try:
            await engine.start()
        except Exception as e:
            engine.start_error = e
            log.error("engine_start_failed", version=engine.name, error=repr(e))

    async def remove_version(self, name: str, drain_timeout_s: float = 30.0) -> None:
        """Drain and unload: stop routing to it, wait for its in-flight requests (bounded), stop its engine."""
        if name in self.router.order:
            self.router.remove_version(name)
        gauge = self.metrics.version(name).in_flight
        deadline = asyncio.get_running_loop().time() + drain_timeout_s
        while gauge._value.get() > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        engine = self.engines.pop(name, None)
        self.specs.pop(name, None)
        self.supervisor.forget(name)
        if engine is not None:
            try:
                await engine.stop()
            except Exception as e:
                log.warning("engine_stop_failed", version=name, error=repr(e))
        log.info("version_unloaded", version=name)

    async def _start_all(self) -> None:
        for engine in list(self.engines.values()):
            try:
                await engine.start()
            except Exception as e:  # keep the others serving; /ready reports this one
                engine.start_error = e
                log.error("engine_start_failed", version=engine.name, error=repr(e))
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
        await self.shadow.close()
        await self.quality.close()
        for engine in list(self.engines.values()):
            try:
                await engine.stop()
            except Exception as e:
                log.warning("engine_stop_failed", version=engine.name, error=repr(e))
