"""The request path for /v1/chat/completions and /v1/completions: check -> route -> engine -> respond.

Streaming waits for the engine's first step before sending headers, so a request the engine refuses (prompt
too long, version not ready) still gets a proper 4xx/5xx status instead of a 200 with an error event.
A client that goes away cancels the request wherever it waits (queue slot, first token, stream), which aborts the
engine request: one `RequestWatch` per request (serve/api/streaming.py), answered 499.

Admission, in order: request limits (400) -> route (404/503) -> the caller's key limits (429, serve/admission/ratelimit.py)
-> the version's bounded queue (503, serve/admission/admission.py). Both are released when the request ends, however it
ends. `limits.request_timeout_s` counts from arrival (queue wait included): a timeout before the first byte is a
504 in the OpenAI error shape; after it (a stream whose headers are sent) the stream ends with an in-band error
event (`type: timeout_error`) and `[DONE]`, as engine failures mid-stream do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve.rewards import best_of
from serve.api import openai_format as fmt
from serve.rewards import reward as reward_stage
from serve.api import tools
from serve.admission.admission import Admission, Overloaded
from serve.admission.auth import KeyPolicy
from serve.engines.engine import Delta, Engine, EngineBadRequest, EngineError, EngineNotReady, GenerationRequest, Step
from serve.api.errors import APIError
from serve.gateway import Gateway
from serve.logs import get_logger
from serve.admission.ratelimit import RateLimited, RateLimiter, TooLargeForKey
from serve.rewards.reward import Reward, RewardTracker
from serve.rewards.reward_floor import FallbackReport, below_floor
from serve.rollout.router import Route, UnknownModel
from serve.api.schemas import ChatCompletionRequest, CompletionRequest
from serve.api.streaming import EventStream, RequestTimeout, RequestWatch

log = get_logger(__name__)


class Chunker(Protocol):
    """One streamed answer's bytes: `fmt.ChatChunker` and `fmt.CompletionChunker`, or another API's events."""

    def opening(self) -> bytes: ...
    def chunk(self, d: Delta) -> bytes: ...
    def tail(self, prompt_tokens: int, completion_tokens: int, include_usage: bool, fields: dict) -> bytes: ...
    def error(self, message: str, type: str, code: str | None) -> bytes: ...


class Render(Protocol):
    """How another API renders the chat path's answer (serve/api/responses.py): its ids, its body, its stream."""

    endpoint: str  # the `endpoint` label of the request metrics

    def new_id(self) -> str: ...
    def body(self, acc: fmt.Accumulator, rid: str, prompt_tokens: int, completion_tokens: int, extra: dict) -> dict: ...
    def chunker(self, rid: str, extra: dict) -> Chunker: ...


@dataclass
class Guards:
    """What admits a request beyond its own shape: per-key limits and per-version slots (made by the app)."""

    limiter: RateLimiter
    admission: Admission


def _check_limits(gw: Gateway, body: ChatCompletionRequest | CompletionRequest) -> None:
    lim = gw.settings.limits
    if body.n > lim.max_n:
        raise APIError(400, f"n is {body.n}; this gateway allows at most {lim.max_n} choices per request",
                       param="n", code="invalid_value")
    stops = body.stop_list() or []
    if len(stops) > lim.max_stop:
        raise APIError(400, f"{len(stops)} stop sequences given; at most {lim.max_stop} are allowed",
                       param="stop", code="invalid_value")
    max_tokens = body.effective_max_tokens() if isinstance(body, ChatCompletionRequest) else body.max_tokens
    if lim.max_tokens_cap is not None and max_tokens is not None and max_tokens > lim.max_tokens_cap:
        param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
        raise APIError(400, f"{param} is {max_tokens}; this gateway allows at most {lim.max_tokens_cap}",
                       param=param, code="invalid_value")
    if isinstance(body, ChatCompletionRequest):
        if len(body.messages) > lim.max_messages:
            raise APIError(400, f"{len(body.messages)} messages given; at most {lim.max_messages} are allowed",
                           param="messages", code="invalid_value")
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs", code="invalid_value")
        tools.check_request(body)


