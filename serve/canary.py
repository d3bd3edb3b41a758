"""Canary rollouts: a plan of stages, a gate per stage, and the controller loop that advances or rolls back.

Plan. Stages are canary traffic shares (default 1% → 10% → 50% → 100%), each with a minimum number of canary
requests and a minimum duration. The plan is stored with the rollout, so every replica uses the same one.

Gate. Canary and stable are compared over the same window — from the stage's start (at most `window_s` back) —
on this replica's outcomes (`serve.stats`):
- latency: canary p99 TTFT and p99 end-to-end ≤ `latency_ratio` (1.2) × stable's, plus `latency_slack_s`
  (a small absolute floor against timer and scheduler noise on a loaded host; 0 makes it the bare ratio);
- errors: canary error rate ≤ stable error rate + `error_margin` (1 point);
- reward (when both sides have ≥ `reward_min_samples` rewards): one-sided Welch t-test of
  H0: mean_canary ≥ mean_stable − margin against H1: mean_canary < mean_stable − margin, at α = 0.05, with a
  practical margin of 0.02 on the reward scale; the canary fails when p < α;
- alarms: no active alarm on the canary from any registered `AlarmSource` (the reward monitor plugs in here).

When a stage has its minimum requests and duration, the gate is judged on point estimates: all pass → advance
(the last stage passing → promoted: the canary becomes the stable version), any fails → rollback. Before that,
a breach that is already clear rolls back at once, so a bad canary is cut within seconds: an alarm; a canary
error rate whose 99% Wilson lower bound exceeds the limit; a canary *median* latency above the stable's p99
limit (once `breach_min_requests` canary requests are in); a reward drop with p < `reward_alpha_early`.
Paused rollouts do not advance but still roll back on a breach. Rollback = canary weight 0, reason recorded.

Replicas. State lives in the store (`serve.store`); each replica polls its revision every tick and applies
changes (weights, stable, versions to load/unload). Each replica judges the gate on its own traffic (a load
balancer gives each a representative share); any replica can roll back, and an advance is a compare-and-set on
the stage, so it happens once.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from serve.alarms import Alarm, AlarmSource, InjectedAlarms, ThresholdAlarms  # noqa: F401  (re-exported)
from serve.config import CanarySettings, VersionSpec
from serve.logs import get_logger
from serve.stats import Summary
from serve.store import StoreUnavailable, audit_entry

log = get_logger(__name__)

SYSTEM = "controller"  # the `who` of automatic actions in the audit log


# --- plan and gate -----------------------------------------------------------------------------------------
def make_plan(cfg: CanarySettings, stages: list[float] | None = None, min_requests: int | None = None,
              min_duration_s: float | None = None) -> list[dict]:
    weights = stages or cfg.stages
    if not weights or any(not 0 < w <= 1 for w in weights) or list(weights) != sorted(weights):
        raise ValueError(f"stages must be increasing shares in (0, 1], got {weights}")
    return [{"weight": float(w),
             "min_requests": cfg.min_requests if min_requests is None else int(min_requests),
             "min_duration_s": cfg.min_duration_s if min_duration_s is None else float(min_duration_s)}
            for w in weights]


def gate_params(cfg: CanarySettings) -> dict:
    return {k: getattr(cfg, k) for k in ("latency_ratio", "latency_slack_s", "error_margin", "gate_alpha", "reward_alpha",
                                         "reward_alpha_early", "reward_margin", "reward_min_samples",
                                         "breach_min_requests", "window_s")}


def wilson_lower(k: int, n: int, z: float = 2.576) -> float:
    if n == 0:
        return 0.0
    p = k / n
    den = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / den)


def welch_one_sided(canary: list[float], stable: list[float], margin: float) -> tuple[float, float, float]:
    """H0: mean(canary) >= mean(stable) - margin; H1: it is lower. Returns (t, df, p) (p small = canary worse)."""
    nc, ns = len(canary), len(stable)
    mc, ms = sum(canary) / nc, sum(stable) / ns
    vc = sum((x - mc) ** 2 for x in canary) / (nc - 1)
    vs = sum((x - ms) ** 2 for x in stable) / (ns - 1)
    se2 = vc / nc + vs / ns
    diff = mc - ms + margin
    if se2 <= 0:
        return (math.inf if diff >= 0 else -math.inf), float(nc + ns - 2), (1.0 if diff >= 0 else 0.0)
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / ((vc / nc) ** 2 / max(nc - 1, 1) + (vs / ns) ** 2 / max(ns - 1, 1) or 1e-300)
    try:
        from scipy.stats import t as student_t

        p = float(student_t.cdf(t, df))
    except ImportError:  # normal approximation
        p = 0.5 * math.erfc(-t / math.sqrt(2))
    return t, df, p


@dataclass
class Decision:
    action: str  # hold | advance | rollback
    reasons: list[str]
    checks: dict
    stage_done: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of seeing k or more."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    try:
        from scipy.stats import binom

        return float(binom.sf(k - 1, n, p))
    except ImportError:
        return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def evaluate(canary: Summary, stable: Summary, baseline: dict | None, c_rewards: list[float],
             s_rewards: list[float], alarms: list[Alarm], stage: dict, gates: dict, elapsed_s: float,
             c_latencies: dict[str, list[float]] | None = None) -> Decision:
    """The gate for one stage (pure: every input is given). `baseline` is the stable summary saved at the end
    of the previous stage, used when the stable gets too little traffic in this window (the 100% stage)."""
    checks: dict = {}
    breaches: list[str] = []
    stage_done = canary.requests >= stage["min_requests"] and elapsed_s >= stage["min_duration_s"]
    enough = canary.requests >= gates["breach_min_requests"]
    ref = stable.to_dict()
    if stable.ok < gates["breach_min_requests"] and baseline:
        ref = baseline
        checks["stable_reference"] = "baseline from the previous stage"

    if alarms:
        breaches.append("alarm: " + "; ".join(f"{a.source}/{a.name}: {a.message}".rstrip(": ") for a in alarms))
    checks["alarms"] = [a.to_dict() for a in alarms]

    # errors
    if canary.requests:
        limit = ref.get("error_rate", 0.0) + gates["error_margin"]
        point_ok = canary.error_rate <= limit
        lower = wilson_lower(canary.errors, canary.requests)
        checks["error_rate"] = {"canary": canary.error_rate, "stable": ref.get("error_rate", 0.0), "limit": limit,
                                "canary_wilson99_lower": lower, "ok": point_ok}
        p_err = binom_sf(canary.errors, canary.requests, min(limit, 1.0))
        checks["error_rate"].update({"p": p_err, "ok": p_err >= gates["gate_alpha"],
                                     "test": f"one-sided binomial, H0: rate <= limit, alpha={gates['gate_alpha']}"})
        if enough and lower > limit:
            breaches.append(f"error rate {canary.error_rate:.1%} over {canary.requests} requests > limit "
                            f"{limit:.1%} (stable {ref.get('error_rate', 0.0):.1%} + {gates['error_margin']:.0%})")
        elif stage_done and p_err < gates["gate_alpha"]:
            breaches.append(f"error rate {canary.error_rate:.1%} significantly > limit {limit:.1%} (p={p_err:.3g})")

    # latency
    for metric in ("ttft", "e2e"):
        s99 = ref.get(f"p99_{metric}_s")
        c99, c50 = getattr(canary, f"p99_{metric}_s"), getattr(canary, f"p50_{metric}_s")
        if s99 is None or c99 is None:
            continue
        limit = gates["latency_ratio"] * s99 + gates["latency_slack_s"]
        # "canary p99 <= limit" means at most 1% of canary requests above the limit: a one-sided binomial test
        # of the exceedances (exact for small samples, the point p99 comparison for large ones).
        xs = (c_latencies or {}).get(metric)
        over = sum(x > limit for x in xs) if xs is not None else (canary.ok if c99 > limit else 0)
        n = len(xs) if xs is not None else canary.ok
        p_lat = binom_sf(over, n, 0.01)
        checks[f"p99_{metric}"] = {"canary": c99, "stable": s99, "limit": limit, "canary_p50": c50,
                                   "canary_over_limit": over, "n": n, "p": p_lat, "ok": p_lat >= gates["gate_alpha"]}
        if canary.ok >= gates["breach_min_requests"] and c50 > limit:
            breaches.append(f"{metric} median {c50 * 1000:.0f} ms > stable p99 limit {limit * 1000:.0f} ms "
                            f"({gates['latency_ratio']}x {s99 * 1000:.0f} ms + {gates['latency_slack_s'] * 1000:.0f} ms)")
        elif stage_done and p_lat < gates["gate_alpha"]:
            breaches.append(f"p99 {metric} {c99 * 1000:.0f} ms > limit {limit * 1000:.0f} ms "
                            f"({gates['latency_ratio']}x stable {s99 * 1000:.0f} ms): {over}/{n} requests over, "
                            f"p={p_lat:.3g}")

    # reward
    m = gates["reward_min_samples"]
    if len(c_rewards) >= m and len(s_rewards) >= m:
        t, df, p = welch_one_sided(c_rewards, s_rewards, gates["reward_margin"])
        ok = p >= gates["reward_alpha"]
        checks["reward"] = {"canary_mean": sum(c_rewards) / len(c_rewards), "stable_mean": sum(s_rewards) / len(s_rewards),
                            "n_canary": len(c_rewards), "n_stable": len(s_rewards), "t": t, "df": df, "p": p,
                            "test": f"one-sided Welch t, alpha={gates['reward_alpha']}, margin={gates['reward_margin']}",
                            "ok": ok}
        if p < gates["reward_alpha_early"]:
            breaches.append(f"mean reward significantly below stable (Welch t={t:.2f}, p={p:.2g})")
        elif stage_done and not ok:
            breaches.append(f"mean reward below stable - {gates['reward_margin']} (Welch t={t:.2f}, p={p:.3f} "
                            f"< {gates['reward_alpha']})")
    else:
        checks["reward"] = {"n_canary": len(c_rewards), "n_stable": len(s_rewards), "ok": True,
                            "note": f"fewer than {m} rewards on a side: not tested"}

    checks["progress"] = {"canary_requests": canary.requests, "min_requests": stage["min_requests"],
                          "elapsed_s": round(elapsed_s, 2), "min_duration_s": stage["min_duration_s"]}
    if breaches:
        return Decision("rollback", breaches, checks, stage_done)
    if stage_done:
        return Decision("advance", ["all gates passed"], checks, True)
    return Decision("hold", [], checks, False)


# --- the controller ----------------------------------------------------------------------------------------
class ControlError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def read_gate_verdict(model_dir: str) -> dict:
    """The training module's gate verdict from `manifest.json` ({"verdict": PASS|FAIL|UNGATED, "reasons"})."""
    import json

    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        return {"verdict": "NONE", "reasons": ["no manifest.json in the directory"]}
    try:
        gate = json.loads(path.read_text()).get("gate") or {}
    except (OSError, ValueError) as e:
        return {"verdict": "FAIL", "reasons": [f"unreadable manifest.json: {e}"]}
    return {"verdict": str(gate.get("verdict", "NONE")).upper(), "reasons": list(gate.get("reasons") or [])}


