"""Faults, the control-plane store partitioned: the canary gate rolls back locally while Redis does not answer,
and the rollback reaches the store once it does."""

from __future__ import annotations

import pytest

from serve.config import VersionSpec
from tests.dead_url import dead_url as _dead_url
from tests.redis_fixture import redis_server, redis_url  # noqa: F401  (fixtures)


@pytest.mark.asyncio
async def test_canary_gate_rolls_back_locally_while_the_store_is_partitioned(redis_url, redis_server):  # noqa: F811
    """Redis frozen (SIGSTOP: every call times out, like a partition) during a rollout whose canary fails: this
    replica stops routing to the canary at once, and the rollback reaches the store when Redis answers again."""
    import signal as sig

    from serve.rollout.canary import CanaryController
    from serve.config import Settings
    from serve.gateway import Gateway
    from serve.rollout.store import RedisStore, StoreUnavailable

    versions = [VersionSpec(name="stable", url=_dead_url(), weight=1.0),
                VersionSpec(name="canary", url=_dead_url(), weight=0.0)]
    settings = Settings(versions=versions, redis_url=redis_url, redis_prefix="t-partition")
    gw = Gateway(settings, versions)  # not started: no engines, only the state the controller acts on
    store = RedisStore(redis_url, "t-partition")
    ctl = CanaryController(gw, store, settings.canary)
    await ctl._seed()
    await ctl.start_rollout("canary", "admin", "partition test", stages=[0.5, 1.0], min_requests=10**6)
    assert gw.router.weights["canary"] == pytest.approx(0.5)
    redis_server.proc.send_signal(sig.SIGSTOP)
    try:
        for _ in range(30):
            gw.stats.record("canary", 0.01, None, "502")
            gw.stats.record("stable", 0.01, 0.02, "200")
        with pytest.raises(StoreUnavailable):
            await ctl.tick()
        assert gw.router.weights["canary"] == 0.0  # rolled back on this replica despite the store
        assert {gw.router.route("aligngate", f"p-{i}").version for i in range(200)} == {"stable"}
        with pytest.raises(StoreUnavailable):
            await ctl.tick()  # still down: no new decision, still rolled back here
    finally:
        redis_server.proc.send_signal(sig.SIGCONT)
    await ctl.tick()  # the store answers: the pending rollback is committed, shared, audited
    st = await store.load()
    assert st["rollout"]["state"] == "rolled_back" and st["rollout"]["rolled_back_by"] == "controller"
    assert "error rate" in st["rollout"]["reason"] and st["weights"]["canary"] == 0.0
    assert [e["action"] for e in await store.audit()][-1] == "rollback"
    assert ctl._pending_rollback is None and gw.router.weights["canary"] == 0.0
    await store.close()
    await gw.quality.close()