def _check_prompt_tokens(gw: Gateway, kind: str, prompt_tokens: int) -> None:
    """The prompt cap, checked once the engine has counted the prompt (its own tokenizer, so exact): on the first
    step for in-process engines, before any byte goes out; remote servers report the count with the usage."""
    cap = gw.settings.limits.max_prompt_tokens
    if cap is not None and prompt_tokens > cap:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens; this gateway allows at most {cap}; shorten it",
                       param="messages" if kind == "chat" else "prompt", code="prompt_too_long")


def _reservation(req: GenerationRequest, prompt_text: str, max_model_len: int) -> int:
    """Tokens a request may use, reserved against its key's tpm before the engine has tokenized anything: the
    prompt estimated at 4 bytes a token (plus a few for each chat message's template), plus n x max_tokens (the
    context's room when none is given). Corrected to the actual usage when the request ends."""
    prompt = len(prompt_text.encode()) // 4 + 1 + 4 * len(req.messages or ())
    room = req.max_tokens if req.max_tokens is not None else max(1, max_model_len - prompt)
    return prompt + req.n * room


async def _admit(gw: Gateway, guards: Guards, key: KeyPolicy | None, engine: Engine, cost: int,
                 deadline: float) -> Callable[[int | None], None]:
    """Key limits, then a slot on the version. Returns the release function for the request's end."""
    lease = None
    if key is not None:
        try:
            lease = await guards.limiter.acquire(key, cost)
        except RateLimited as e:
            raise APIError(429, str(e), type="rate_limit_exceeded", code=f"{e.limit}_limit_exceeded",
                           headers={"Retry-After": str(e.retry_after_s)}) from None
        except TooLargeForKey as e:
            raise APIError(400, str(e), param="max_tokens", code="request_too_large") from None
    slots = guards.admission.for_version(engine.name, gw.specs.get(engine.name))
    wait = min(gw.settings.limits.queue_timeout_s, max(0.0, deadline - asyncio.get_running_loop().time()))
    try:
        await slots.acquire(wait)
    except Overloaded as e:
        guards.limiter.release(lease, refund=True)  # refused by the gateway: does not count against the key
        gw.metrics.errors.labels(engine.name, "overloaded").inc()
        retry = str(gw.settings.retry_after_s)
        raise APIError(503, f"version `{engine.name}` is overloaded ({e}); retry after {retry} s",
                       type="service_unavailable", code="overloaded", headers={"Retry-After": retry}) from None
    except BaseException:
        guards.limiter.release(lease, refund=True)
        raise

    def release(used_tokens: int | None, tpot_s: float | None = None, decode_s: float | None = None,
                ttft_s: float | None = None) -> None:
        slots.release(tpot_s, decode_s, ttft_s)
        guards.limiter.release(lease, used_tokens)

    return release


def _timeout_s(gw: Gateway, request: Request) -> float:
    """limits.request_timeout_s, or less when the client sends its own deadline in `x-aligngate-timeout` (seconds;
    a client that will give up anyway should not keep an engine slot busy). It can only shorten the limit."""
    limit = gw.settings.limits.request_timeout_s
    given = request.headers.get("x-aligngate-timeout")
    if given is None:
        return limit
    try:
        t = float(given)
    except ValueError:
        t = -1.0
    if not 0 < t < float("inf"):
        raise APIError(400, f"x-aligngate-timeout must be a positive number of seconds, got {given!r}",
                       param="x-aligngate-timeout", code="invalid_header")
    return min(t, limit)


def _timeout_error(gw: Gateway) -> APIError:
    return APIError(504, "the request did not finish within its timeout (limits.request_timeout_s or "
                         "x-aligngate-timeout); retry with a smaller max_tokens or later", type="timeout_error",
                    code="request_timeout")


def _route(gw: Gateway, model: str, sticky_key: str | None) -> tuple[Route, Engine]:
    try:
        route = gw.router.route(model, sticky_key)
    except UnknownModel:
        names = ", ".join([gw.router.public_model, *gw.engines])
        raise APIError(404, f"the model `{model}` does not exist; use one of: {names}", param="model",
                       code="model_not_found") from None
    engine = gw.engines[route.version]
    if not engine.ready and model == gw.router.public_model:
        stable = gw.engines[gw.router.stable]
        if stable.ready:  # a routed request whose version is down goes to stable rather than failing
            route, engine = Route(stable.name, route.sticky), stable
    if not engine.ready:
        retry = str(gw.settings.retry_after_s)
        raise APIError(503, f"version `{engine.name}` is starting or unavailable; retry after {retry} s",
                       type="service_unavailable", code="engine_not_ready", headers={"Retry-After": retry})
    return route, engine


