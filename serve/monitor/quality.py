"""The last stage of the request path: what happens to an answer once it has its reward.

Bundles the parts that watch answers — the reward monitor (alarms, the canary gate's alarm source), the review
queue for flagged answers, the reward cache, the response log behind /v1/feedback, and the optional audit reward
model — and gives the request path one synchronous, O(1) call per answer (`observe`). Everything slow (Redis,
files, the audit model) runs in background tasks owned by those parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from serve.rewards.cache import CacheConfig, RewardCache
from serve.config import Settings
from serve.rewards.feedback import FeedbackStore, ResponseLog
from serve.logs import get_logger
from serve.monitor.monitor import RewardMonitor
from serve.monitor.monitor_config import MonitorConfig
from serve.rewards.review import ReviewQueue

log = get_logger(__name__)


class Quality:
    def __init__(self, settings: Settings, registry, stable: Callable[[], str]):
        """`stable()`: the stable version now (the router holds it: serve/rollout/lifecycle.py)."""
        redis_url = settings.redis_url
        self._stable = stable
        self.review = ReviewQueue(path=settings.review_path or settings.cache_dir / "review.jsonl", redis_url=redis_url,
                                  key=f"{settings.redis_prefix}:review")
        self.monitor = RewardMonitor(MonitorConfig(hard_constraint_phrases=tuple(settings.hard_constraint_phrases)),
                                     registry=registry, review=self.review)
        self.cache = RewardCache(redis_url, CacheConfig(key_prefix=f"{settings.redis_prefix}:reward:"), registry)
        self.responses = ResponseLog(redis_url=redis_url)
        self.feedback = FeedbackStore(settings.feedback_dir or settings.cache_dir / "feedback", self.responses)
        self.audit = None
        self._audit_dir: Path | None = settings.audit_model_dir
        self._audit_fraction = settings.audit_fraction
        self._registry = registry
        self.log_content = settings.log_content

    async def start(self) -> None:
        await self.review.start()
        if self._audit_dir is not None:
            from serve.rewards.audit import AuditConfig, AuditScorer

            try:
                self.audit = AuditScorer(AuditConfig(self._audit_dir, fraction=self._audit_fraction), self._registry)
                self.audit.add_listener(self._on_audit)
                log.info("audit_model", dir=str(self._audit_dir), backend=self.audit.backend_name,
                         fraction=self._audit_fraction)
            except Exception as e:  # the gateway serves without an audit model rather than not at all
                log.error("audit_model_failed", dir=str(self._audit_dir), error=repr(e))

    @property
    def stable(self) -> str:
        return self._stable()

    def watch_version(self, version: str) -> None:
        """Compare a non-stable version's rewards against stable's (z-score baseline)."""
        if version != self.stable:
            self.monitor.use_baseline_of(version, self.stable)

    def follow_stable(self, versions) -> None:
        """The stable version changed (a finished promotion, or a replica adopting the stored state): every other
        version is judged against it from now on, and the new stable against its own baseline."""
        stable = self.stable
        for v in versions:
            self.monitor.use_baseline_of(v, None if v == stable else stable)

    def forget(self, version: str) -> None:
        """A removed version: its monitor windows and alarms go (the answers it gave stay in the logs)."""
        self.monitor.forget(version)

    def _on_audit(self, item, result) -> None:
        value = (item.meta or {}).get("value")
        if value is not None and item.version:
            self.monitor.observe_audit(item.version, value, result.reward)

    def observe(self, version: str, response_id: str, prompt: str, response: str, reward: float | None,
                entropy: float | None, n_tokens: int | None, wait_audit: bool = False):
        """One answer (one choice): monitor, response log, audit sampling. Synchronous, no I/O, never raises.
        Returns the audit future when the answer was audited and `wait_audit` asked for it, else None."""
        try:
            if self.log_content:  # opt-in only (Settings.log_content): prompt and answer text in the log
                log.info("answer", version=version, response_id=response_id, prompt=prompt, response=response)
            self.monitor.observe(version, prompt, response, reward, entropy=entropy, request_id=response_id,
                                 n_tokens=n_tokens)
            self.responses.put(response_id, version, prompt, response, reward=reward)
            if self.audit is not None:
                fut = self.audit.maybe_submit(prompt, response, version, response_id, meta={"value": reward},
                                              force=wait_audit)
                return fut if wait_audit else None
        except Exception as e:  # watching answers must never fail a request
            log.warning("observe_failed", version=version, error=repr(e))
        return None

    async def close(self) -> None:
        for part in (self.audit, self.cache, self.responses, self.review):
            if part is None:
                continue
            try:
                await part.close()
            except Exception as e:
                log.warning("close_failed", part=type(part).__name__, error=repr(e))
