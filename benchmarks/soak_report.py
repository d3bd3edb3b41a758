"""The soak's bookkeeping, apart from any process: how one request's outcome is classified (`classify_response`,
`classify_stream`, `classify_exception`), which fault window explains an error (`attribute`), resource growth after
warm-up (`growth`) and the summary written to benchmarks/results/soak-<minutes>m.json (`summarize`), and its
plot (`plot`). `benchmarks/soak.py` runs the soak and feeds these; `tests/test_soak_report.py` checks them.

Outcome kinds:
  ok     a 200 answer (non-stream: a JSON body with choices; stream: `data: [DONE]` and no error event);
  error  a clear error: a 4xx/5xx whose body is the OpenAI error shape, or an in-band stream error event
         (`data: {"error": {...}}`) — the client knows what happened;
  lost   everything else: a timeout, a dropped or refused connection, a stream that ends without [DONE] and without
         an error event, an error status whose body is not the OpenAI error shape.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

OK, ERROR, LOST = "ok", "error", "lost"
ERROR_SHAPE_KEYS = ("message", "type", "param", "code")

# why each fault may cost clients an error (what the gateway is meant to answer while it runs)
EXPLAIN = {
    "bad_input": "the harness's own malformed requests (expected 4xx, not traffic)",
    "register_unload": "a version registered, served, drained and unloaded: traffic should see nothing",
    "canary_promote": "a new generation of stable registered, promoted to 100% by the controller, the old "
                      "stable drained and unloaded: traffic should see nothing",
    "canary_rollback": "the canary rolled back by the controller on its alarms (or an injected one): traffic "
                       "should see nothing",
    "engine_kill": "stable's EngineCore SIGKILLed: requests in flight on it get a clean 502 / in-band error "
                   "event, new ones 503 + Retry-After until the supervisor has restarted it",
    "redis_restart": "redis-server SIGKILLed and started again: the gateway runs on its local state meanwhile; "
                     "traffic should see nothing",
}


@dataclass
class Outcome:
    """One request as the client saw it. Times are seconds since the soak started."""

    i: int
    t0: float
    t1: float
    stream: bool
    kind: str  # ok | error | lost
    status: int | None = None  # HTTP status (None: no response)
    code: str | None = None  # error code / type, or the lost reason (timeout, connection, broken_stream, ...)
    message: str | None = None
    version: str | None = None
    response_id: str | None = None
    model: str = "aligngate"

    @property
    def latency_s(self) -> float:
        return self.t1 - self.t0


@dataclass
class Window:
    """A fault from its first action until the gateway was seen recovered."""

    kind: str
    t0: float
    t1: float
    detail: dict[str, Any] = field(default_factory=dict)
    ok: bool = True  # the fault's own checks passed (e.g. the engine came back, the rollback happened)


def error_shape(body: Any) -> dict | None:
    """The `error` object when `body` has the OpenAI error shape {"error": {"message","type","param","code"}}."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and all(k in err for k in ERROR_SHAPE_KEYS) and isinstance(err["message"], str) \
            and err["message"].strip():
        return err
    return None


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def classify_response(status: int, text: str) -> tuple[str, str | None, str | None, str | None]:
    """A non-stream answer: (kind, code, message, response_id)."""
    body = _parse(text)
    if status == 200:
        if isinstance(body, dict) and body.get("choices"):
            return OK, None, None, body.get("id")
        return LOST, "bad_200_body", text[:200], None
    err = error_shape(body)
    if err is None:
        return LOST, "no_error_shape", text[:200], None
    return ERROR, str(err.get("code") or err.get("type")), err["message"][:300], None


def classify_stream(status: int, lines: list[str], head_text: str = "") -> tuple[str, str | None, str | None,
                                                                                      str | None]:
    """A streamed answer from its SSE `data:` lines (a non-200 answer's body in `head_text`)."""
    if status != 200:
        return classify_response(status, head_text)
    done, rid = False, None
    for line in lines:
        if not line.startswith("data: "):
            continue
        payload = line[6:].strip()
        if payload == "[DONE]":
            done = True
            continue
        chunk = _parse(payload)
        if not isinstance(chunk, dict):
            return LOST, "bad_sse_chunk", payload[:200], rid
        if "error" in chunk:
            err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            return ERROR, "stream:" + str(err.get("code") or err.get("type") or "error"), \
                str(err.get("message"))[:300], rid
        rid = rid or chunk.get("id")
    if done:
        return OK, None, None, rid
    return LOST, "broken_stream", "the stream ended without [DONE] and without an error event", rid