def _generation_request(body: ChatCompletionRequest | CompletionRequest) -> GenerationRequest:
    common = dict(
        request_id=os.urandom(16).hex(),
        temperature=body.temperature, top_p=body.top_p, n=body.n, stop=body.stop_list(), seed=body.seed,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, user=body.user,
        ignore_eos=body.ignore_eos, min_tokens=body.min_tokens, repetition_penalty=body.repetition_penalty,
    )
    if isinstance(body, ChatCompletionRequest):
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        choice = body.tool_choice
        return GenerationRequest(
            kind="chat", messages=tools.wire_messages(body.messages), max_tokens=body.effective_max_tokens(),
            logprobs=logprobs, stream=body.stream,
            logit_bias=body.logit_bias_ids(),
            response_format=body.response_format.wire() if body.response_format else None,
            tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
            tool_choice=choice.model_dump() if isinstance(choice, tools.NamedToolChoice) else choice,
            parallel_tool_calls=body.parallel_tool_calls, **common)
    return GenerationRequest(kind="completion", prompt=body.prompt, max_tokens=body.max_tokens,
                             logprobs=body.logprobs, echo=body.echo, logit_bias=body.logit_bias_ids(), **common)


@dataclass(eq=False)
class Call:
    """One request's state as it flows through the path (route -> engine -> reward -> monitor)."""

    gw: Gateway
    engine: Engine
    kind: str
    rid: str
    model: str
    n: int
    extra: dict
    t0: float
    prompt_text: str
    client_logprobs: bool
    tracker: RewardTracker
    include_usage: bool = False
    ttft: float | None = None
    status: str = "200"
    watch: RequestWatch | None = None  # the request's client-disconnect and deadline watch
    release: Callable[..., None] | None = None  # admission slot and key lease
    admitted: float | None = None  # perf_counter when the slot was granted
    used_tokens: int | None = None  # prompt + completion, when known: corrects the tpm reservation
    completion_tokens: int = 0
    wait_audit: bool = False
    audits: list | None = None  # per choice: the audit model's result (when the client waited for it)
    render: Render | None = None  # another API's shape (None: chat or legacy completions)

    def fail(self, status: str, kind: str) -> None:
        """The request ends as `status`; `kind` is counted in aligngate_errors_total."""
        self.status = status
        self.gw.metrics.errors.labels(self.engine.name, kind).inc()

    @property
    def endpoint(self) -> str:
        if self.render is not None:
            return self.render.endpoint
        return "chat" if self.kind == "chat" else "completions"

    def done(self) -> None:
        """Metrics and stats of a request that has ended, however it ended (exactly once per request)."""
        name = self.engine.name
        e2e = time.perf_counter() - self.t0
        if self.release is not None:
            decode = e2e - self.ttft if self.status == "200" and self.ttft is not None else None
            tpot = decode / (self.completion_tokens - 1) if decode is not None and self.completion_tokens > 1 else None
            # the engine's own TTFT: from the slot to the first step (the gateway's queue wait left out)
            engine_ttft = self.ttft - (self.admitted - self.t0) if decode is not None and self.admitted else None
            self.release(self.used_tokens, tpot, decode, engine_ttft)
        self.gw.metrics.version(name).in_flight.dec()
        self.gw.metrics.requests.labels(name, self.endpoint, self.status).inc()
        if self.status == "200":
            self.gw.metrics.version(name).e2e.observe(e2e)
        self.gw.stats.record(name, self.ttft, e2e if self.status == "200" else None, self.status)

    async def rewards(self, prompt_ids: list[int] | None) -> list[Reward | None]:
        """The reward stage, then the monitor stage, for a finished answer."""
        gw = self.gw
        rewards = await reward_stage.rewards(self.engine, self.tracker, prompt_ids, gw.settings.reward_position,
                                             self.client_logprobs, gw.quality.cache, self.prompt_text)
        for r in rewards:
            if r is not None:
                gw.stats.record_reward(self.engine.name, r.score)  # the canary gate's reward input
        # A version without a value head has no in-pass reward: the audit model (when configured) scores every one
        # of its answers, waited for after the last token, and that is the reward (source "audit_model"); with no
        # audit model the reward stays null - never a made-up zero.
        by_audit = not self.engine.has_value_head and gw.quality.audit is not None
        if self.wait_audit or by_audit:
            self.audits = await _audit_results(self._observe(rewards, wait=True), gw.settings.audit_wait_timeout_s)
            if by_audit:
                rewards = [Reward(a["score"], "audit_model", a["model_version"]) if a else None for a in self.audits]
                for r in rewards:
                    if r is not None:
                        gw.stats.record_reward(self.engine.name, r.score)
        else:  # the monitor, response log and audit sampling run just after the answer's last bytes are written
            asyncio.get_running_loop().call_soon(self._observe, rewards)
        return rewards

    def _observe(self, rewards: list[Reward | None], wait: bool = False) -> list:
        """The monitor stage per choice (serve/monitor/quality.py): synchronous, never raises; audit futures when waited."""
        futures = []
        for i, r in enumerate(rewards):
            c = self.tracker.choices[i]
            rid = self.rid if i == 0 else f"{self.rid}-{i}"
            futures.append(self.gw.quality.observe(self.engine.name, rid, self.prompt_text,
                                                   self.tracker.response_text(i), r.score if r else None,
                                                   self.tracker.mean_entropy(i), c.entropy_n or None,
                                                   wait_audit=wait))
        return futures


