"""One owner of a version's life on this replica: added, made stable, retired, removed.

Every part that keeps something per version hears of these changes here, and only here: the router (routes,
weights, which version is stable), the reward monitor (which version another is judged against), the canary gate's
outcome windows (`serve.rollout.stats`), the per-version admission slots, the shadow shares, the Prometheus series and the
engine supervisor. The stable version is held once, by the router (`router.stable`); the others read it from there.

The engines themselves — build, start, drain, stop — are the gateway's (`serve.gateway.Gateway.add_version`,
`remove_version`), which calls in here; the canary controller (`serve.rollout.canary.CanaryController.apply`) makes this
replica match the stored state through the same calls, so a promotion here and a stable adopted from Redis (another
replica promoted) are the same event.
"""

from __future__ import annotations

from serve.admission.admission import Admission
from serve.logs import get_logger
from serve.monitor.metrics import Metrics
from serve.monitor.quality import Quality
from serve.rollout.router import Router
from serve.rollout.shadow import Shadow
from serve.rollout.stats import Stats
from serve.engines.supervisor import Supervisor

log = get_logger(__name__)


class Lifecycle:
    def __init__(self, router: Router, quality: Quality, stats: Stats, shadow: Shadow, admission: Admission,
                 metrics: Metrics, supervisor: Supervisor | None = None):
        self.router, self.quality, self.stats, self.shadow = router, quality, stats, shadow
        self.admission, self.metrics, self.supervisor = admission, metrics, supervisor

    def add(self, name: str) -> None:
        """A version this replica serves: routable by name at once (weight 0: no share of the public model until
        a rollout or an operator gives it one), its rewards judged against the stable version's. Idempotent."""
        self.router.add_version(name)
        self.quality.watch_version(name)

    def promote(self, name: str) -> None:
        """`name` becomes the stable version (a finished promotion, or the stable another replica stored): it takes
        the remainder of the traffic, and every other version is judged against it from now on."""
        if self.router.stable == name:
            return
        former = self.router.stable
        self.router.set_stable(name)
        self.quality.follow_stable(self.router.order)
        log.info("stable_changed", stable=name, former=former)

    def retire(self, name: str) -> None:
        """Stop routing to `name` (by weight and by name); its share goes to stable. It still exists while its
        in-flight requests finish: `remove` comes after the drain."""
        if name in self.router.order:
            self.router.remove_version(name)

    def remove(self, name: str) -> None:
        """`name` is gone (drained, its engine stopped): every part forgets it — its monitor windows and alarms,
        gate windows, admission slots, shadow share, Prometheus series and supervision."""
        self.retire(name)
        self.quality.forget(name)
        self.stats.forget(name)
        self.admission.forget(name)
        self.shadow.forget(name)
        self.metrics.forget(name)
        if self.supervisor is not None:
            self.supervisor.forget(name)
