"""The request path for /v1/chat/completions and /v1/completions: check -> route -> engine -> respond.

Streaming waits for the engine's first step before sending headers, so a request the engine refuses (prompt
too long, version not ready) still gets a proper 4xx/5xx status instead of a 200 with an error event.
A client that goes away cancels the engine request: for streams Starlette cancels the body iterator, for
non-streamed answers `_until_disconnect` races the generation against `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from serve import openai_format as fmt
from serve import reward as reward_stage
from serve.engine import Engine, EngineBadRequest, EngineError, EngineNotReady, GenerationRequest, Step
from serve.errors import APIError, error_sse
from serve.gateway import Gateway
from serve.logs import get_logger
from serve.reward import Reward, RewardTracker
from serve.router import Route, UnknownModel
from serve.schemas import ChatCompletionRequest, CompletionRequest

log = get_logger(__name__)


class ClientGone(Exception):
    pass


async def _until_disconnect(request: Request, awaitable):
    """Run `awaitable`; if the client disconnects first, cancel it (which aborts the engine request)."""
    task = asyncio.ensure_future(awaitable)

    async def watch():
        while True:
            if (await request.receive())["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:
        pass
    raise ClientGone()


def _check_limits(gw: Gateway, body: ChatCompletionRequest | CompletionRequest) -> None:
    lim = gw.settings.limits
    if body.n > lim.max_n:
        raise APIError(400, f"n is {body.n}; this gateway allows at most {lim.max_n} choices per request",
                       param="n", code="invalid_value")
    stops = body.stop_list() or []
    if len(stops) > lim.max_stop:
        raise APIError(400, f"{len(stops)} stop sequences given; at most {lim.max_stop} are allowed",
                       param="stop", code="invalid_value")
    if isinstance(body, ChatCompletionRequest):
        if len(body.messages) > lim.max_messages:
            raise APIError(400, f"{len(body.messages)} messages given; at most {lim.max_messages} are allowed",
                           param="messages", code="invalid_value")
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs", code="invalid_value")


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
        request_id=uuid.uuid4().hex,
        temperature=body.temperature, top_p=body.top_p, n=body.n, stop=body.stop_list(), seed=body.seed,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, user=body.user,
        ignore_eos=body.ignore_eos, min_tokens=body.min_tokens, repetition_penalty=body.repetition_penalty,
    )
    if isinstance(body, ChatCompletionRequest):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        return GenerationRequest(kind="chat", messages=messages, max_tokens=body.effective_max_tokens(),
                                 logprobs=logprobs, **common)
    return GenerationRequest(kind="completion", prompt=body.prompt, max_tokens=body.max_tokens,
                             logprobs=body.logprobs, echo=body.echo, **common)


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

    @property
    def endpoint(self) -> str:
        return "chat" if self.kind == "chat" else "completions"

    def done(self) -> None:
        """Metrics and stats of a request that has ended, however it ended (exactly once per request)."""
        name = self.engine.name
        self.gw.metrics.version(name).in_flight.dec()
        self.gw.metrics.requests.labels(name, self.endpoint, self.status).inc()
        e2e = time.perf_counter() - self.t0
        if self.status == "200":
            self.gw.metrics.version(name).e2e.observe(e2e)
        self.gw.stats.record(name, self.ttft, e2e if self.status == "200" else None, self.status)

    async def rewards(self, prompt_ids: list[int] | None) -> list[Reward | None]:
        """The reward stage, then the monitor stage, for a finished answer."""
        gw = self.gw
        rewards = await reward_stage.rewards(self.engine, self.tracker, prompt_ids, gw.settings.reward_position,
                                             self.client_logprobs, gw.quality.cache, self.prompt_text)
        for i, r in enumerate(rewards):
            c = self.tracker.choices[i]
            rid = self.rid if i == 0 else f"{self.rid}-{i}"
            gw.quality.observe(self.engine.name, rid, self.prompt_text, self.tracker.response_text(i),
                               r.score if r else None, self.tracker.mean_entropy(i), c.entropy_n or None)
            if r is not None:
                gw.stats.record_reward(self.engine.name, r.score)  # the canary gate's reward input
        return rewards


def _prompt_text(body: ChatCompletionRequest | CompletionRequest) -> str:
    if isinstance(body, ChatCompletionRequest):
        return "\n".join(f"{m.role}: {m.text()}" for m in body.messages)
    return body.prompt


def _reward_extra(call: Call, rewards: list[Reward | None]) -> dict:
    out: dict = {"reward": rewards[0].as_dict() if rewards and rewards[0] else None}
    if len(rewards) > 1:
        out["rewards"] = [r.as_dict() if r else None for r in rewards]
    if call.tracker.keep_values:
        out["traces"] = call.tracker.traces()
    return out


async def handle(gw: Gateway, request: Request, body: ChatCompletionRequest | CompletionRequest) -> Response:
    t0 = time.perf_counter()
    _check_limits(gw, body)
    sticky = body.user or request.headers.get("x-session-id")
    route, engine = _route(gw, body.model, sticky)
    req = _generation_request(body)
    # per-token values ride with the tokens only when the reward is read at the last position (or asked for)
    req.with_values = gw.settings.reward_position == "last" or body.return_values
    rid = fmt.new_id(req.kind)
    routed_by = "explicit" if body.model != gw.router.public_model else ("sticky" if route.sticky else "weight")
    client_logprobs = req.logprobs is not None
    keep_tokens = reward_stage.needs_finalize(engine, gw.settings.reward_position, client_logprobs)
    call = Call(gw, engine, req.kind, rid, body.model, body.n, {"aligngate": {"version": engine.name,
                "routed_by": routed_by}}, t0, _prompt_text(body), client_logprobs,
                RewardTracker(body.n, keep_tokens, body.return_values))
    headers = {"x-aligngate-version": engine.name, "x-request-id": rid}
    gw.shadow.maybe_mirror(gw, engine.name, req, call.prompt_text)  # background copies, never awaited

    vm = gw.metrics.version(engine.name)
    vm.in_flight.inc()
    agen = engine.generate(req)
    handed_over = False
    try:
        try:
            first: Step = await _until_disconnect(request, agen.__anext__())
        except StopAsyncIteration:
            first = Step([], 0, 0, True)
        call.ttft = time.perf_counter() - t0
        vm.ttft.observe(call.ttft)
        if body.stream:
            call.include_usage = bool(body.stream_options and body.stream_options.include_usage)
            handed_over = True  # the stream now owns agen and the call's bookkeeping
            return StreamingResponse(_stream(call, agen, first), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        acc, step = await _until_disconnect(request, _collect(call, agen, first))
        rewards = await call.rewards(step.prompt_token_ids)
        extra = {"aligngate": {**call.extra["aligngate"], **_reward_extra(call, rewards)}}
        if call.kind == "chat":
            payload = acc.chat_body(rid, body.model, step.prompt_tokens, step.completion_tokens, extra)
        else:
            prefix = body.prompt if body.echo else ""
            payload = acc.completion_body(rid, body.model, step.prompt_tokens, step.completion_tokens, extra, prefix)
        vm.tokens.inc(step.completion_tokens)
        return JSONResponse(payload, headers=headers)
    except ClientGone:
        call.status = "499"
        gw.metrics.errors.labels(engine.name, "client_disconnected").inc()
        return Response(status_code=499)
    except EngineBadRequest as e:
        call.status = "400"
        raise APIError(400, e.message, param=e.param, code=e.code or "invalid_value") from None
    except EngineNotReady as e:
        call.status = "503"
        gw.metrics.errors.labels(engine.name, "engine_not_ready").inc()
        retry = str(gw.settings.retry_after_s)
        raise APIError(503, f"{e}; retry after {retry} s", type="service_unavailable", code="engine_not_ready",
                       headers={"Retry-After": retry}) from None
    except EngineError as e:
        call.status = "502"
        gw.metrics.errors.labels(engine.name, e.kind).inc()
        log.warning("engine_error", version=engine.name, error=str(e))
        raise APIError(502, f"the policy engine failed: {e}", type="server_error", code=e.kind) from None
    finally:
        if not handed_over:
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


async def _stream(call: Call, agen: AsyncIterator[Step], first: Step) -> AsyncIterator[bytes]:
    gw, version = call.gw, call.engine.name
    vm = gw.metrics.version(version)
    chunker = (fmt.ChatChunker if call.kind == "chat" else fmt.CompletionChunker)(call.rid, call.model, call.n,
                                                                                 call.extra)
    track = call.tracker.add
    step = first
    last = time.perf_counter()
    try:
        for d in first.deltas:
            track(d)
            yield chunker.chunk(d)
        async for step in agen:
            now = time.perf_counter()
            vm.itl.observe(now - last)
            last = now
            for d in step.deltas:
                track(d)
                yield chunker.chunk(d)
        if call.include_usage:
            yield chunker.usage_chunk(step.prompt_tokens, step.completion_tokens)
        vm.tokens.inc(step.completion_tokens)
        # the reward rides in one extra chunk after the last token: it never delays the first token
        rewards = await call.rewards(step.prompt_token_ids)
        yield chunker.extra_chunk({"aligngate": {"version": version, **_reward_extra(call, rewards)}})
        yield fmt.DONE
    except EngineError as e:  # headers are sent: report in-band, then end the stream cleanly
        call.status = "502"
        gw.metrics.errors.labels(version, e.kind).inc()
        yield error_sse(f"the policy engine failed mid-stream: {e}", "server_error", e.kind)
        yield fmt.DONE
    except (asyncio.CancelledError, GeneratorExit):
        call.status = "499"
        gw.metrics.errors.labels(version, "client_disconnected").inc()
        raise
    finally:
        await agen.aclose()
        call.done()