async def _audit_results(futures: list, timeout_s: float) -> list[dict | None]:
    """The audit scores a client waited for; None per choice when unaudited, dropped or too slow."""
    async def one(f):
        if f is None:
            return None
        try:
            r = await asyncio.wait_for(asyncio.shield(f), timeout_s)
        except Exception:  # timeout or a failed batch: the answer is served without its audit score
            return None
        return {"score": r.reward, "raw_score": r.score, "model_version": r.model_version}
    return list(await asyncio.gather(*(one(f) for f in futures)))


def _prompt_text(body: ChatCompletionRequest | CompletionRequest) -> str:
    if isinstance(body, ChatCompletionRequest):
        return "\n".join(f"{m.role}: {m.text()}" for m in body.messages)
    return body.prompt


def _reward_extra(call: Call, rewards: list[Reward | None]) -> dict:
    out: dict = {"reward": rewards[0].as_dict() if rewards and rewards[0] else None}
    if len(rewards) > 1:
        out["rewards"] = [r.as_dict() if r else None for r in rewards]
    if call.wait_audit:
        audits = call.audits or [None] * len(rewards)
        out["audit"] = audits[0] if audits else None
        if len(audits) > 1:
            out["audits"] = audits
    if call.tracker.keep_values:
        out["traces"] = call.tracker.traces()
    return out


