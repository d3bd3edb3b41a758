"""The HTTP surface: OpenAI-compatible inference routes, health, readiness, metrics.

`create_app(settings)` builds a FastAPI app whose lifespan starts one engine per version in the background.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.responses import JSONResponse, Response

from serve.admission import auth
from serve.api import completions, errors, openapi_doc, responses
from serve.api.admin import build_admin_router, load_admin_keys
from serve.config import Settings, VersionSpec
from serve.engines.drain import DrainGuard
from serve.rewards.feedback import FeedbackAck, FeedbackRequest, InvalidFeedback, UnknownResponse
from serve.gateway import Gateway
from serve.admission.guard import BodyGuard
from serve.api.inference_route import InferenceRoute
from serve.admission.ratelimit import RateLimiter
from serve.api.schemas import ChatCompletionRequest, CompletionRequest, ErrorResponse

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 429, 499, 502, 503, 504)}
# a completion is JSON, or server-sent events with `"stream": true` (schemathesis: the SSE type was undocumented)
COMPLETION = {**ERRORS, 200: {"description": "the completion (JSON), or its chunks as server-sent events",
                              "content": {"application/json": {}, "text/event-stream": {}}}}


def create_app(settings: Settings, versions: list[VersionSpec]) -> FastAPI:
    gw = Gateway(settings, versions)
    # inference keys (serve/admission/auth.py), per-key limits (serve/admission/ratelimit.py), per-version slots (serve/admission/admission.py)
    auth.check_exposure(settings)
    keys = auth.KeyTable.from_settings(settings)
    keys.check_disjoint(load_admin_keys(settings).values())
    auth_dep = auth.make_dependency(keys)
    limiter = RateLimiter(settings.redis_url, settings.redis_prefix, settings.limits.lease_ttl_s,
                          gw.metrics.registry)
    guards = completions.Guards(limiter, gw.admission)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await limiter.start()
        await gw.start()
        yield
        await gw.stop()
        await limiter.close()

    app = FastAPI(title="aligngate", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible gateway for RLHF-tuned policies: one engine per policy version.")
    app.state.gateway = gw
    errors.install(app)
    openapi_doc.install(app, settings.limits)
    app.include_router(build_admin_router(gw, settings))

    inference = APIRouter(route_class=InferenceRoute)  # the docs from FastAPI, a lean request handler

    @inference.post("/v1/chat/completions", responses=COMPLETION, tags=["inference"])
    async def chat_completions(body: ChatCompletionRequest, request: Request,
                               key: auth.KeyPolicy | None = Depends(auth_dep)):  # noqa: B008
        return await completions.handle(gw, request, body, key, guards)

    @inference.post("/v1/completions", responses=COMPLETION, tags=["inference"])
    async def text_completions(body: CompletionRequest, request: Request,
                               key: auth.KeyPolicy | None = Depends(auth_dep)):  # noqa: B008
        return await completions.handle(gw, request, body, key, guards)

    @inference.post("/v1/responses", responses=COMPLETION, tags=["inference"])
    async def create_response(body: responses.ResponsesRequest, request: Request,
                              key: auth.KeyPolicy | None = Depends(auth_dep)):  # noqa: B008
        """OpenAI's Responses API for text (serve/api/responses.py): the chat path, rendered as a `response` object
        or its event stream."""
        return await responses.handle(gw, request, body, key, guards)

    app.include_router(inference)

    @app.post("/v1/feedback", responses=ERRORS, tags=["inference"], response_model=FeedbackAck,
              dependencies=[Depends(auth_dep)])
    async def feedback(body: FeedbackRequest):
        """A rating of one answer (`response_id` = the completion's `id`), or a preference between two answers to
        the same prompt. Stored with provenance in the format the training module reads as preference data."""
        try:
            return await gw.quality.feedback.add(body)
        except UnknownResponse:
            raise errors.APIError(404, "unknown response id: send the `id` of a recent completion from this "
                                       "gateway (the response log keeps the last 50,000 for 24 h)",
                                  type="not_found_error", param="response_id", code="response_not_found") from None
        except InvalidFeedback as e:
            raise errors.APIError(400, str(e), code="invalid_feedback") from None

    @app.get("/v1/models", tags=["inference"], dependencies=[Depends(auth_dep)],
             responses={401: {"model": ErrorResponse}})
    async def models():
        data = [{"id": settings.public_model, "object": "model", "owned_by": "aligngate", "created": 0,
                 "aligngate": {"kind": "public", "versions": list(gw.engines)}}]
        for name, engine in gw.engines.items():
            spec = gw.specs[name]
            data.append({"id": name, "object": "model", "owned_by": "aligngate", "created": 0,
                         "root": spec.model or spec.url, "parent": settings.public_model,
                         "aligngate": {"kind": "version", "weight": gw.router.weights.get(name, 0.0), "ready": engine.ready}})
        return {"object": "list", "data": data}

    @app.get("/health", tags=["ops"])
    async def health():
        """The process is alive (engines may still be starting: see /ready)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], responses={503: {"description": "some version cannot generate"}})
    async def ready(verbose: bool = False):
        """Ready when a real one-token generation succeeds on every version. `verbose=true` adds, per version, the
        supervisor's view (state, restarts), the in-process engine core's pid and a remote version's backends."""
        def why(name, engine) -> str:
            return gw.engine_down(name) or (repr(engine.start_error) if engine.start_error else "starting")

        async def check(name, engine):
            if not engine.ready:
                return {"ready": False, "error": why(name, engine)}
            try:
                await engine.probe(settings.ready_timeout_s)
                return {"ready": True}
            except Exception as e:  # any failure means not ready; the reason is reported
                if not engine.ready:  # it went down during the probe: the cause (engine died), not the symptom
                    return {"ready": False, "error": why(name, engine)}
                return {"ready": False, "error": f"{type(e).__name__}: {e}"}

        if gw.drain.draining:  # SIGTERM: tell the load balancer to stop sending here (serve/engines/drain.py)
            return JSONResponse({"ready": False, "draining": True, "in_flight": gw.drain.active}, status_code=503,
                                headers={"Retry-After": str(settings.retry_after_s)})
        results = await asyncio.gather(*(check(n, e) for n, e in gw.engines.items()))
        for name, r in zip(gw.engines, results):
            # read after the probes, once: a version is ready only in state `up`, so the summary and the verbose
            # view cannot disagree (an engine that died during the probe is `down`, not ready)
            r["state"] = gw.version_state(name)
            if r["ready"] and r["state"] != "up":  # went down just now
                r["ready"], r["error"] = False, why(name, gw.engines[name])
            if r["state"] == "failed" and (st := gw.starts.get(name)) is not None and st.reason:
                r["error"] = st.reason
        for (name, engine), r in zip(gw.engines.items(), results if verbose else ()):
            r.update({k: v for k, v in (gw.supervisor.status(name) or {}).items() if k not in ("reason", "state")})
            if (st := gw.starts.get(name)) is not None:
                r.update(st.to_dict())
            r.update(engine.ready_details())  # the engine core's pid and value channel; a remote's backends
        versions = dict(zip(gw.engines, results))
        if not verbose:
            for r in results:
                r.pop("state", None)
        ok = all(r["ready"] for r in results)
        headers = None if ok else {"Retry-After": str(settings.retry_after_s)}
        return JSONResponse({"ready": ok, "versions": versions}, status_code=200 if ok else 503, headers=headers)

    @app.get("/metrics", tags=["ops"], response_class=Response,  # Prometheus text, not JSON (schemathesis)
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics():
        for name, engine in gw.engines.items():
            if (n := engine.unfinished()) is not None:
                gw.metrics.engine_unfinished.labels(name).set(n)
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(BodyGuard, max_bytes=settings.limits.max_body_bytes, routes=lambda: app.router.routes)
    # added last = outermost: a draining gateway refuses new work before anything else runs
    app.add_middleware(DrainGuard, drain=gw.drain, retry_after_s=settings.retry_after_s)
    return app
