"""The gateway's state: one engine per configured version, the router, the metrics.

Engines start in the background in configuration order (stable first) so the HTTP server is up at once:
/health answers, and requests get a 503 with Retry-After until their version is ready.
"""

from __future__ import annotations

import asyncio
import gc

from serve.config import Settings, VersionSpec
from serve.engine import Engine
from serve.engine_remote import RemoteEngine
from serve.engine_vllm import VLLMEngine
from serve.logs import get_logger
from serve.metrics import Metrics
from serve.router import Router

log = get_logger(__name__)


def make_engine(spec: VersionSpec, settings: Settings) -> Engine:
    if spec.url:
        return RemoteEngine(spec, settings.remote_timeout_s, settings.remote_connect_timeout_s)
    return VLLMEngine(spec)


class Gateway:
    def __init__(self, settings: Settings, versions: list[VersionSpec]):
        self.settings = settings
        self.specs = {v.name: v for v in versions}
        self.engines: dict[str, Engine] = {v.name: make_engine(v, settings) for v in versions}
        self.router = Router(settings.public_model, [v.name for v in versions],
                             {v.name: v.weight for v in versions})
        self.metrics = Metrics()
        self._starter: asyncio.Task | None = None

    async def start(self) -> None:
        self._starter = asyncio.create_task(self._start_all())

    async def _start_all(self) -> None:
        for engine in self.engines.values():
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
        if self._starter and not self._starter.done():
            self._starter.cancel()
        for engine in self.engines.values():
            try:
                await engine.stop()
            except Exception as e:
                log.warning("engine_stop_failed", version=engine.name, error=repr(e))