async def handle(gw: Gateway, request: Request, body: ChatCompletionRequest | CompletionRequest,
                 key: KeyPolicy | None = None, guards: Guards | None = None, render: Render | None = None) -> Response:
    """`render`: another API answered by this same path (routing, admission, rewards, monitor), in its own shape."""
    t0 = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + _timeout_s(gw, request)
    _check_limits(gw, body)
    sticky = body.user or request.headers.get("x-session-id")
    route, engine = _route(gw, body.model, sticky)
    best_k = _best_of_k(gw, body, engine)  # None: a plain request; else the reward-guided path (k candidates)
    req = _generation_request(body)
    if req.max_tokens is None:
        req.max_tokens = gw.settings.limits.max_tokens_cap
    # per-token values ride with the tokens only when the reward is read at the last position (or asked for)
    req.with_values = gw.settings.reward_position == "last" or body.return_values
    rid = render.new_id() if render is not None else fmt.new_id(req.kind)
    routed_by = "explicit" if body.model != gw.router.public_model else ("sticky" if route.sticky else "weight")
    client_logprobs = req.logprobs is not None
    keep_tokens = reward_stage.needs_finalize(engine, gw.settings.reward_position, client_logprobs)
    call = Call(gw, engine, req.kind, rid, body.model, body.n, {"aligngate": {"version": engine.name,
                "routed_by": routed_by}}, t0, _prompt_text(body), client_logprobs,
                RewardTracker(body.n, keep_tokens, body.return_values), wait_audit=body.wait_for_audit, render=render)
    headers = {"x-aligngate-version": engine.name, "x-request-id": rid}
    # from here the client's disconnect cancels this task wherever it waits (serve/api/streaming.py)
    watch = RequestWatch(request.receive)
    if guards is not None:
        spec = gw.specs.get(engine.name)
        ctx = engine.max_model_len or (spec.max_model_len if spec else None) or 512
        cost = _reservation(req, call.prompt_text, ctx) if key is not None else 0
        try:
            call.release = await _admit(gw, guards, key, engine, cost, deadline)
            call.admitted = time.perf_counter()
        except asyncio.CancelledError:
            watch.stop()
            if watch.caught() is None:
                raise
            gw.metrics.errors.labels(engine.name, "client_disconnected").inc()
            return Response(status_code=499)  # gone while queued: nobody is left to answer
        except BaseException:
            watch.stop()
            raise
    call.watch = watch
    watch.deadline_at(deadline)  # admission has its own bound (queue_timeout_s, 503); from here, 504 at the deadline
    gw.shadow.maybe_mirror(gw, engine.name, req, call.prompt_text)  # background copies, never awaited

    vm = gw.metrics.version(engine.name)
    vm.in_flight.inc()
    agen = engine.generate(req) if best_k is None else None
    handed_over = False
    try:
        if best_k is not None:
            return await _guided(call, req, body, headers, best_k, guards)
        try:
            first: Step = await agen.__anext__()
        except StopAsyncIteration:
            first = Step([], 0, 0, True)
        _check_prompt_tokens(gw, call.kind, first.prompt_tokens)
        call.ttft = time.perf_counter() - t0
        vm.ttft.observe(call.ttft)
        if body.stream:
            call.include_usage = bool(body.stream_options and body.stream_options.include_usage)
            handed_over = True  # the stream now owns agen and the call's bookkeeping
            return EventStream(_stream(call, agen, first), watch, {**headers, "Cache-Control": "no-cache"})
        acc, step = await _collect(call, agen, first)
        call.used_tokens = step.prompt_tokens + step.completion_tokens
        call.completion_tokens = step.completion_tokens
        _check_prompt_tokens(gw, call.kind, step.prompt_tokens)
        rewards = await call.rewards(step.prompt_token_ids)
        extra = {"aligngate": {**call.extra["aligngate"], **_reward_extra(call, rewards)}}
        if render is not None:
            payload = render.body(acc, rid, step.prompt_tokens, step.completion_tokens, extra)
        elif call.kind == "chat":
            payload = acc.chat_body(rid, body.model, step.prompt_tokens, step.completion_tokens, extra)
        else:
            prefix = body.prompt if body.echo else ""
            payload = acc.completion_body(rid, body.model, step.prompt_tokens, step.completion_tokens, extra, prefix)
        vm.tokens.inc(step.completion_tokens)
        return JSONResponse(payload, headers=headers)
    except APIError as e:  # a limit checked once the engine counted the prompt
        call.status = str(e.status)
        raise
    except asyncio.CancelledError:
        why = watch.caught()
        if why is None:
            raise
        if why == "deadline":
            call.fail("504", "timeout")
            raise _timeout_error(gw) from None
        call.fail("499", "client_disconnected")
        return Response(status_code=499)
    except EngineBadRequest as e:
        call.status = "400"
        raise APIError(400, e.message, param=e.param, code=e.code or "invalid_value") from None
    except EngineNotReady as e:
        call.fail("503", "engine_not_ready")
        retry = str(gw.settings.retry_after_s)
        raise APIError(503, f"{e}; retry after {retry} s", type="service_unavailable", code="engine_not_ready",
                       headers={"Retry-After": retry}) from None
    except EngineError as e:
        call.fail("502", e.kind)
        log.warning("engine_error", version=engine.name, error=str(e))
        raise APIError(502, f"the policy engine failed: {e}", type="server_error", code=e.kind) from None
    finally:
        if not handed_over:
            watch.stop()
            if agen is not None:
                await agen.aclose()
            call.done()


async def _collect(call: Call, agen: AsyncIterator[Step], first: Step):
    acc = fmt.Accumulator(call.n)
    track = call.tracker.add
    step = first
    for d in first.deltas:
        acc.add(d)
        track(d)
    async for step in agen:
        for d in step.deltas:
            acc.add(d)
            track(d)
    return acc, step


async def _timed_out(call: Call, chunker: Chunker) -> AsyncIterator[bytes]:
    """Headers are sent: the timeout is reported in-band, like an engine failure."""
    call.fail("504", "timeout")
    yield chunker.error("the request did not finish within its timeout (limits.request_timeout_s or "
                        "x-aligngate-timeout); the answer above is incomplete", "timeout_error", "request_timeout")


