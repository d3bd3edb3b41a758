"""Inference API keys: `Authorization: Bearer <key>` on /v1/, checked against SHA-256 digests only.

Separate from the admin keys (serve/api/admin.py): an admin key is not an inference key and the other way round
(a secret configured as both is refused at start). With no inference key configured /v1/ is open, which is
allowed only when the gateway listens on loopback, unless `allow_open` says otherwise (then a loud warning).
/health, /ready and /metrics never need a key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request

from serve.config import Settings
from serve.api.errors import APIError
from serve.logs import get_logger

log = get_logger(__name__)


class OpenExposure(ValueError):
    """No inference key configured, a non-loopback bind, and no explicit opt-in."""


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    id: str
    digest: bytes  # SHA-256 of the key: the plain key is not kept after load
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm or self.max_concurrency)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyTable:
    def __init__(self, keys: Iterable[KeyPolicy]):
        self.keys = list(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyTable:
        out = []
        for k in settings.api_keys:
            d = digest(k.key.get_secret_value()) if k.key else bytes.fromhex(k.sha256 or "")
            out.append(KeyPolicy(k.id, d, k.rpm, k.tpm, k.max_concurrency))
        return cls(out)

    @property
    def open(self) -> bool:
        return not self.keys

    def lookup(self, given: str) -> KeyPolicy | None:
        d = digest(given)
        found = None
        for k in self.keys:  # compare every entry in constant time: no early exit that timing could reveal
            if hmac.compare_digest(d, k.digest):
                found = k
        return found

    def check_disjoint(self, admin_keys: Iterable[str]) -> None:
        """A secret that is both an admin and an inference key would blur the two roles: refuse it."""
        for a in admin_keys:
            if (k := self.lookup(a)) is not None:
                raise ValueError(f"inference api key {k.id!r} is also an admin key; use different secrets")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: may resolve to anything
        return False


def check_exposure(settings: Settings, warn: bool = True) -> None:
    """Refuse an open /v1/ on a non-loopback address unless opted in; warn loudly when open at all."""
    if settings.api_keys:
        return
    if not is_loopback(settings.host) and not settings.allow_open:
        raise OpenExposure(
            f"refusing to serve /v1/ without API keys on {settings.host} (not loopback): anyone who can reach it "
            f"could use it. Configure inference keys (ALIGNGATE_API_KEYS='[{{\"id\": \"team-a\", \"key\": "
            f"\"...\"}}]' or `api_keys:` in the YAML file), bind to 127.0.0.1, or set ALIGNGATE_ALLOW_OPEN=1 to "
            f"accept an open gateway.")
    if not warn:
        return
    if not is_loopback(settings.host):
        log.warning("OPEN_GATEWAY", detail=f"no inference API keys: /v1/ on {settings.host} is open to anyone "
                                           f"who can reach it (ALIGNGATE_ALLOW_OPEN is set)")
    else:
        log.warning("open_gateway", detail="no inference API keys configured: /v1/ is open (loopback only)")


def make_dependency(table: KeyTable):
    """The FastAPI dependency for /v1/ routes: the caller's KeyPolicy, or None when the gateway is open."""

    async def inference_key(request: Request) -> KeyPolicy | None:
        if table.open:
            return None
        auth = request.headers.get("authorization", "")
        if not auth:
            raise APIError(401, "missing API key: send `Authorization: Bearer <key>`", type="authentication_error",
                           code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        policy = table.lookup(given) if given else None
        if policy is None:
            raise APIError(401, "wrong API key (admin keys are not inference keys): send `Authorization: Bearer "
                                "<key>` with a key configured in api_keys", type="authentication_error",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return policy

    return inference_key
