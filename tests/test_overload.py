"""Overload and request limits (issue 7, item 3), on a real `aligngate serve` with one tiny local version and
small admission limits: a burst beyond `max_concurrency` + `max_queue` gets 503 + Retry-After (never another
5xx) while the admitted requests succeed; the request timeout is a 504 before the first byte and an in-band
error event after it; max_tokens / prompt / messages caps are 400s. No keys configured: open on loopback.
"""

from __future__ import annotations

from benchmarks.procs import start_aligngate

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from serve.admission.adaptive import AdaptiveLimit
from serve.admission.admission import Overloaded, Slots
from tests.promtext import metric

ADMIN = "adm-overload"
MAX_CONCURRENCY, MAX_QUEUE = 2, 2


def start_gateway_proc(name: str, log_dir, env: dict[str, str]):
    # engine start-up on a shared 2-core machine under load can take longer than the default 300 s
    return start_aligngate(name, log_dir, env=env, timeout=900)


# --- unit: the bounded FIFO -------------------------------------------------------------------------------------
def test_slots_fifo_bounded_queue_and_timeout():
    async def main():
        s = Slots(1, 1)
        await s.acquire(1)
        waiter = asyncio.create_task(s.acquire(5))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="waiting"):  # one in flight, one waiting: the third is refused
            await s.acquire(5)
        s.release()  # handed to the waiter
        await waiter
        assert s.active == 1 and not s.waiters
        with pytest.raises(Overloaded, match="no slot freed"):
            await s.acquire(0.05)
        assert not s.waiters  # a waiter that gave up leaves the line
        cancelled = asyncio.create_task(s.acquire(5))
        await asyncio.sleep(0)
        cancelled.cancel()  # a client that goes away while queued
        await asyncio.gather(cancelled, return_exceptions=True)
        s.release()
        assert s.active == 0 and not s.waiters
    asyncio.run(main())


# --- unit: the adaptive (latency-bounded) limit -------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _feed(a: AdaptiveLimit, clock: FakeClock, tpot: float, intervals: int, per_interval: int = 10,
          e2e: float = 0.1, saturated: bool = False) -> None:
    for _ in range(intervals):
        for _ in range(per_interval):
            a.saturated = a.saturated or saturated
            a.observe(tpot, e2e)
        clock.t += a.interval_s


def test_adaptive_limit_shrinks_when_tpot_degrades_and_grows_back_when_it_recovers():
    clock = FakeClock()
    a = AdaptiveLimit(ceiling=64, floor=4, tolerance=1.3, clock=clock, start=64)
    _feed(a, clock, 0.002, 4)  # unloaded: the baseline
    assert a.limit == 64 and a.baseline == pytest.approx(0.002)
    _feed(a, clock, 0.0025, 4, saturated=True)  # within tolerance and the limit binds: stays at the ceiling
    assert a.limit == 64
    _feed(a, clock, 0.004, 6)  # 2x the baseline: multiplicative decrease, once per interval
    assert 4 < a.limit <= 64 * a.decrease ** 4  # six intervals at 2x: at least four decreases
    low = a.limit
    _feed(a, clock, 0.004, 30)
    assert a.limit == 4  # never below the floor
    _feed(a, clock, 0.002, 3, saturated=True)  # recovered and the limit holds traffic back: additive increase
    assert 4 < a.limit <= low
    _feed(a, clock, 0.002, 3, saturated=False)  # recovered but nobody waits: no reason to grow
    grown = a.limit
    _feed(a, clock, 0.002, 3, saturated=False)
    assert a.limit == grown
    # the queue wait follows the recent median end-to-end time, capped by queue_timeout_s
    assert a.queue_wait_s(30.0) == pytest.approx(a.queue_wait_share * 0.1)
    assert a.queue_wait_s(0.01) == 0.01


def test_adaptive_limit_shrinks_when_the_engines_ttft_degrades_at_a_steady_tpot():
    """Requests admitted past what the engine schedules at once wait inside the engine: TPOT stays flat, the
    engine's TTFT (queue wait left out) grows. That alone shrinks the limit; a TTFT within tolerance does not."""
    clock = FakeClock()
    a = AdaptiveLimit(ceiling=64, floor=4, tolerance=1.5, ttft_tolerance=2.0, clock=clock, start=64)

    def feed(ttft: float, intervals: int, saturated: bool = False) -> None:
        for _ in range(intervals):
            for _ in range(10):
                a.saturated = a.saturated or saturated
                a.observe(0.002, 0.1, ttft)
            clock.t += a.interval_s

    feed(0.010, 4)
    assert a.limit == 64 and a.ttft_baseline == pytest.approx(0.010)
    feed(0.018, 4, saturated=True)  # 1.8x: within tolerance
    assert a.limit == 64
    feed(0.050, 5)  # 5x at the same TPOT: the limit shrinks every interval
    assert a.limit <= int(64 * a.decrease ** 4)
    low = a.limit
    feed(0.010, 3, saturated=True)  # recovered and holding traffic back: grows again
    assert a.limit > low