async def _stream(call: Call, agen: AsyncIterator[Step], first: Step) -> AsyncIterator[bytes]:
    gw, version = call.gw, call.engine.name
    vm = gw.metrics.version(version)
    if call.render is not None:
        chunker: Chunker = call.render.chunker(call.rid, call.extra)
    else:
        chunker = (fmt.ChatChunker if call.kind == "chat" else fmt.CompletionChunker)(call.rid, call.model, call.n,
                                                                                     call.extra)
    track = call.tracker.add
    step = first
    last = time.perf_counter()
    try:
        for d in first.deltas:
            track(d)
        # one write per step: a step may carry several events (serve/engines/engine_remote.py)
        if out := chunker.opening() + b"".join([chunker.chunk(d) for d in first.deltas]):
            yield out
        while True:  # the request's watch bounds every step: a deadline or a client gone cancels this task
            try:
                step = await agen.__anext__()
            except StopAsyncIteration:
                break
            now = time.perf_counter()
            vm.itl.observe(now - last)
            last = now
            for d in step.deltas:
                track(d)
            if step.deltas:
                yield b"".join([chunker.chunk(d) for d in step.deltas])
        vm.tokens.inc(step.completion_tokens)
        # the reward rides in one extra chunk after the last token: it never delays the first token; usage, reward
        # and [DONE] go out in one write
        rewards = await call.rewards(step.prompt_token_ids)
        yield chunker.tail(step.prompt_tokens, step.completion_tokens, call.include_usage,
                           {"aligngate": {"version": version, **_reward_extra(call, rewards)}})
    except asyncio.CancelledError:
        why = call.watch.caught()
        if why == "deadline":
            async for chunk in _timed_out(call, chunker):
                yield chunk
            return
        call.fail("499", "client_disconnected")
        if why is None:
            raise
    except RequestTimeout:  # the deadline passed while a slow client held up a write (serve/api/streaming.py)
        async for chunk in _timed_out(call, chunker):
            yield chunk
    except EngineError as e:  # headers are sent: report in-band, then end the stream cleanly
        call.fail("502", e.kind)
        yield chunker.error(f"the policy engine failed mid-stream: {e}", "server_error", e.kind)
    except GeneratorExit:
        call.fail("499", "client_disconnected")
        raise
    finally:
        if call.used_tokens is None and step.prompt_tokens:
            call.used_tokens = step.prompt_tokens + step.completion_tokens
        call.completion_tokens = step.completion_tokens
        await agen.aclose()
        call.done()


# --- reward-guided serving (issue 20): best-of-n by the in-pass value, the reward floor -------------------------
def _best_of_k(gw: Gateway, body: ChatCompletionRequest | CompletionRequest, engine: Engine) -> int | None:
    """The candidates asked for (the request's `best_of`, else the version's default), checked; None when the
    request takes the plain path (no best_of, and no reward floor that applies to it)."""
    spec = gw.specs.get(engine.name)
    k = body.best_of
    if k is None:
        if body.n > 1 or spec is None or not engine.has_value_head:
            return None
        if spec.best_of > 1:
            return spec.best_of
        # a floor needs the whole answer before the first byte: non-stream requests only
        return 1 if spec.reward_floor is not None and not body.stream else None
    if k < 1:
        raise APIError(400, f"best_of is {k}; send an integer k >= 1 (the number of candidates to choose from)",
                       param="best_of", code="invalid_value")
    kmax = spec.best_of_max if spec is not None else 8
    if k > kmax:
        raise APIError(400, f"best_of is {k}; version `{engine.name}` allows at most {kmax} (its best_of_max); "
                            f"send best_of <= {kmax}", param="best_of", code="invalid_value")
    if body.n > 1:
        raise APIError(400, f"best_of returns one answer, chosen by reward, so it cannot be combined with n = {body.n}; "
                            "send n = 1 (or leave n out) with best_of, or n choices without best_of",
                       param="best_of", code="invalid_value")
    if not engine.has_value_head:
        raise APIError(400, f"version `{engine.name}` has no value head, so there is no in-pass reward to choose by; "
                            "leave best_of out or send the request to a version with a value head",
                       param="best_of", code="invalid_value")
    return k


