"""Canary rollouts: a plan of stages, a gate per stage, and the controller loop that advances or rolls back.

The plan and the gate (what each stage must pass) are in `serve.rollout.gate`.

Replicas. State lives in the store (`serve.rollout.store`); each replica polls its revision every tick and applies
changes (weights, stable, versions to load/unload). Without Redis a replica judges the gate on its own traffic;
with Redis every replica's request outcomes and rewards reach every other through a stream (`serve.rollout.stats_sync`),
so each judges the whole canary's traffic. Any replica can roll back, and an advance is a compare-and-set on the
stage, so it happens once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from serve.config import CanarySettings, VersionSpec
from serve.rollout.gate import Decision, evaluate, gate_params, make_plan
from serve.logs import get_logger
from serve.rollout.store import StoreUnavailable, audit_entry

log = get_logger(__name__)

SYSTEM = "controller"  # the `who` of automatic actions in the audit log


# --- the controller ----------------------------------------------------------------------------------------
class ControlError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def read_gate_verdict(model_dir: str) -> dict:
    """The training module's gate verdict from `manifest.json` ({"verdict": PASS|FAIL|UNGATED, "reasons"})."""
    import json

    path = Path(model_dir) / "manifest.json"
    if not _is_file(path):
        return {"verdict": "NONE", "reasons": ["no manifest.json in the directory"]}
    try:
        gate = json.loads(path.read_text()).get("gate") or {}
    except (OSError, ValueError) as e:
        return {"verdict": "FAIL", "reasons": [f"unreadable manifest.json: {e}"]}
    return {"verdict": str(gate.get("verdict", "NONE")).upper(), "reasons": list(gate.get("reasons") or [])}


def _is_file(path: Path) -> bool:
    """`Path.is_file`, False where the OS refuses the path itself (a component over 255 bytes: ENAMETOOLONG)."""
    try:
        return path.is_file()
    except OSError:
        return False


class CanaryController:
    def __init__(self, gw, store, cfg: CanarySettings):
        self.gw, self.store, self.cfg = gw, store, cfg
        self.state: dict = {"rev": -1}
        self.last_decision: dict | None = None
        self.store_error: str | None = None
        self._task: asyncio.Task | None = None
        self._drains: dict[str, asyncio.Task] = {}
        self._pending_rollback: tuple[dict, Decision] | None = None  # decided while the store was unreachable

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
        # The store down (Redis lost) must not switch the gate off: sync when it answers, else judge on the last
        # state this replica knows; a rollback then applies here at once and is committed when the store is back.
        unavailable: StoreUnavailable | None = None
        try:
            if not self.state.get("versions"):  # the store was down at start (or was wiped): seed it now
                await self._seed()
            if await self.store.rev() != self.state.get("rev"):
                await self.apply(await self.store.load())
            if self._pending_rollback is not None:
                await self._auto_rollback(*self._pending_rollback)
        except StoreUnavailable as e:
            unavailable = e
        try:
            await self._judge_tick()
        finally:
            if unavailable is not None:
                raise unavailable

    async def _judge_tick(self) -> None:
        ro = self.state.get("rollout")
        if not ro or ro["state"] not in ("running", "paused"):
            return
        if self._pending_rollback is not None and self._pending_rollback[0]["id"] == ro["id"]:
            return  # rolled back here already; nothing more to decide until the store has it
        # A canary whose engine died under real traffic (crash, OOM, killed) is rolled back at once: its share
        # already falls back to stable, but a version that cannot stay up is not one to keep advancing.
        if self.cfg.rollback_on_engine_death and (down := self.gw.engine_down(ro["canary"])):
            d = Decision("rollback", [f"canary engine died: {down}"], {"engine": {"ok": False, "reason": down}})
            self.last_decision = {**d.to_dict(), "at": time.time(), "stage": ro["stage"]}
            await self._auto_rollback(ro, d)
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
                try:
                    gw.add_version(VersionSpec(**v["spec"]))
                except Exception as e:  # a stored spec this replica cannot build must not wedge every later
                    # commit (schemathesis: one bad registration turned all admin actions into 500s)
                    log.error("version_add_failed", version=name, error=repr(e))
        router = gw.router
        for name, v in st["versions"].items():
            if v["status"] == "active" and name in gw.engines:  # never route to a version without an engine
                gw.lifecycle.add(name)
        if st.get("stable") and st["stable"] in router.order:  # promoted here or on another replica: the same
            gw.lifecycle.promote(st["stable"])
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

    # --- the gate: on this replica's traffic, or every replica's with Redis (serve/rollout/stats_sync.py) -----------
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
        try:
            _, mine = await self._commit(lambda cur: _rollback(cur, ro["id"], SYSTEM, why),
                                         audit_entry(SYSTEM, "rollback", ro["canary"], why, stage=ro["stage"],
                                                     checks=d.checks))
        except StoreUnavailable:
            self._rollback_locally(ro, why)
            raise
        self._pending_rollback = None
        if mine:
            log.warning("canary_rolled_back", canary=ro["canary"], stage=ro["stage"], reason=why)

    def _rollback_locally(self, ro: dict, why: str) -> None:
        """Fail safe while the store is unreachable: this replica stops sending the canary traffic now; the
        rollback itself (shared state, audit) is committed by the first tick that reaches the store again."""
        if self._pending_rollback is None:
            log.warning("canary_rolled_back_locally", canary=ro["canary"], reason=why,
                        detail="store unavailable: committed when it is back")
        self._pending_rollback = (ro, Decision("rollback", [why], {}))
        router = self.gw.router
        if router.weights.get(ro["canary"], 0.0) > 0 and ro["canary"] != router.stable:
            weights = dict(router.weights)
            weights[router.stable] = weights.get(router.stable, 0.0) + weights[ro["canary"]]
            weights[ro["canary"]] = 0.0
            router.set_weights(weights)

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
        if spec.model and not _is_file(Path(spec.model, "config.json")):
            raise ControlError(400, f"{spec.model} is not an HF model directory (no config.json)")
        gate = read_gate_verdict(spec.model) if spec.model else {"verdict": "NONE", "reasons": ["remote URL"]}
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
                             "fault": engine.fault if engine else None, "window": s.to_dict(), "alarms": alarms})
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