class CanaryController:
    def __init__(self, gw, store, cfg: CanarySettings):
        self.gw, self.store, self.cfg = gw, store, cfg
        self.state: dict = {"rev": -1}
        self.last_decision: dict | None = None
        self.store_error: str | None = None
        self._task: asyncio.Task | None = None
        self._drains: dict[str, asyncio.Task] = {}

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._seed()
        except StoreUnavailable as e:  # serve with the configured versions; the loop keeps retrying
            self.store_error = str(e)
            log.error("store_unavailable_at_start", error=str(e))
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
        await self.store.close()

    async def _seed(self) -> None:
        """First replica: the configured versions and weights. Later ones (Redis): adopt the stored state,
        adding any configured version the store does not know (weight 0)."""
        gw = self.gw
        specs = list(gw.specs.values())

        def seed(st: dict) -> dict | None:
            changed = False
            if not st["versions"]:
                for i, sp in enumerate(specs):
                    st["versions"][sp.name] = self._version_entry(sp, "config", SYSTEM)
                    st["weights"][sp.name] = sp.weight
                st["stable"] = specs[0].name
                return st
            for sp in specs:
                if sp.name not in st["versions"]:
                    st["versions"][sp.name] = self._version_entry(sp, "config", SYSTEM)
                    st["weights"][sp.name] = 0.0
                    changed = True
            return st if changed else None

        st = await self.store.update(seed)
        await self.apply(st)

    @staticmethod
    def _version_entry(spec: VersionSpec, origin: str, who: str, gate: dict | None = None, forced: bool = False) -> dict:
        return {"spec": spec.model_dump(), "status": "active", "origin": origin, "registered_by": who,
                "registered_at": time.time(), "gate": gate, "forced": forced}

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.tick_s)
            try:
                await self.tick()
                self.store_error = None
            except StoreUnavailable as e:
                if self.store_error is None:
                    log.warning("store_unavailable", error=str(e))
                self.store_error = str(e)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the loop must survive anything
                log.error("controller_tick_failed", error=repr(e), exc_info=e)

    async def tick(self) -> None:
        if not self.state.get("versions"):  # the store was down at start (or was wiped): seed it now
            await self._seed()
        if await self.store.rev() != self.state.get("rev"):
            await self.apply(await self.store.load())
        ro = self.state.get("rollout")
        if not ro or ro["state"] not in ("running", "paused"):
            return
        d = self.judge(ro)
        self.last_decision = {**d.to_dict(), "at": time.time(), "stage": ro["stage"]}
        if d.action == "rollback":
            await self._auto_rollback(ro, d)
        elif d.action == "advance" and ro["state"] == "running" and self.cfg.auto_advance:
            await self._advance(ro, SYSTEM, "all gates passed", d)

    # --- state -> this replica ---------------------------------------------------------------------------
    async def apply(self, st: dict) -> None:
        """Make this replica match the stored state: engines, router order and weights."""
        gw = self.gw
        for name, v in st["versions"].items():
            if v["status"] == "active" and name not in gw.engines:
                gw.add_version(VersionSpec(**v["spec"]))
        router = gw.router
        for name, v in st["versions"].items():
            if v["status"] == "active":
                router.add_version(name)
        if st.get("stable") and st["stable"] in router.order and router.stable != st["stable"]:
            router.set_stable(st["stable"])
        weights = {n: w for n, w in st["weights"].items() if n in router.order}
        if sum(weights.values()) > 0:
            router.set_weights(weights)
        for name, v in st["versions"].items():
            if v["status"] == "unloaded" and name in gw.engines and name not in self._drains:
                self._drains[name] = asyncio.create_task(self._drain(name))
        self.state = st

    async def _drain(self, name: str) -> None:
        try:
            await self.gw.remove_version(name, self.cfg.drain_timeout_s)
        finally:
            self._drains.pop(name, None)

    # --- the gate on this replica's traffic --------------------------------------------------------------
    def judge(self, ro: dict) -> Decision:
        stats = self.gw.stats
        now_wall, now = time.time(), stats.clock()
        elapsed = max(0.0, now_wall - ro["stage_started_at"])
        since = now - min(elapsed, ro["gates"]["window_s"])
        c, s = ro["canary"], ro["stable"]
        alarms = []
        for src in list(self.gw.alarm_sources):
            try:
                alarms.extend(src.active_alarms(c))
            except Exception as e:
                log.warning("alarm_source_failed", source=getattr(src, "name", "?"), error=repr(e))
        stage = ro["plan"][ro["stage"]]
        return evaluate(stats.summary(c, since, now), stats.summary(s, since, now), ro.get("baseline"),
                        stats.rewards(c, since, now), stats.rewards(s, since, now), alarms, stage, ro["gates"],
                        elapsed, stats.latencies(c, since, now))

    # --- actions (admin API and automatic) ---------------------------------------------------------------
    async def _commit(self, fn, audit=None) -> tuple[dict, bool]:
        """Apply `fn` through the store (compare-and-set); append `audit` (a dict, or a function of the new
        state) only when this call's change is the one committed. Returns (state, committed_by_us)."""
        token = uuid.uuid4().hex

        def wrapped(cur: dict) -> dict | None:
            new = fn(cur)
            if new is not None:
                new["_token"] = token
            return new

        st = await self.store.update(wrapped)
        mine = st.get("_token") == token
        if mine and audit is not None:
            await self.store.append_audit(audit(st) if callable(audit) else audit)
        await self.apply(st)
        return st, mine

    async def _auto_rollback(self, ro: dict, d: Decision) -> None:
        why = "; ".join(d.reasons)
        _, mine = await self._commit(lambda cur: _rollback(cur, ro["id"], SYSTEM, why),
                                     audit_entry(SYSTEM, "rollback", ro["canary"], why, stage=ro["stage"],
                                                 checks=d.checks))
        if mine:
            log.warning("canary_rolled_back", canary=ro["canary"], stage=ro["stage"], reason=why)

    async def _advance(self, ro: dict, who: str, why: str, d: Decision | None = None, full: bool = False) -> dict:
        stable_summary = None
        now = self.gw.stats.clock()
        elapsed = max(0.0, time.time() - ro["stage_started_at"])
        s = self.gw.stats.summary(ro["stable"], now - min(elapsed, ro["gates"]["window_s"]), now)
        if s.ok >= ro["gates"]["breach_min_requests"]:
            stable_summary = s.to_dict()

        def fn(cur: dict) -> dict | None:
            r = cur.get("rollout")
            if not r or r["id"] != ro["id"] or r["stage"] != ro["stage"] or r["state"] not in ("running", "paused"):
                return None  # someone else moved it first
            nxt = len(r["plan"]) if full else r["stage"] + 1
            if stable_summary:
                r["baseline"] = stable_summary
            r["history"].append({"stage": r["stage"], "ended_at": time.time(), "by": who, "why": why})
            if nxt >= len(r["plan"]):  # promoted: the canary takes everything and becomes the stable version
                r["state"], r["stage"], r["ended_at"] = "promoted", len(r["plan"]) - 1, time.time()
                cur["weights"] = {n: 0.0 for n in cur["weights"]}
                cur["weights"][r["canary"]] = 1.0
                cur["stable"] = r["canary"]
            else:
                r["stage"], r["stage_started_at"] = nxt, time.time()
                _set_canary_weight(cur, r["canary"], r["stable"], r["plan"][nxt]["weight"])
            return cur

        def event(st: dict) -> str:
            r = st["rollout"]
            return "promoted to 100%" if r["state"] == "promoted" else \
                f"stage {r['stage']} ({r['plan'][r['stage']]['weight']:.0%})"

        st, mine = await self._commit(fn, lambda st: audit_entry(
            who, "advance" if who == SYSTEM else "promote", ro["canary"], why, to=event(st),
            checks=d.checks if d else None))
        if mine:
            log.info("canary_advanced", canary=ro["canary"], to=event(st), by=who)
        elif who != SYSTEM:
            raise ControlError(409, "the rollout changed meanwhile; check the status and retry")
        return st

    async def start_rollout(self, canary: str, who: str, why: str | None, stages=None, min_requests=None,
                            min_duration_s=None) -> dict:
        st = self.state
        v = st["versions"].get(canary)
        if not v or v["status"] != "active":
            raise ControlError(404, f"no active version `{canary}`; register it first")
        if canary == st["stable"]:
            raise ControlError(409, f"`{canary}` is the stable version")
        if v.get("gate", {}) and v["gate"].get("verdict") == "FAIL" and not v.get("forced"):
            raise ControlError(409, f"`{canary}` failed the training gate: {v['gate'].get('reasons')}")
        try:
            plan = make_plan(self.cfg, stages, min_requests, min_duration_s)
        except ValueError as e:
            raise ControlError(400, str(e)) from None
        stable = st["stable"]
        rid = f"{canary}-{int(time.time() * 1000)}"

        def fn(cur: dict) -> dict:
            r = cur.get("rollout")
            if r and r["state"] in ("running", "paused"):
                raise ControlError(409, f"a rollout of `{r['canary']}` is {r['state']}; roll it back or finish it first")
            now = time.time()
            cur["rollout"] = {"id": rid, "canary": canary, "stable": cur["stable"], "plan": plan,
                              "gates": gate_params(self.cfg), "stage": 0, "state": "running", "started_at": now,
                              "stage_started_at": now, "started_by": who, "reason": None, "history": [],
                              "baseline": None}
            _set_canary_weight(cur, canary, cur["stable"], plan[0]["weight"])
            return cur

        st, _ = await self._commit(fn, audit_entry(who, "start", canary, why, stable=stable, plan=plan))
        return st

    def _current(self, states=("running", "paused")) -> dict:
        ro = self.state.get("rollout")
        if not ro or ro["state"] not in states:
            raise ControlError(409, "no rollout in progress")
        return ro

    async def promote(self, who: str, why: str | None, full: bool = False) -> dict:
        ro = self._current()
        return await self._advance(ro, who, why or "manual promotion", None, full)

    async def rollback(self, who: str, why: str | None) -> dict:
        ro = self._current()
        why = why or "manual rollback"
        st, mine = await self._commit(lambda cur: _rollback(cur, ro["id"], who, why),
                                      audit_entry(who, "rollback", ro["canary"], why, stage=ro["stage"]))
        if not mine:
            raise ControlError(409, "the rollout already ended")
        return st

    async def pause(self, who: str, why: str | None, resume: bool = False) -> dict:
        ro = self._current()

        def fn(cur: dict) -> dict | None:
            r = cur.get("rollout")
            if not r or r["id"] != ro["id"] or r["state"] not in ("running", "paused"):
                return None
            r["state"] = "running" if resume else "paused"
            return cur

        st, _ = await self._commit(fn, audit_entry(who, "resume" if resume else "pause", ro["canary"], why))
        return st

    async def set_weight(self, version: str, weight: float, who: str, why: str | None) -> dict:
        if not 0 <= weight <= 1:
            raise ControlError(400, "weight must be in [0, 1]")
        st = self.state
        if version not in st["versions"] or st["versions"][version]["status"] != "active":
            raise ControlError(404, f"no active version `{version}`")
        if version == st["stable"]:
            raise ControlError(409, f"`{version}` is the stable version: it takes whatever the others leave")
        v = st["versions"][version]
        if weight > 0 and (v.get("gate") or {}).get("verdict") == "FAIL" and not v.get("forced"):
            raise ControlError(409, f"`{version}` failed the training gate; register it with force to override")

        def fn(cur: dict) -> dict:
            others = sum(w for n, w in cur["weights"].items() if n not in (version, cur["stable"]))
            if weight + others > 1 + 1e-9:
                raise ControlError(409, f"weights of non-stable versions would exceed 1 ({weight + others:.3f})")
            cur["weights"][version] = weight
            cur["weights"][cur["stable"]] = max(0.0, 1.0 - weight - others)
            r = cur.get("rollout")
            if r and r["canary"] == version and r["state"] == "running":
                r["state"] = "paused"  # a manual weight overrides the plan until `resume`
                r["history"].append({"stage": r["stage"], "ended_at": time.time(), "by": who,
                                     "why": f"set-weight {weight} (rollout paused)"})
            return cur

        st, _ = await self._commit(fn, audit_entry(who, "set-weight", version, why, weight=weight))
        return st

    async def register(self, spec: VersionSpec, force: bool, who: str, why: str | None) -> dict:
        gate = read_gate_verdict(spec.model) if spec.model else {"verdict": "NONE", "reasons": ["remote URL"]}
        if spec.model and not Path(spec.model, "config.json").is_file():
            raise ControlError(400, f"{spec.model} is not an HF model directory (no config.json)")
        if gate["verdict"] == "FAIL" and not force:
            raise ControlError(409, f"version `{spec.name}` failed the training gate ({'; '.join(gate['reasons'])}); "
                                    "pass force=true to register it anyway (audited)")
        if spec.name == self.gw.settings.public_model:
            raise ControlError(400, "a version cannot take the public model name")

        def fn(cur: dict) -> dict:
            old = cur["versions"].get(spec.name)
            if old and old["status"] == "active":
                raise ControlError(409, f"version `{spec.name}` is already registered")
            if spec.name in self.gw.engines:
                raise ControlError(409, f"version `{spec.name}` is still draining; try again shortly")
            cur["versions"][spec.name] = self._version_entry(spec, "admin", who, gate, force and gate["verdict"] == "FAIL")
            cur["weights"][spec.name] = 0.0
            return cur

        action = "register-forced" if force and gate["verdict"] == "FAIL" else "register"
        st, _ = await self._commit(fn, audit_entry(who, action, spec.name, why, gate=gate,
                                                   source=spec.model or spec.url))
        return st

    async def unload(self, name: str, who: str, why: str | None) -> dict:
        st = self.state
        v = st["versions"].get(name)
        if not v or v["status"] != "active":
            raise ControlError(404, f"no active version `{name}`")
        if name == st["stable"]:
            raise ControlError(409, f"`{name}` is the stable version; promote another version first")
        ro = st.get("rollout")
        if ro and ro["canary"] == name and ro["state"] in ("running", "paused"):
            raise ControlError(409, f"`{name}` is the canary of a rollout in progress; roll it back first")

        def fn(cur: dict) -> dict:
            cur["versions"][name]["status"] = "unloaded"
            cur["versions"][name]["unloaded_at"] = time.time()
            freed = cur["weights"].pop(name, 0.0)
            cur["weights"][cur["stable"]] = cur["weights"].get(cur["stable"], 0.0) + freed
            return cur

        st, _ = await self._commit(fn, audit_entry(who, "unload", name, why))
        return st

    # --- status ------------------------------------------------------------------------------------------
    def status(self) -> dict:
        gw, st = self.gw, self.state
        ro = st.get("rollout")
        now_wall, now = time.time(), gw.stats.clock()
        if ro and ro["state"] in ("running", "paused"):
            since = now - min(max(0.0, now_wall - ro["stage_started_at"]), ro["gates"]["window_s"])
        else:
            since = now - self.cfg.window_s
        versions = []
        for name, v in st.get("versions", {}).items():
            if v["status"] != "active":
                continue
            s = gw.stats.summary(name, since, now)
            alarms = []
            for src in list(gw.alarm_sources):
                try:
                    alarms.extend(a.to_dict() for a in src.active_alarms(name))
                except Exception:
                    pass
            engine = gw.engines.get(name)
            role = "stable" if name == st.get("stable") else ("canary" if ro and ro["canary"] == name else "")
            versions.append({"name": name, "role": role, "weight": st["weights"].get(name, 0.0),
                             "ready": bool(engine and engine.ready), "source": v["spec"].get("model") or v["spec"].get("url"),
                             "gate": (v.get("gate") or {}).get("verdict"), "forced": v.get("forced", False),
                             "fault": getattr(engine, "fault", None), "window": s.to_dict(), "alarms": alarms})
        return {"rev": st.get("rev"), "store": self.store.kind, "store_error": self.store_error,
                "stable": st.get("stable"), "rollout": _public_rollout(ro), "last_decision": self.last_decision,
                "versions": versions}


