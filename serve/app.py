"""The HTTP surface: OpenAI-compatible inference routes, health, readiness, metrics.

`create_app(settings)` builds a FastAPI app whose lifespan starts one engine per version in the background.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from serve import completions, errors
from serve.admin import build_admin_router
from serve.config import Settings, VersionSpec
from serve.feedback import FeedbackAck, FeedbackRequest, InvalidFeedback, UnknownResponse
from serve.gateway import Gateway
from serve.guard import BodyGuard
from serve.schemas import ChatCompletionRequest, CompletionRequest, ErrorResponse

ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 499, 502, 503)}


def create_app(settings: Settings, versions: list[VersionSpec]) -> FastAPI:
    gw = Gateway(settings, versions)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await gw.start()
        yield
        await gw.stop()

    app = FastAPI(title="aligngate", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible gateway for RLHF-tuned policies: one engine per policy version.")
    app.state.gateway = gw
    errors.install(app)
    app.include_router(build_admin_router(gw, settings))

    @app.post("/v1/chat/completions", responses=ERRORS, tags=["inference"])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await completions.handle(gw, request, body)

    @app.post("/v1/completions", responses=ERRORS, tags=["inference"])
    async def text_completions(body: CompletionRequest, request: Request):
        return await completions.handle(gw, request, body)

    @app.post("/v1/feedback", responses=ERRORS, tags=["inference"], response_model=FeedbackAck)
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

    @app.get("/v1/models", tags=["inference"])
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
    async def ready():
        """Ready when a real one-token generation succeeds on every version."""
        async def check(engine):
            if not engine.ready:
                return {"ready": False, "error": repr(engine.start_error) if engine.start_error else "starting"}
            try:
                await engine.probe(settings.ready_timeout_s)
                return {"ready": True}
            except Exception as e:  # any failure means not ready; the reason is reported
                return {"ready": False, "error": f"{type(e).__name__}: {e}"}

        results = await asyncio.gather(*(check(e) for e in gw.engines.values()))
        versions = dict(zip(gw.engines, results))
        ok = all(r["ready"] for r in results)
        headers = None if ok else {"Retry-After": str(settings.retry_after_s)}
        return JSONResponse({"ready": ok, "versions": versions}, status_code=200 if ok else 503, headers=headers)

    @app.get("/metrics", tags=["ops"])
    async def metrics():
        for name, engine in gw.engines.items():
            if (n := engine.unfinished()) is not None:
                gw.metrics.engine_unfinished.labels(name).set(n)
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(BodyGuard, max_bytes=settings.limits.max_body_bytes)
    return app
