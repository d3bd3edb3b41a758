"""Shadow mode: mirror a share of the traffic answered by stable to another version, off the client's path.

The mirrored copy runs as a background task after the client's own request has been routed; its answer is scored
(reward stage) and recorded (monitor, gate stats) under the shadow version, and never returned. A bounded number
of copies run at once — beyond it the copy is dropped, not queued — so shadowing cannot build a backlog behind
the client's requests. Shares are per replica (set through `POST /admin/versions/{name}/shadow`).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import replace

from prometheus_client import Counter

from serve.rewards import reward as reward_stage
from serve.engines.engine import GenerationRequest
from serve.logs import get_logger

log = get_logger(__name__)


class Shadow:
    def __init__(self, registry, max_in_flight: int = 16):
        self.shares: dict[str, float] = {}
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self.mirrored = Counter("aligngate_shadow_requests", "Mirrored (shadow) requests by version and outcome",
                                ["version", "outcome"], registry=registry)

    def set_share(self, version: str, share: float) -> None:
        if share <= 0:
            self.shares.pop(version, None)
        else:
            self.shares[version] = min(1.0, share)

    def forget(self, version: str) -> None:
        """A removed version: no more copies to it, and its series leave /metrics."""
        self.shares.pop(version, None)
        self.mirrored.remove_by_labels({"version": version})

    def maybe_mirror(self, gw, answered_by: str, req: GenerationRequest, prompt_text: str) -> None:
        """Called on the request path once per request: O(number of shadow versions), no awaits."""
        if not self.shares or answered_by != gw.router.stable:
            return
        for version, share in self.shares.items():
            engine = gw.engines.get(version)
            if engine is None or not engine.ready or random.random() >= share:
                continue
            if self.in_flight >= self.max_in_flight:
                self.mirrored.labels(version, "dropped").inc()
                continue
            copy = replace(req, request_id=f"shadow-{uuid.uuid4().hex}", logprobs=None)
            task = asyncio.create_task(self._run(gw, engine, copy, prompt_text))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, gw, engine, req: GenerationRequest, prompt_text: str) -> None:
        self.in_flight += 1
        t0 = time.perf_counter()
        ttft = None
        tracker = reward_stage.RewardTracker(req.n, reward_stage.needs_finalize(
            engine, gw.settings.reward_position, False))
        try:
            step = None
            async for step in engine.generate(req):
                if ttft is None:
                    ttft = time.perf_counter() - t0
                for d in step.deltas:
                    tracker.add(d)
            rewards = await reward_stage.rewards(engine, tracker, step.prompt_token_ids if step else None,
                                                 gw.settings.reward_position, False, gw.quality.cache, prompt_text)
            gw.stats.record(engine.name, ttft, time.perf_counter() - t0, "200")
            for i, r in enumerate(rewards):
                gw.quality.observe(engine.name, f"{req.request_id}-{i}", prompt_text, tracker.response_text(i),
                                   r.score if r else None, tracker.mean_entropy(i), None)
                if r is not None:
                    gw.stats.record_reward(engine.name, r.score)
            self.mirrored.labels(engine.name, "answered").inc()
        except Exception as e:  # a failing shadow is recorded against the shadow version, never the client
            gw.stats.record(engine.name, ttft, None, "502")
            self.mirrored.labels(engine.name, "failed").inc()
            log.warning("shadow_failed", version=engine.name, error=repr(e))
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