def classify_exception(exc: BaseException, got_status: int | None = None) -> tuple[str, str, str]:
    """A client-side exception: always lost (the gateway gave no clear answer). (kind, reason, message)"""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        reason = "timeout"
    elif got_status == 200:
        reason = "broken_stream"  # the connection dropped mid-stream, no error event
    elif isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        reason = "connection"
    else:
        reason = type(exc).__name__
    return LOST, reason, repr(exc)[:300]


def attribute(o: Outcome, windows: list[Window], grace_s: float) -> Window | None:
    """The fault window a request overlaps (its [t0, t1] against [w.t0, w.t1 + grace]); of several, the latest
    started (a 503 just after an engine kill belongs to the kill, not to the grace of the fault before it)."""
    hits = [w for w in windows if o.t0 <= w.t1 + grace_s and o.t1 >= w.t0]
    return max(hits, key=lambda w: w.t0) if hits else None


def growth(samples: list[dict], key: str, warm_s: float, span_s: float = 60.0) -> dict:
    """`key` after warm-up (median of the samples in [warm_s, warm_s + span_s]) vs at the end (median of the last
    span_s), and the relative growth. None when there is nothing after warm-up."""
    pts = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
    if not pts:
        return {"start": None, "end": None, "growth": None}
    t_end = pts[-1][0]
    start = [v for t, v in pts if warm_s <= t <= warm_s + span_s]
    end = [v for t, v in pts if t >= t_end - span_s and t >= warm_s]
    if not start or not end:
        return {"start": None, "end": None, "growth": None}
    a, b = statistics.median(start), statistics.median(end)
    return {"start": a, "end": b, "growth": round((b - a) / a, 4) if a else None}


def summarize(outcomes: list[Outcome], windows: list[Window], samples: list[dict], *, minutes: float,
              warm_s: float, grace_s: float, bad_input: list[dict], feedback: dict, audit: dict,
              extra: dict | None = None) -> dict:
    """The results JSON: outcome counts, errors per fault window with the explanation, errors outside any window,
    lost requests, bad-input checks, feedback / audit-log completeness, resources after warm-up, and `failures`:
    every reason the soak did not meet its bar (empty = passed)."""
    counts: dict[str, dict[str, int]] = {}
    for o in outcomes:
        c = counts.setdefault("stream" if o.stream else "non_stream", {OK: 0, ERROR: 0, LOST: 0})
        c[o.kind] += 1
    total = {k: sum(c[k] for c in counts.values()) for k in (OK, ERROR, LOST)}
    per_window = [{"kind": w.kind, "t0": round(w.t0, 2), "t1": round(w.t1, 2), "ok": w.ok,
                   "explanation": EXPLAIN.get(w.kind, ""), "detail": w.detail, "errors": {}, "lost": 0}
                  for w in windows]
    outside, lost = [], []
    for o in outcomes:
        if o.kind == OK:
            continue
        w = attribute(o, windows, grace_s)
        if o.kind == LOST:
            lost.append({**asdict(o), "window": w.kind if w else None})
        if w is None:
            if o.kind == ERROR:
                outside.append(asdict(o))
            continue
        pw = per_window[windows.index(w)]
        if o.kind == LOST:
            pw["lost"] += 1
        else:
            key = f"{o.status} {o.code}"
            pw["errors"][key] = pw["errors"].get(key, 0) + 1
    lat = sorted(o.latency_s for o in outcomes if o.kind == OK)
    resources = {k: growth(samples, k, warm_s) for k in ("rss_tree_mb", "rss_gateway_mb", "fds", "threads",
                                                           "procs", "shm_ours_mb")}
    failures = []
    if lost:
        failures.append(f"{len(lost)} lost requests")
    if outside:
        failures.append(f"{len(outside)} errors outside every fault window")
    bad = [b for b in bad_input if not b.get("ok")]
    if bad:
        failures.append(f"{len(bad)} bad-input requests not answered with a 4xx in the OpenAI error shape")
    if feedback.get("missing_rows") or feedback.get("unknown_response"):
        failures.append(f"feedback incomplete: {feedback.get('missing_rows')} acked rows missing from the file, "
                        f"{feedback.get('unknown_response')} answered responses unknown to the response log")
    if audit.get("missing"):
        failures.append(f"{len(audit['missing'])} admin actions missing from the audit log")
    failed_faults = [w.kind for w in windows if not w.ok]
    if failed_faults:
        failures.append(f"faults whose recovery check failed: {failed_faults}")
    g = resources["rss_tree_mb"]["growth"]
    if g is not None and g >= 0.05:
        failures.append(f"RSS (process tree) grew {g:.1%} after warm-up (target < 5%)")
    return {
        "scenario": "soak", "minutes": minutes, "warm_up_s": warm_s, "window_grace_s": grace_s,
        "requests": len(outcomes), "outcomes": total, "outcomes_by_mode": counts,
        "latency_ok_s": {"p50": _q(lat, 0.5), "p90": _q(lat, 0.9), "p99": _q(lat, 0.99), "max": lat[-1] if lat
                         else None},
        "fault_windows": per_window, "faults_run": _count(w.kind for w in windows),
        "errors_outside_windows": outside, "lost": lost, "bad_input": bad_input,
        "feedback": feedback, "audit_log": audit, "resources_after_warm_up": resources,
        "failures": failures, "passed": not failures, **(extra or {}),
    }