def test_slots_with_adaptive_limit_retire_and_add_slots():
    async def main():
        clock = FakeClock()
        a = AdaptiveLimit(ceiling=4, floor=1, tolerance=1.3, clock=clock, queue_wait_share=100.0, start=4)
        s = Slots(4, 8, a)
        for _ in range(4):
            await s.acquire(1)
        waiters = [asyncio.create_task(s.acquire(5)) for _ in range(3)]
        await asyncio.sleep(0)
        assert len(s.waiters) == 3 and a.saturated
        a.limit = 2  # as if TPOT had degraded: two of the four slots are retired as they come back
        s.release(0.002, 0.1)
        s.release(0.002, 0.1)
        await asyncio.sleep(0)
        assert s.active == 2 and len(s.waiters) == 3
        s.release(0.002, 0.1)  # at the limit: handed to the oldest waiter
        await asyncio.sleep(0)
        assert s.active == 2 and len(s.waiters) == 2 and waiters[0].done()
        a.limit = 4  # grown back: the next release wakes every waiter that now fits
        s.release(0.002, 0.1)
        await asyncio.gather(*waiters)
        assert s.active == 3 and not s.waiters
    asyncio.run(main())


# --- gateway ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gw(session_dir, cache_dir):
    versions = [{"name": "stable", "model": str(cache_dir / "models" / "default-stable"), "weight": 1}]
    env = {"ALIGNGATE_CACHE_DIR": str(cache_dir), "ALIGNGATE_VERSIONS": json.dumps(versions),
           "ALIGNGATE_ADMIN_KEY": ADMIN, "ALIGNGATE_ALLOW_FAULT_INJECTION": "1",
           "ALIGNGATE_LIMITS__MAX_CONCURRENCY": str(MAX_CONCURRENCY), "ALIGNGATE_LIMITS__MAX_QUEUE": str(MAX_QUEUE),
           "ALIGNGATE_LIMITS__REQUEST_TIMEOUT_S": "60", "ALIGNGATE_LIMITS__MAX_TOKENS_CAP": "480",
           "ALIGNGATE_LIMITS__MAX_PROMPT_TOKENS": "60", "ALIGNGATE_LIMITS__MAX_MESSAGES": "4"}
    proc, url = start_gateway_proc("overload", session_dir, env)
    try:
        yield url
    finally:
        proc.stop()


def fault(url: str, latency_s: float) -> None:
    adm = {"Authorization": f"Bearer {ADMIN}"}
    if latency_s:
        r = httpx.post(url + "/admin/versions/stable/fault", json={"latency_s": latency_s}, headers=adm, timeout=30)
    else:
        r = httpx.delete(url + "/admin/versions/stable/fault", headers=adm, timeout=30)
    assert r.status_code == 200, r.text


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_burst_beyond_queue_gets_503_with_retry_after(gw):
    fault(gw, 2.0)  # every request holds its slot >= 2 s: the burst certainly overlaps
    try:
        def one(_):
            try:
                out = client(gw).chat.completions.create(
                    model="aligngate", messages=[{"role": "user", "content": "1+1="}], max_tokens=2)
                assert out.usage.completion_tokens >= 1
                return 200, None
            except openai.APIStatusError as e:
                return e.status_code, e

        with ThreadPoolExecutor(12) as ex:
            results = list(ex.map(one, range(12)))
    finally:
        fault(gw, 0)
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503}, statuses  # no 5xx other than 503
    assert statuses.count(503) >= 1 and statuses.count(200) >= MAX_CONCURRENCY
    for s, e in results:
        if s == 503:
            err = e.response.json()["error"]
            assert err["code"] == "overloaded" and err["type"] == "service_unavailable" and "stable" in err["message"]
            assert int(e.response.headers["retry-after"]) >= 1
    # the gateway is usable again at once
    assert client(gw).chat.completions.create(model="aligngate", messages=[{"role": "user", "content": "x"}],
                                              max_tokens=1).choices