def _public_rollout(ro: dict | None) -> dict | None:
    if not ro:
        return None
    out = {k: v for k, v in ro.items() if not k.startswith("_")}
    if ro["state"] in ("running", "paused"):
        out["stage_weight"] = ro["plan"][ro["stage"]]["weight"]
        out["stage_elapsed_s"] = round(time.time() - ro["stage_started_at"], 2)
    return out


def _set_canary_weight(cur: dict, canary: str, stable: str, w: float) -> None:
    others = sum(x for n, x in cur["weights"].items() if n not in (canary, stable))
    w = min(w, max(0.0, 1.0 - others))
    cur["weights"][canary] = w
    cur["weights"][stable] = max(0.0, 1.0 - others - w)


def _rollback(cur: dict, rid: str, who: str, why: str) -> dict | None:
    r = cur.get("rollout")
    if not r or r["id"] != rid or r["state"] not in ("running", "paused"):
        return None
    r["state"], r["reason"], r["ended_at"], r["rolled_back_by"] = "rolled_back", why, time.time(), who
    r["rolled_back_at_stage"] = r["stage"]
    cur["weights"][r["canary"]] = 0.0
    others = sum(x for n, x in cur["weights"].items() if n != cur["stable"])
    cur["weights"][cur["stable"]] = max(0.0, 1.0 - others)
    return cur