def _q(xs: list[float], q: float) -> float | None:
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4) if xs else None


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


COLORS = {"bad_input": "#bbbbbb", "register_unload": "#9ecae1", "canary_promote": "#a1d99b",
          "canary_rollback": "#fdae6b", "engine_kill": "#fb6a4a", "redis_restart": "#bcbddc"}


def plot(outcomes: list[Outcome], windows: list[Window], samples: list[dict], path, title: str) -> None:
    """Latency of ok answers, errors and lost per 10 s, RSS / fds / threads over time; fault windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(4, 1, figsize=(12, 11), sharex=True)
    for stream, mark in ((False, "."), (True, "x")):
        pts = [(o.t0 / 60, o.latency_s) for o in outcomes if o.kind == OK and o.stream == stream]
        if pts:
            ax[0].scatter(*zip(*pts), s=4, marker=mark, alpha=0.5, label="stream" if stream else "non-stream")
    ax[0].set_ylabel("latency of ok (s)")
    ax[0].set_yscale("log")
    bins: dict[int, dict[str, int]] = {}
    for o in outcomes:
        if o.kind != OK:
            b = bins.setdefault(int(o.t0 // 10), {ERROR: 0, LOST: 0})
            b[o.kind] += 1
    if bins:
        ks = sorted(bins)
        ax[1].bar([k / 6 for k in ks], [bins[k][ERROR] for k in ks], width=1 / 6, align="edge", color="orange",
                  label="error")
        ax[1].bar([k / 6 for k in ks], [bins[k][LOST] for k in ks], width=1 / 6, bottom=[bins[k][ERROR] for k in ks],
                  align="edge", color="black", label="lost")
    ax[1].set_ylabel("errors / 10 s")
    ts = [s["t"] / 60 for s in samples]
    ax[2].plot(ts, [s.get("rss_tree_mb") for s in samples], label="gateway tree RSS (MiB)")
    ax[2].plot(ts, [s.get("rss_gateway_mb") for s in samples], label="gateway process RSS (MiB)")
    ax[2].set_ylabel("RSS (MiB)")
    ax[3].plot(ts, [s.get("fds") for s in samples], label="open fds (tree)")
    ax[3].plot(ts, [s.get("threads") for s in samples], label="threads (tree)")
    ax[3].plot(ts, [s.get("shm_ours_mb") for s in samples], label="/dev/shm ours (MiB)")
    ax[3].set_xlabel("minutes")
    seen = set()
    for w in windows:
        for a in ax:
            a.axvspan(w.t0 / 60, w.t1 / 60, color=COLORS.get(w.kind, "#dddddd"), alpha=0.35,
                      label=w.kind if a is ax[0] and w.kind not in seen else None)
        seen.add(w.kind)
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