async def _score(call: Call, engine: Engine, c: best_of.Candidate) -> Reward | None:
    gw = call.gw
    return (await reward_stage.rewards(engine, c.tracker, c.step.prompt_token_ids, gw.settings.reward_position,
                                       call.client_logprobs, gw.quality.cache, call.prompt_text))[0]


def _cross_check(call: Call, text: str, score: float, k: int) -> None:
    """A sampled share of the best-of choices goes to the audit model; the value-minus-audit gap (both on 0-1)
    feeds the over-optimisation alarm (serve/rewards/best_of.py AuditCrossCheck). Off the request path."""
    gw, version = call.gw, call.engine.name
    spec, audit = gw.specs.get(version), gw.quality.audit
    if k < 2 or audit is None or spec is None or random.random() >= spec.best_of_audit_fraction:
        return
    value01 = gw.quality.monitor.to01(version, score)  # the monitor's own reward scale
    fut = audit.submit(call.prompt_text, text, version, f"{call.rid}-bestof")
    if fut is None:  # the audit queue is full: this choice goes unaudited
        return

    def done(f: asyncio.Future) -> None:
        if not f.cancelled() and f.exception() is None:
            gw.best_of_audit.record(version, value01, float(f.result().reward), spec.best_of_audit_gap_max)
    fut.add_done_callback(done)


async def _floor_score(call: Call, text: str, reward: Reward | None, source: str) -> float | None:
    """The score the floor is compared with: the in-pass value, or the audit model's 0-1 score of the answer
    (None when there is no audit model or it did not answer in time: the floor is then not applied)."""
    if source == "value":
        return reward.score if reward is not None else None
    audit = call.gw.quality.audit
    if audit is None:
        return None
    fut = audit.submit(call.prompt_text, text, call.engine.name, f"{call.rid}-floor")
    (res,) = await _audit_results([fut], call.gw.settings.audit_wait_timeout_s)
    return res["score"] if res else None


async def _fallback(call: Call, req, report: FallbackReport, budget_s: float):
    """The refused answer's request, answered again on the fallback version within the budget (or None)."""
    gw = call.gw
    target = gw.engines.get(report.to_version)
    if target is None or not target.ready:
        report.reason = f"fallback version `{report.to_version}` is not serving"
        return None, None
    if target is call.engine:
        report.reason = "the fallback version is this version"
        return None, None
    fb_req = dataclasses.replace(req, request_id=f"{req.request_id}-fallback", n=1)
    try:
        (fb,) = await asyncio.wait_for(best_of.sample(target, fb_req, 1, call.tracker.keep_tokens), budget_s)
    except TimeoutError:
        report.reason = f"no fallback answer within fallback_budget_s ({budget_s:g} s)"
        return None, None
    except (EngineError, EngineBadRequest, EngineNotReady) as e:
        report.reason = f"the fallback version failed: {e}"
        return None, None
    report.answered = True
    return fb, await _score(call, target, fb)


