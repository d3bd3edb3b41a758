"""The admin API under /admin/: versions (register, list, drain and unload), canary rollouts (start, promote,
rollback, pause, resume, set-weight), status, audit log. Separate from inference, with its own keys.

Auth: `Authorization: Bearer <admin key>` (or `x-admin-key: <key>`). Keys come from `ALIGNGATE_ADMIN_KEY`
(key id `admin`) and `ALIGNGATE_ADMIN_KEYS` ({id: key}); with neither set, a random key is generated once into
`<cache_dir>/admin_key` (mode 0600, key id `local`), which `aligngate canary ...` on the same host reads.
Every action is appended to the audit log with the key id, time, what, and the `reason` given.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve.monitor.alarms import InjectedAlarms
from serve.rollout.canary import ControlError
from serve.checkpoints import servable_dir
from serve.config import Settings, VersionSpec
from serve.api.errors import APIError
from serve.engines.faults import clear_fault, set_fault
from serve.logs import get_logger
from serve.api.schemas import ErrorResponse, Int
from serve.rollout.store import StoreUnavailable, audit_entry

log = get_logger(__name__)

LOCAL_KEY_FILE = "admin_key"


def local_key_path(settings: Settings) -> Path:
    return Path(settings.cache_dir) / LOCAL_KEY_FILE


def load_admin_keys(settings: Settings) -> dict[str, str]:
    """{key id: key}. Generates the local key file when no key is configured."""
    keys = dict(settings.admin_keys)
    if settings.admin_key:
        keys["admin"] = settings.admin_key
    if keys:
        return keys
    path = local_key_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        log.info("admin_key_generated", path=str(path))
    except FileExistsError:
        pass
    return {"local": path.read_text().strip()}


# --- request bodies ----------------------------------------------------------------------------------------
class _Strict(BaseModel):
    """The documented JSON types only, as on the inference routes (schemathesis: `"force": 0` registered a version):
    3.0 is an integer (`Int`), "3" and true are not."""

    model_config = ConfigDict(strict=True)

    @field_validator("max_model_len", "kv_cache_gib", "min_requests", mode="before", check_fields=False)
    @classmethod
    def _json_integers(cls, v):
        if isinstance(v, (str, bytes, bool)):
            raise ValueError("Input should be a valid integer")
        return v


class Reason(_Strict):
    reason: str | None = Field(None, description="why (goes to the audit log)")


class RegisterBody(Reason):
    # exactly one source, as VersionSpec checks: said in the schema too (schemathesis: a schema-valid body refused)
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["model"], "properties": {"model": {"type": "string", "minLength": 1}}},  # "" is no source
        {"required": ["url"], "properties": {"url": {"type": "string", "minLength": 1}}}]})

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model: str | None = Field(None, description="exported model directory (HF files + manifest.json), or a TRL "
                              "value-head checkpoint (imported into the cache directory first)")
    url: str | None = Field(None, pattern=r"^https?://[^\s/?#]+", description="remote OpenAI-compatible vLLM server")
    remote_model: str | None = None
    # sent as an HTTP header value: printable ASCII only (schemathesis: a non-ASCII key was stored, then every
    # later admin action failed with a 500 building the version's HTTP client)
    remote_api_key: str | None = Field(None, pattern=r"^[\x21-\x7e]+$")
    max_model_len: Int | None = Field(None, ge=8)  # None: the model's own context
    kv_cache_gib: Int = Field(1, ge=1)
    force: bool = Field(False, description="register even if the manifest's gate verdict is FAIL (audited)")

    @field_validator("url")
    @classmethod
    def _url_parses(cls, v: str | None) -> str | None:
        # schemathesis registered "\x97" as a remote URL: its engine then retried an unusable URL forever
        if v is not None:
            import httpx

            try:
                ok = bool(httpx.URL(v).host)
            except (httpx.InvalidURL, ValueError, TypeError):
                ok = False
            if not ok:
                raise ValueError("url must be an http(s) URL with a host, e.g. http://10.0.0.7:8000")
        return v


class StartBody(Reason):
    version: str
    stages: list[float] | None = Field(None, description="canary shares, e.g. [0.01, 0.1, 0.5, 1.0]")
    min_requests: Int | None = Field(None, ge=0)
    min_duration_s: float | None = Field(None, ge=0)


class PromoteBody(Reason):
    full: bool = Field(False, description="straight to 100% (and finish) instead of the next stage")


class WeightBody(Reason):
    version: str
    weight: float = Field(ge=0, le=1)


class ShadowBody(Reason):
    share: float = Field(ge=0, le=1, description="share of stable's requests mirrored to the version (0 = off)")


class FaultBody(_Strict):
    error_rate: float = Field(0.0, ge=0, le=1)
    latency_s: float = Field(0.0, ge=0, le=60)
    alarm: str | None = Field(None, description="raise an alarm of this name on the version")


def build_admin_router(gw, settings: Settings) -> APIRouter:
    keys = load_admin_keys(settings)
    alarms = InjectedAlarms()
    if settings.allow_fault_injection:
        gw.alarm_sources.append(alarms)

    def admin_key_id(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-admin-key", "")
        if given:
            for kid, key in keys.items():
                if hmac.compare_digest(given.encode(), key.encode()):
                    return kid
        raise APIError(401, "admin API: missing or wrong admin key; send `Authorization: Bearer <admin key>`",
                       type="authentication_error", code="invalid_admin_key",
                       headers={"WWW-Authenticate": "Bearer"})

    # every status the admin handlers send, in the OpenAI error shape (schemathesis: 404/409/503 were undocumented)
    responses = {401: {"model": ErrorResponse, "description": "no or wrong admin key"},
                 **{code: {"model": ErrorResponse} for code in (400, 404, 409, 413, 415, 503)}}
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin_key_id)], responses=responses)

    def ctl():
        if gw.controller is None:
            raise APIError(503, "the control plane is starting", type="service_unavailable")
        return gw.controller

    async def run(coro):
        try:
            await coro
        except ControlError as e:
            raise APIError(e.status, e.message, code="conflict" if e.status == 409 else None) from None
        except StoreUnavailable as e:
            raise APIError(503, f"control-plane store unavailable: {e}", type="service_unavailable",
                           code="store_unavailable", headers={"Retry-After": "2"}) from None
        return ctl().status()

    @router.get("/status", summary="Versions, weights, rollout stage, gate inputs and the last decision")
    async def status():
        return ctl().status()

    @router.get("/versions", summary="Registered versions")
    async def versions():
        c = ctl()
        return {"stable": c.state.get("stable"), "versions": [
            {"name": n, "status": v["status"], "weight": c.state["weights"].get(n, 0.0),
             "source": v["spec"].get("model") or v["spec"].get("url"), "origin": v.get("origin"),
             "gate": v.get("gate"), "forced": v.get("forced", False),
             "ready": bool(gw.engines.get(n) and gw.engines[n].ready),
             "state": gw.version_state(n) if n in gw.engines else None,  # serve/gateway.py: as /ready shows it
             **(gw.starts[n].to_dict() if n in gw.starts else {}),
             "error": repr(gw.engines[n].start_error) if gw.engines.get(n) and gw.engines[n].start_error else None}
            for n, v in c.state.get("versions", {}).items()]}

    @router.post("/versions", status_code=201, summary="Register a version (exported directory or remote URL)")
    async def register(body: RegisterBody, who: str = Depends(admin_key_id)):
        model, why = body.model, body.reason
        if model:  # a TRL checkpoint is imported into the cache first (serve/checkpoints.py)
            try:
                model, layout = await asyncio.to_thread(servable_dir, model, settings.cache_dir)
            except (ValueError, OSError) as e:
                raise APIError(400, f"cannot serve {body.model}: {e}", param="model", code="invalid_value") from None
            if layout:
                why = f"{why + '; ' if why else ''}imported {layout} checkpoint {body.model} into {model}"
                log.info("checkpoint_imported", version=body.name, layout=layout, source=body.model, dir=model)
        try:
            spec = VersionSpec(name=body.name, model=model, url=body.url, remote_model=body.remote_model,
                               remote_api_key=body.remote_api_key, max_model_len=body.max_model_len,
                               kv_cache_gib=body.kv_cache_gib, weight=0.0)
        except ValueError as e:
            # the first error's own message (the last line of a pydantic error is a documentation link)
            errs = e.errors() if hasattr(e, "errors") else []
            msg = errs[0].get("msg", "invalid version") if errs else (str(e) or "invalid version")
            raise APIError(400, msg, code="invalid_value") from None
        return await run(ctl().register(spec, body.force, who, why))

    @router.delete("/versions/{name}", status_code=202, summary="Drain (stop routing, wait in-flight) and unload")
    async def unload(name: str, who: str = Depends(admin_key_id), reason: str | None = Query(None)):
        return await run(ctl().unload(name, who, reason))

    @router.post("/canary/start", summary="Start a rollout of a registered version along a plan")
    async def start(body: StartBody, who: str = Depends(admin_key_id)):
        return await run(ctl().start_rollout(body.version, who, body.reason, body.stages, body.min_requests,
                                             body.min_duration_s))

    @router.post("/canary/promote", summary="Advance to the next stage now (or to 100% with full=true)")
    async def promote(body: PromoteBody, who: str = Depends(admin_key_id)):
        return await run(ctl().promote(who, body.reason, body.full))

    @router.post("/canary/rollback", summary="Roll the canary back (weight 0)")
    async def rollback(body: Reason, who: str = Depends(admin_key_id)):
        return await run(ctl().rollback(who, body.reason))

    @router.post("/canary/pause", summary="Hold the current stage (automatic rollback stays on)")
    async def pause(body: Reason, who: str = Depends(admin_key_id)):
        return await run(ctl().pause(who, body.reason))

    @router.post("/canary/resume", summary="Let the rollout advance again")
    async def resume(body: Reason, who: str = Depends(admin_key_id)):
        return await run(ctl().pause(who, body.reason, resume=True))

    @router.post("/canary/set-weight", summary="Set a version's weight by hand (pauses its rollout)")
    async def set_weight(body: WeightBody, who: str = Depends(admin_key_id)):
        return await run(ctl().set_weight(body.version, body.weight, who, body.reason))

    @router.post("/versions/{name}/shadow", summary="Mirror a share of stable's traffic to a version (answers "
                                                     "scored and recorded, never returned); share 0 stops it")
    async def shadow(name: str, body: ShadowBody, who: str = Depends(admin_key_id)):
        if name not in gw.engines or name == gw.router.stable:
            raise APIError(404, f"`{name}` is not a registered non-stable version", type="not_found_error",
                           param="name", code="version_not_found")
        gw.shadow.set_share(name, body.share)
        log.info("shadow_set", version=name, share=body.share, who=who, reason=body.reason)
        return {"version": name, "share": gw.shadow.shares.get(name, 0.0), "replica_local": True}

    @router.get("/audit", summary="The audit log, newest last")
    async def audit(limit: int = Query(100, ge=1, le=10_000)):
        try:
            return {"entries": await ctl().store.audit(limit)}
        except StoreUnavailable as e:
            raise APIError(503, str(e), type="service_unavailable", code="store_unavailable") from None

    if settings.allow_fault_injection:
        @router.post("/versions/{name}/fault", summary="TEST ONLY: make a version fail or slow; raise an alarm")
        async def fault(name: str, body: FaultBody, who: str = Depends(admin_key_id)):
            if name not in gw.engines:
                raise APIError(404, f"no version `{name}` on this replica", code="model_not_found")
            set_fault(gw.engines, name, body.error_rate, body.latency_s)
            if body.alarm:
                alarms.raise_alarm(name, body.alarm, "injected")
            await ctl().store.append_audit(audit_entry(who, "fault", name, "test fault injection",
                                                       **body.model_dump()))
            return {"version": name, "fault": body.model_dump()}

        @router.delete("/versions/{name}/fault", summary="TEST ONLY: clear injected faults and alarms")
        async def clear(name: str):
            clear_fault(gw.engines, name)
            alarms.clear(name)
            return {"version": name, "fault": None}

    return router