@pytest.mark.parametrize("body, param, code", [
    ({"max_tokens": 481}, "max_tokens", "invalid_value"),
    ({"max_completion_tokens": 481}, "max_completion_tokens", "invalid_value"),
    ({"messages": [{"role": "user", "content": "hi"}] * 5}, "messages", "invalid_value"),
    ({"messages": [{"role": "user", "content": "a long prompt " * 20}]}, "messages", "prompt_too_long"),
    ({"messages": [{"role": "user", "content": "a long prompt " * 20}], "stream": True}, "messages",
     "prompt_too_long"),
])
def test_request_caps_are_400(gw, body, param, code):
    payload = {"model": "aligngate", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **body}
    r = httpx.post(gw + "/v1/chat/completions", json=payload, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code


def test_timeout_before_first_byte_is_504(gw):
    fault(gw, 5.0)
    try:
        for stream in (False, True):
            r = httpx.post(gw + "/v1/chat/completions", timeout=60, headers={"x-aligngate-timeout": "1"},
                           json={"model": "aligngate", "messages": [{"role": "user", "content": "x"}],
                                 "max_tokens": 2, "stream": stream})
            assert r.status_code == 504, r.text
            err = r.json()["error"]
            assert err["type"] == "timeout_error" and err["code"] == "request_timeout"
    finally:
        fault(gw, 0)
    r = httpx.post(gw + "/v1/chat/completions", headers={"x-aligngate-timeout": "soon"},
                   json={"model": "aligngate", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_header"


def test_timeout_mid_stream_is_an_in_band_error_event(gw):
    """A long stream under shorter and shorter deadlines: each outcome is one of the three documented shapes
    (complete, 504 before the first byte, or 200 + chunks + one error event + [DONE]); the in-band one occurs."""
    seen = {"complete": 0, "504": 0, "in_band": 0}
    body = {"model": "aligngate", "messages": [{"role": "user", "content": "count"}], "max_tokens": 400,
            "n": 8, "stream": True, "ignore_eos": True}
    for timeout in (8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.12):
        with httpx.stream("POST", gw + "/v1/chat/completions", json=body, timeout=120,
                          headers={"x-aligngate-timeout": str(timeout)}) as r:
            if r.status_code == 504:
                assert json.loads(r.read())["error"]["code"] == "request_timeout"
                seen["504"] += 1
                continue
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        errors = [json.loads(e)["error"] for e in events[:-1] if '"error"' in e and e.startswith('{"error"')]
        if errors:
            assert len(errors) == 1 and errors[0]["type"] == "timeout_error" and errors[0]["code"] == "request_timeout"
            assert json.loads(events[-2]) == {"error": errors[0]}  # the last event before [DONE]
            seen["in_band"] += 1
        else:
            seen["complete"] += 1
    assert seen["in_band"] >= 1, seen


def test_client_gone_while_queued_frees_its_place_and_never_runs(gw):
    """A client that gives up while its request waits for a slot is dropped at once (499): it never reaches the
    engine, and the requests ahead of it finish normally."""
    ok0 = metric(gw, "aligngate_requests_total", version="stable", status="200")
    gone0 = metric(gw, "aligngate_errors_total", version="stable", type="client_disconnected")
    fault(gw, 2.0)  # the slots' holders take >= 2 s
    try:
        def hold(_):
            return client(gw).chat.completions.create(
                model="aligngate", messages=[{"role": "user", "content": "1+1="}], max_tokens=2)

        with ThreadPoolExecutor(MAX_CONCURRENCY) as ex:
            holders = [ex.submit(hold, i) for i in range(MAX_CONCURRENCY)]
            deadline = time.monotonic() + 10
            while metric(gw, "aligngate_in_flight", version="stable") < MAX_CONCURRENCY:
                assert time.monotonic() < deadline, "the slots never filled"
                time.sleep(0.05)
            with pytest.raises(httpx.ReadTimeout):  # queued behind the holders; the client leaves after 0.3 s
                httpx.post(gw + "/v1/chat/completions", timeout=0.3,
                           json={"model": "aligngate", "messages": [{"role": "user", "content": "2+2="}],
                                 "max_tokens": 2})
            deadline = time.monotonic() + 1.5  # well before a holder frees its slot
            while metric(gw, "aligngate_errors_total", version="stable", type="client_disconnected") <= gone0:
                assert time.monotonic() < deadline, "the queued request outlived its client"
                time.sleep(0.05)
            for h in holders:
                assert h.result().usage.completion_tokens >= 1
    finally:
        fault(gw, 0)
    assert metric(gw, "aligngate_requests_total", version="stable", status="200") == ok0 + MAX_CONCURRENCY


def test_adaptive_limit_shrinks_by_the_overshoot_at_most_halving():
    """A far overshoot (a burst at 2x capacity) is met in a few intervals, not by x0.9 steps: the limit shrinks by
    tolerated / observed, never by more than half at once, and by at least `decrease` on any slow interval."""
    clock = FakeClock()
    a = AdaptiveLimit(ceiling=64, floor=2, tolerance=1.25, clock=clock, start=64)

    def feed(tpot: float, intervals: int) -> None:
        _feed(a, clock, tpot, intervals)
        a.observe(None, None)  # the interval's update runs on the first observation after it

    feed(0.002, 4)
    assert a.limit == 64
    feed(0.010, 1)  # 5x the baseline, 4x what is tolerated: halved (not quartered)
    assert a.limit == 32
    feed(0.0030, 1)  # 1.2x tolerated: x 1/1.2
    assert a.limit == int(32 / 1.2)
    feed(0.00255, 1)  # 1.02x tolerated: still at least x decrease
    assert a.limit == int(int(32 / 1.2) * a.decrease)
    feed(0.010, 10)
    assert a.limit == 2  # the floor