async def _guided(call: Call, req: GenerationRequest, body: ChatCompletionRequest | CompletionRequest,
                  headers: dict, k_asked: int, guards: Guards | None) -> Response:
    """k candidates (fewer under load), the highest reward chosen, the floor checked, then one answer sent.

    Streaming: the choice needs every candidate whole, so nothing is sent until it is made; then the chosen answer
    goes out at once (opening, its chunks, the tail). The client's time to first token is therefore the time of the
    choice, and that is what aligngate_ttft_seconds records for these requests (never one candidate streamed and
    another returned). usage.completion_tokens counts every candidate's tokens (and a fallback answer's): that is
    what the engine generated; usage.prompt_tokens counts the prompt once (prefix caching computes it once)."""
    gw, engine = call.gw, call.engine
    spec = gw.specs[engine.name]
    k = k_asked
    if guards is not None and k > 1 and spec.best_of_adaptive:
        slots = guards.admission.for_version(engine.name, spec)
        k = best_of.effective_k(k, slots.active, len(slots.waiters), slots.limit, slots.max_limit)
    gw.best_of_metrics.record(engine.name, k_asked, k)
    cands = await best_of.sample(engine, req, k, call.tracker.keep_tokens, body.return_values)
    firsts = [c.first_step_s for c in cands if c.first_step_s is not None]
    # the engine's first step: what admission's adaptive limit measures (the client's TTFT is recorded below)
    call.ttft = (min(firsts) if firsts else time.perf_counter()) - call.t0
    prompt_tokens = cands[0].step.prompt_tokens
    _check_prompt_tokens(gw, call.kind, prompt_tokens)
    # together: with reward_position eos each is one more engine step, and the engine batches them
    rewards = list(await asyncio.gather(*(_score(call, engine, c) for c in cands)))
    scores = [r.score if r is not None else None for r in rewards]
    idx = best_of.choose(scores, [c.completion_tokens for c in cands], spec.best_of_rule, spec.best_of_length_ratio)
    chosen, reward = cands[idx], rewards[idx]
    generated = sum(c.completion_tokens for c in cands)
    # the monitor, the gate's reward input and the audit see the chosen answer: the one this version would show
    call.tracker = chosen.tracker
    call.completion_tokens = chosen.completion_tokens
    if reward is not None:
        gw.stats.record_reward(engine.name, reward.score)
        _cross_check(call, chosen.text(), reward.score, k)
    if call.wait_audit:
        call.audits = await _audit_results(call._observe([reward], wait=True), gw.settings.audit_wait_timeout_s)
    else:
        asyncio.get_running_loop().call_soon(call._observe, [reward])

    answer, answer_reward, ag = chosen, reward, dict(call.extra["aligngate"])
    if spec.reward_floor is not None:
        checked = await _floor_score(call, chosen.text(), reward, spec.reward_floor_source)
        hit = below_floor(checked, spec.reward_floor)
        outcome = "fallback"
        if hit:
            report = FallbackReport(engine.name, spec.fallback_version or gw.router.stable, spec.reward_floor,
                                    checked, False, spec.reward_floor_source)
            fb, fb_reward = await _fallback(call, req, report, spec.fallback_budget_s)
            if fb is not None:
                answer, answer_reward = fb, fb_reward
                generated += fb.completion_tokens
                ag["version"] = headers["x-aligngate-version"] = report.to_version
            else:
                outcome = "kept"
            ag["fallback"] = report.as_dict()
        gw.floor_hits.record(engine.name, hit, spec.fallback_share_max, outcome)
    call.used_tokens = prompt_tokens + generated
    if body.best_of is not None or k_asked > 1:
        ag["best_of"] = {"k": k, "requested": k_asked, "chosen": idx, "scores": scores, "rule": spec.best_of_rule,
                         "completion_tokens": [c.completion_tokens for c in cands]}
    ag["reward"] = answer_reward.as_dict() if answer_reward is not None else None
    if call.wait_audit:
        ag["audit"] = (call.audits or [None])[0]
    if body.return_values:
        ag["traces"] = answer.tracker.traces()
    extra = {"aligngate": ag}
    gw.metrics.version(engine.name).tokens.inc(generated)

    if body.stream:
        call.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if call.render is not None:
            chunker: Chunker = call.render.chunker(call.rid, {"aligngate": {k_: v for k_, v in ag.items()
                                                                           if k_ in ("version", "routed_by")}})
        else:
            chunker = (fmt.ChatChunker if call.kind == "chat" else fmt.CompletionChunker)(
                call.rid, call.model, 1, {"aligngate": {"version": ag["version"], "routed_by": ag["routed_by"]}})
        data = (chunker.opening() + b"".join([chunker.chunk(d) for d in answer.deltas])
                + chunker.tail(prompt_tokens, generated, call.include_usage, extra))
        gw.metrics.version(engine.name).ttft.observe(time.perf_counter() - call.t0)  # honest: after the choice

        async def once() -> AsyncIterator[bytes]:
            yield data
        return EventStream(once(), call.watch, {**headers, "Cache-Control": "no-cache"})
    gw.metrics.version(engine.name).ttft.observe(call.ttft)
    acc = fmt.Accumulator(1)
    for d in answer.deltas:
        acc.add(d)
    if call.render is not None:
        payload = call.render.body(acc, call.rid, prompt_tokens, generated, extra)
    elif call.kind == "chat":
        payload = acc.chat_body(call.rid, body.model, prompt_tokens, generated, extra)
    else:
        prefix = body.prompt if body.echo else ""
        payload = acc.completion_body(call.rid, body.model, prompt_tokens, generated, extra, prefix)
    return JSONResponse(payload, headers=headers)
