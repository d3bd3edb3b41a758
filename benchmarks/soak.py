"""`python -m benchmarks soak --minutes N`: a real gateway under steady mixed traffic while faults run; nothing lost?

One `aligngate serve` process (the embedded default: `stable` + `canary`, in-process vLLM engines) with a real
redis-server (started here, AOF with fsync always, so a SIGKILL + restart is a restart, not a data loss) as its
control-plane store, response log and review queue. Open-loop traffic (Poisson, --rate req/s, half streamed, httpx
async) runs for N minutes; every request's outcome is recorded (benchmarks/soak_report.py: ok / clear error / lost).
After a quiet warm-up the fault schedule cycles until the last minute:
  bad_input        malformed JSON and bad parameters: each must get a 4xx in the OpenAI error shape
  register_unload  register a third version (the canary's weights), send it requests, drain and unload it
  canary_promote   a new generation of stable (its weights, a new name) registered, promoted by the controller
                   through its gates, the old stable unloaded
  canary_rollback  a rollout of `canary`: the controller rolls it back on its own alarms (the weaker tiny policy)
                   or, failing those, on an injected critical alarm
  engine_kill      SIGKILL of stable's EngineCore: the supervisor restarts it (new pid, state up)
  redis_restart    SIGKILL of redis-server, 3 s down, started again
Every 10th answer gets a rating on /v1/feedback; at the end each acknowledged rating must be a row of
feedback/ratings.jsonl with its provenance, and every admin action of the harness an entry of /admin/audit.
RSS, open fds, threads and processes of the gateway's process tree, its /dev/shm files and the load averages are
sampled every --sample-s.

Writes <out>/soak-<minutes>m.json, .png and the run's logs in <out>/soak-<minutes>m/. Exit codes: 0 passed, 1 the
soak found something (lost requests, errors outside fault windows, a bad input not answered 4xx, missing feedback
or audit rows, a fault that did not recover, RSS growth >= 5% after warm-up): the JSON's `failures` says what.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.soak_report import ERROR, LOST, OK, Outcome, Window, classify_exception, classify_response, \
    classify_stream, plot, summarize

ADMIN_KEY = "soak-admin-key"
FAULTS = ["bad_input", "register_unload", "canary_promote", "engine_kill", "canary_rollback", "redis_restart"]
GRACE_S = 5.0  # a request that ends up to this long after a window closed is still attributed to it
REQUEST_TIMEOUT_S = 120.0


# --- redis ----------------------------------------------------------------------------------------------------
class Redis:
    """A redis-server child on a fixed port; AOF with fsync always, so SIGKILL + start keeps every write."""

    def __init__(self, port: int, data_dir: Path):
        self.port, self.dir, self.proc = port, data_dir, None
        self.url = f"redis://127.0.0.1:{port}/0"
        data_dir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 15) -> None:
        import shutil
        import socket

        binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
                                      "--protected-mode", "no", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on {self.port}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --- the run --------------------------------------------------------------------------------------------------
class Soak:
    def __init__(self, url: str, gw_pid: int, redis: Redis, cache_dir: Path, args: argparse.Namespace):
        self.url, self.gw_pid, self.redis, self.cache_dir, self.args = url, gw_pid, redis, cache_dir, args
        self.t_start = time.monotonic()
        self.outcomes: list[Outcome] = []
        self.windows: list[Window] = []
        self.samples: list[dict] = []
        self.bad_input: list[dict] = []
        self.feedback_acks: list[dict] = []
        self.admin_actions: list[dict] = []
        self.stop = asyncio.Event()
        self.rng = random.Random(args.seed)
        self.n = 0
        self.tasks: set[asyncio.Task] = set()

    def now(self) -> float:
        return time.monotonic() - self.t_start

    # traffic ---------------------------------------------------------------------------------------------------
    async def one(self, c: httpx.AsyncClient, i: int, model: str = "aligngate") -> Outcome:
        stream = i % 2 == 0
        a, b = self.rng.randint(1, 99), self.rng.randint(1, 99)
        body = {"model": model, "messages": [{"role": "user", "content": f"{a}+{b}="}], "user": f"soak-{i % 64}",
                "max_tokens": self.rng.choice([8, 16, 24, 32]), "stream": stream}
        t0, status = self.now(), None
        try:
            if not stream:
                r = await c.post(self.url + "/v1/chat/completions", json=body)
                kind, code, msg, rid = classify_response(r.status_code, r.text)
                return Outcome(i, t0, self.now(), False, kind, r.status_code, code, msg,
                               r.headers.get("x-aligngate-version"), rid, model)
            async with c.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                status = r.status_code
                if status != 200:
                    text = (await r.aread()).decode(errors="replace")
                    kind, code, msg, rid = classify_stream(status, [], text)
                else:
                    lines = [ln async for ln in r.aiter_lines()]
                    kind, code, msg, rid = classify_stream(status, lines)
                return Outcome(i, t0, self.now(), True, kind, status, code, msg, r.headers.get("x-aligngate-version"),
                               rid, model)
        except httpx.HTTPError as e:
            kind, code, msg = classify_exception(e, status)
            return Outcome(i, t0, self.now(), stream, kind, status, code, msg, None, None, model)

    async def record(self, c: httpx.AsyncClient, i: int, model: str = "aligngate") -> Outcome:
        o = await self.one(c, i, model)
        self.outcomes.append(o)
        if o.kind == LOST:
            print(f"[{o.t0:8.1f}s] LOST #{o.i} stream={o.stream} {o.status} {o.code}: {o.message}", flush=True)
        if o.kind == OK and o.response_id and i % 10 == 0:
            await self.rate_answer(c, o)
        return o

    async def rate_answer(self, c: httpx.AsyncClient, o: Outcome) -> None:
        try:
            r = await c.post(self.url + "/v1/feedback", json={"response_id": o.response_id, "rating": 1.0,
                                                              "user": f"soak-{o.i % 64}"})
            self.feedback_acks.append({"response_id": o.response_id, "version": o.version, "status": r.status_code,
                                       "feedback_id": r.json().get("id") if r.status_code == 200 else None,
                                       "body": None if r.status_code == 200 else r.text[:300], "t": self.now()})
        except httpx.HTTPError as e:
            self.feedback_acks.append({"response_id": o.response_id, "status": None, "body": repr(e), "t": self.now()})

    async def traffic(self, c: httpx.AsyncClient) -> None:
        nxt = time.monotonic()
        while not self.stop.is_set():
            self.n += 1
            t = asyncio.create_task(self.record(c, self.n))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)
            nxt += self.rng.expovariate(self.args.rate)
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    # sampling --------------------------------------------------------------------------------------------------
    def sample(self) -> dict:
        import psutil

        s = {"t": round(self.now(), 1), "load": list(os.getloadavg())}
        try:
            root = psutil.Process(self.gw_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return s
        rss = fds = threads = 0
        shm: dict[str, int] = {}
        for p in procs:
            try:
                rss += p.memory_info().rss
                fds += p.num_fds()
                threads += p.num_threads()
                for m in p.memory_maps(grouped=True):
                    if m.path.startswith("/dev/shm/"):
                        shm[m.path] = 0
                for f in p.open_files():
                    if f.path.startswith("/dev/shm/"):
                        shm[f.path] = 0
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        for path in shm:
            try:
                shm[path] = os.stat(path).st_size
            except OSError:
                pass
        try:
            gw_rss = root.memory_info().rss
        except psutil.NoSuchProcess:
            gw_rss = 0
        st = os.statvfs("/dev/shm")
        s.update({"rss_tree_mb": round(rss / 2**20, 1), "rss_gateway_mb": round(gw_rss / 2**20, 1), "fds": fds,
                  "threads": threads, "procs": len(procs), "shm_ours_files": len(shm),
                  "shm_ours_mb": round(sum(shm.values()) / 2**20, 2),
                  "shm_used_all_mb": round((st.f_blocks - st.f_bfree) * st.f_frsize / 2**20, 1)})
        return s

    async def sampler(self) -> None:
        while not self.stop.is_set():
            self.samples.append(await asyncio.to_thread(self.sample))
            try:
                await asyncio.wait_for(self.stop.wait(), self.args.sample_s)
            except asyncio.TimeoutError:
                pass
        self.samples.append(await asyncio.to_thread(self.sample))

    # admin -----------------------------------------------------------------------------------------------------
    async def admin(self, c: httpx.AsyncClient, method: str, path: str, body: dict | None = None,
                    params: dict | None = None, action: str | None = None) -> httpx.Response:
        reason = None
        if action:  # a unique reason: the audit log entry of this action is found by it
            reason = f"soak#{len(self.admin_actions)} {action}"
            if body is not None:
                body = {**body, "reason": reason}
            else:
                params = {**(params or {}), "reason": reason}
        r = await c.request(method, self.url + path, json=body, params=params,
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120)
        if action:
            self.admin_actions.append({"t": round(self.now(), 2), "action": action, "reason": reason,
                                       "status": r.status_code})
        return r

    async def status(self, c: httpx.AsyncClient) -> dict:
        return (await self.admin(c, "GET", "/admin/status")).json()

    async def wait(self, what: str, cond, timeout: float, every: float = 0.5):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = await cond()
            except (httpx.HTTPError, ValueError, KeyError) as e:
                last = None
                err = e
            if last:
                return last
            await asyncio.sleep(every)
        raise TimeoutError(f"{what}: not within {timeout}s ({locals().get('err')!r})")

    async def candidate(self, c: httpx.AsyncClient) -> str:
        """The version to roll back: the embedded `canary` (never promoted here; weight 0 between rollouts)."""
        return "canary"

    # faults ------------------------------------------------------------------------------------------------------
    async def f_bad_input(self, c: httpx.AsyncClient) -> dict:
        good = {"model": "aligngate", "messages": [{"role": "user", "content": "1+1="}], "max_tokens": 4}
        cases = [("malformed JSON", b'{"model": "aligngate", "messages": [', None),
                 ("not JSON at all", b"hello", None),
                 ("messages missing", None, {"model": "aligngate", "max_tokens": 4}),
                 ("max_tokens negative", None, {**good, "max_tokens": -1}),
                 ("temperature a string", None, {**good, "temperature": "hot"}),
                 ("unknown model", None, {**good, "model": "no-such-model"}),
                 ("stream not a boolean", None, {**good, "stream": "yes"}),
                 ("n far too large", None, {**good, "n": 100000}),
                 ("feedback for an unknown response", None, None)]
        for name, raw, js in cases:
            t0 = self.now()
            try:
                if name.startswith("feedback"):
                    r = await c.post(self.url + "/v1/feedback", json={"response_id": "chatcmpl-nope", "rating": 1})
                elif raw is not None:
                    r = await c.post(self.url + "/v1/chat/completions", content=raw,
                                     headers={"content-type": "application/json"})
                else:
                    r = await c.post(self.url + "/v1/chat/completions", json=js)
                kind, code, msg, _ = classify_response(r.status_code, r.text)
                ok = 400 <= r.status_code < 500 and kind == ERROR
                self.bad_input.append({"t": round(t0, 2), "case": name, "status": r.status_code, "code": code,
                                       "message": msg, "ok": ok})
            except httpx.HTTPError as e:
                self.bad_input.append({"t": round(t0, 2), "case": name, "status": None, "message": repr(e),
                                       "ok": False})
        return {"cases": len(cases), "ok": sum(b["ok"] for b in self.bad_input[-len(cases):])}

    async def _register(self, c: httpx.AsyncClient, name: str, model: str, action: str) -> float:
        """Register `name` and wait until it is up; the seconds it took."""
        r = await self.admin(c, "POST", "/admin/versions", {"name": name, "model": model}, action=action)
        if r.status_code != 201:
            raise RuntimeError(f"register {name}: {r.status_code} {r.text[:300]}")
        t_reg = time.monotonic()

        async def up():
            vs = (await self.admin(c, "GET", "/admin/versions")).json()["versions"]
            v = next((v for v in vs if v["name"] == name), {})
            if v.get("state") == "failed":
                raise RuntimeError(f"{name} failed to start: {v}")
            return v.get("ready") and v.get("state") == "up"

        await self.wait(f"{name} up", up, 600)
        return time.monotonic() - t_reg

    async def _unload(self, c: httpx.AsyncClient, name: str) -> None:
        r = await self.admin(c, "DELETE", f"/admin/versions/{name}", action="unload")
        if r.status_code != 202:
            raise RuntimeError(f"unload {name}: {r.status_code} {r.text[:300]}")

        async def gone():
            vs = (await self.admin(c, "GET", "/admin/versions")).json()["versions"]
            v = next((v for v in vs if v["name"] == name), None)
            return v is None or v["status"] in ("unloaded", "removed")

        await self.wait(f"{name} unloaded", gone, 300)

    async def f_register_unload(self, c: httpx.AsyncClient) -> dict:
        name = f"extra{len(self.windows)}"
        ready_s = await self._register(c, name, str(self.cache_dir / "models" / "default-canary"), "register")
        named = [await self.record(c, 10**6 + len(self.windows) * 100 + k, model=name) for k in range(4)]
        await self._unload(c, name)
        return {"version": name, "ready_after_s": round(ready_s, 1), "named_requests": [o.kind for o in named]}

    async def _rollout(self, c: httpx.AsyncClient, cand: str, body: dict, action: str) -> None:
        r = await self.admin(c, "POST", "/admin/canary/start", {"version": cand, **body}, action=action)
        if r.status_code != 200:
            raise RuntimeError(f"canary start {cand}: {r.status_code} {r.text[:300]}")

    async def _ended(self, c: httpx.AsyncClient, timeout: float) -> dict:
        async def ended():
            ro = (await self.status(c)).get("rollout") or {}
            return ro if ro.get("state") in ("promoted", "rolled_back") else None
        return await self.wait("rollout ended", ended, timeout)

    async def f_canary_promote(self, c: httpx.AsyncClient) -> dict:
        """A new generation of stable (its own weights under a new name: the two tiny default policies differ in
        reward, so a demoted version's reward alarms would roll its next rollout back at once) is registered,
        rolled out to 100% by the controller, and the old stable is unloaded."""
        st = await self.status(c)
        old = st["stable"]
        vs = (await self.admin(c, "GET", "/admin/versions")).json()["versions"]
        src = next(v["source"] for v in vs if v["name"] == old)
        cand = f"gen{len(self.windows)}"
        ready_s = await self._register(c, cand, src, "register (next stable)")
        await self._rollout(c, cand, {"stages": [0.5, 1.0], "min_requests": 5, "min_duration_s": 10.0},
                            "canary start (to promotion)")
        ro = await self._ended(c, 300)
        st = await self.status(c)
        if ro["state"] != "promoted" or st["stable"] != cand:
            raise RuntimeError(f"rollout of {cand} ended {ro['state']} ({ro.get('reason')}), stable {st['stable']}")
        await self._unload(c, old)
        return {"candidate": cand, "ready_after_s": round(ready_s, 1), "state": ro["state"], "unloaded": old}

    async def f_canary_rollback(self, c: httpx.AsyncClient) -> dict:
        cand = await self.candidate(c)
        await self._rollout(c, cand, {"stages": [0.5, 1.0], "min_requests": 1_000_000},
                            "canary start (to rollback)")
        await asyncio.sleep(8.0)  # traffic on the canary first
        r = await self.admin(c, "POST", f"/admin/versions/{cand}/fault", {"alarm": "soak_injected_alarm"})
        if r.status_code != 200:
            raise RuntimeError(f"inject alarm: {r.status_code} {r.text[:300]}")
        try:
            ro = await self._ended(c, 120)
        finally:
            await self.admin(c, "DELETE", f"/admin/versions/{cand}/fault")
        if ro["state"] != "rolled_back":
            raise RuntimeError(f"rollout of {cand} ended {ro['state']}, not rolled back")
        return {"candidate": cand, "state": ro["state"], "by": ro.get("rolled_back_by"), "reason": ro.get("reason")}

    async def f_engine_kill(self, c: httpx.AsyncClient) -> dict:
        import psutil

        ready = (await c.get(self.url + "/ready", params={"verbose": "true"})).json()
        stable = (await self.status(c))["stable"]
        old = ready["versions"][stable]["engine_pid"]
        core = psutil.Process(old)
        if core not in psutil.Process(self.gw_pid).children(recursive=True) or \
                "EngineCore" not in core.name() + " ".join(core.cmdline()):
            raise RuntimeError(f"pid {old} is not an EngineCore of the gateway")
        core.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()

        async def back():
            v = (await c.get(self.url + "/ready", params={"verbose": "true"})).json()["versions"][stable]
            return v if v.get("state") == "up" and v.get("engine_pid") not in (None, old) else None

        v = await self.wait(f"{stable} restarted", back, 600)
        return {"version": stable, "old_pid": old, "new_pid": v["engine_pid"], "restarts": v.get("restarts"),
                "back_after_s": round(time.monotonic() - t_kill, 1)}

    async def f_redis_restart(self, c: httpx.AsyncClient) -> dict:
        await asyncio.to_thread(self.redis.kill)
        t_kill = time.monotonic()
        try:
            await self.wait("store error seen", lambda: self._store_error(c, True), 30)
            seen = True
        except TimeoutError:
            seen = False
        await asyncio.sleep(3.0)
        await asyncio.to_thread(self.redis.start)
        await self.wait("store back", lambda: self._store_error(c, False), 120)
        return {"store_error_seen": seen, "down_s": round(time.monotonic() - t_kill, 1)}

    async def _store_error(self, c: httpx.AsyncClient, want: bool) -> bool:
        return bool((await self.status(c)).get("store_error")) == want

    async def faults(self, c: httpx.AsyncClient) -> None:
        names = self.args.faults
        end = self.args.minutes * 60
        await asyncio.sleep(self.args.warm_faults_s)
        k = 0
        while self.now() < end - self.args.tail_s:
            kind = names[k % len(names)]
            k += 1
            w = Window(kind, self.now(), self.now())
            print(f"[{w.t0:8.1f}s] fault {kind} ...", flush=True)
            try:
                w.detail = await getattr(self, "f_" + kind)(c)
            except Exception as e:  # a fault that did not recover is a finding, and the soak goes on
                w.ok, w.detail = False, {"error": repr(e)[:500]}
            w.t1 = self.now()
            self.windows.append(w)
            print(f"[{w.t1:8.1f}s] fault {kind} done in {w.t1 - w.t0:.1f}s ok={w.ok} {w.detail}", flush=True)
            await asyncio.sleep(self.args.gap_s)

    async def clock(self) -> None:
        end = self.args.minutes * 60
        last = 0.0
        while self.now() < end:
            await asyncio.sleep(min(30.0, max(0.1, end - self.now())))
            if self.now() - last >= 60:
                last = self.now()
                kinds = [o.kind for o in self.outcomes]
                print(f"[{self.now():8.1f}s] {len(kinds)} requests: ok {kinds.count(OK)} error {kinds.count(ERROR)} "
                      f"lost {kinds.count(LOST)}; load {os.getloadavg()[0]:.1f}", flush=True)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10), limits=limits) as c, \
                httpx.AsyncClient(timeout=60) as ac:
            traffic = asyncio.create_task(self.traffic(c))
            sampler = asyncio.create_task(self.sampler())
            faults = asyncio.create_task(self.faults(ac))
            await self.clock()
            await faults  # a fault still running finishes before the traffic stops (the run gets longer)
            self.stop.set()
            await asyncio.gather(traffic, sampler)

    # completeness -----------------------------------------------------------------------------------------------
    async def check_audit(self) -> dict:
        async with httpx.AsyncClient(timeout=60) as c:
            r = await self.admin(c, "GET", "/admin/audit", params={"limit": 10000})
        entries = r.json().get("entries", []) if r.status_code == 200 else []
        reasons = {e.get("why") or e.get("reason") for e in entries}
        done = [a for a in self.admin_actions if a["status"] < 400]
        missing = [a for a in done if not any(a["reason"] in (x or "") for x in reasons)]
        return {"actions": len(done), "entries": len(entries), "missing": missing}

    def check_feedback(self, feedback_dir: Path) -> dict:
        rows = []
        path = feedback_dir / "ratings.jsonl"
        if path.exists():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        by_id = {r.get("feedback_id"): r for r in rows}
        acked = [a for a in self.feedback_acks if a["status"] == 200]
        missing, bad_prov = [], []
        for a in acked:
            row = by_id.get(a["feedback_id"])
            if row is None:
                missing.append(a)
            elif row.get("response_id") != a["response_id"] or not row.get("version") or "response" not in row:
                bad_prov.append({"ack": a, "row": {k: row.get(k) for k in ("response_id", "version")}})
        unknown = [a for a in self.feedback_acks if a["status"] == 404]
        other = [a for a in self.feedback_acks if a["status"] not in (200, 404)]
        return {"sent": len(self.feedback_acks), "acked": len(acked), "rows": len(rows),
                "missing_rows": len(missing) + len(bad_prov), "missing": (missing + bad_prov)[:50],
                "unknown_response": len(unknown), "unknown": unknown[:50], "other_errors": other[:50],
                # provenance the gateway leaves empty (not a loss: reported, not failed on)
                "rows_without_request_id": sum(1 for r in rows if not r.get("request_id"))}


# --- entry point ----------------------------------------------------------------------------------------------
def gateway_env(cache_dir: Path, run_dir: Path, redis_url: str) -> dict[str, str]:
    return {"ALIGNGATE_CACHE_DIR": str(cache_dir), "ALIGNGATE_ADMIN_KEY": ADMIN_KEY,
            "ALIGNGATE_REDIS_URL": redis_url, "ALIGNGATE_REDIS_PREFIX": "soak",
            "ALIGNGATE_FEEDBACK_DIR": str(run_dir / "feedback"), "ALIGNGATE_ALLOW_FAULT_INJECTION": "true",
            "ALIGNGATE_CANARY__TICK_S": "0.5", "ALIGNGATE_SUPERVISE_INTERVAL_S": "0.5",
            "ALIGNGATE_LOG_LEVEL": "warning",
            # the gates judge what this soak does not test: two tiny policies differ in reward, a loaded 2-core
            # machine in latency; an engine death and the injected alarm still roll back
            "ALIGNGATE_CANARY__REWARD_MIN_SAMPLES": "1000000", "ALIGNGATE_CANARY__LATENCY_RATIO": "1000",
            "ALIGNGATE_CANARY__LATENCY_SLACK_S": "60",
            # the tiny default stable says "I love you" now and then: its hard-constraint alarm would roll back
            # every rollout of it, so no promotion could be exercised; the rollback fault injects its own alarm
            "ALIGNGATE_HARD_CONSTRAINT_PHRASES": "[]"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="traffic duration (a fault still running at the "
                                                                "end finishes first)")
    p.add_argument("--rate", type=float, default=2.0, help="requests/s, open loop (default 2)")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help=f"comma-separated fault cycle (default: {','.join(FAULTS)})")
    p.add_argument("--gap-s", type=float, default=20.0, help="quiet seconds between faults (default 20)")
    p.add_argument("--warm-faults-s", type=float, default=None,
                   help="quiet seconds before the first fault (default: min(60, a tenth of the run))")
    p.add_argument("--tail-s", type=float, default=None,
                   help="no fault starts in the last this many seconds (default: min(60, a tenth of the run))")
    p.add_argument("--sample-s", type=float, default=5.0, help="resource sampling period (default 5)")
    p.add_argument("--cache-dir", type=Path, help="aligngate cache dir with the embedded default models (built "
                                                  "there if missing; default: a fresh one under the run directory)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import machine_facts
    from benchmarks.procs import free_port, start_aligngate
    from benchmarks.report import RESULTS

    args = build_parser().parse_args(argv)
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        print(f"unknown faults {sorted(unknown)}; known: {FAULTS}", file=sys.stderr)
        return 2
    total_s = args.minutes * 60
    args.warm_faults_s = min(60.0, total_s / 10) if args.warm_faults_s is None else args.warm_faults_s
    args.tail_s = min(60.0, total_s / 10) if args.tail_s is None else args.tail_s
    warm_s = 600.0 if args.minutes >= 60 else total_s / 6  # RSS growth is measured after this
    out = (args.out or RESULTS).resolve()
    stem = f"soak-{args.minutes:g}m"
    run_dir = out / stem
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = (args.cache_dir or run_dir / "cache").resolve()
    redis = Redis(free_port(), Path(tempfile.mkdtemp(prefix="aligngate-soak-redis-")))
    redis.start()
    load0 = os.getloadavg()
    proc = None
    try:
        print(f"starting the gateway (cache {cache_dir}) ...", flush=True)
        proc, url = start_aligngate("gateway-soak", run_dir, env=gateway_env(cache_dir, run_dir, redis.url),
                                    timeout=900)
        soak = Soak(url, proc.p.pid, redis, cache_dir, args)
        print(f"gateway {url} (pid {proc.p.pid}); soak of {args.minutes:g} min at {args.rate:g} req/s, faults "
              f"{args.faults}", flush=True)
        asyncio.run(soak.run())
        audit = asyncio.run(soak.check_audit())
        time.sleep(1.0)  # the last feedback appends
        feedback = soak.check_feedback(run_dir / "feedback")
        alive_at_end = proc.alive()
    finally:
        if proc is not None:
            proc.stop()
        redis.kill()
    loads = [s["load"] for s in soak.samples if "load" in s]
    extra = {"command": "python -m benchmarks soak " + " ".join(argv if argv is not None else sys.argv[1:]),
             "rate_rps": args.rate, "fault_cycle": args.faults, "duration_s": round(soak.now(), 1),
             "gateway_alive_at_end": alive_at_end, "machine": machine_facts(),
             "load_average": {"at_start": list(load0), "mean_1m": round(sum(x[0] for x in loads) / len(loads), 2)
                              if loads else None, "max_1m": max((x[0] for x in loads), default=None)},
             "admin_actions": soak.admin_actions,
             "resources_first_last_sample": {"first": soak.samples[0] if soak.samples else None,
                                             "last": soak.samples[-1] if soak.samples else None},
             "samples": soak.samples}
    result = summarize(soak.outcomes, soak.windows, soak.samples, minutes=args.minutes, warm_s=warm_s,
                       grace_s=GRACE_S, bad_input=soak.bad_input, feedback=feedback, audit=audit, extra=extra)
    if not alive_at_end:
        result["failures"].append("the gateway process was not alive at the end")
        result["passed"] = False
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (run_dir / "outcomes.jsonl").write_text("\n".join(json.dumps(o.__dict__) for o in soak.outcomes))
    plot(soak.outcomes, soak.windows, soak.samples, out / f"{stem}.png",
         f"aligngate soak {args.minutes:g} min @ {args.rate:g} req/s: {result['outcomes']}, "
         f"faults {result['faults_run']}")
    print(json.dumps({k: result[k] for k in ("requests", "outcomes", "faults_run", "failures")}, indent=1))
    print(f"results: {out / stem}.json / .png", flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
