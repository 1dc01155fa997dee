"""oauth2-introspect: accept Bearer tokens an RFC 7662 endpoint says are active.

Theory of operation
-------------------
EG's parameters and defaults: ``endpoint`` (the introspection URL),
``authorization_value`` (sent as ``Authorization``), ``ttl`` (60 s: how long
an active answer is trusted, never past the token's ``exp``), ``timeout``
(10000 ms) and ``passThrough``. The token (``Authorization: Bearer`` or
``?access_token=``) is POSTed as ``token=...&token_type_hint=access_token``
(form-encoded, as EG did). ``{"active": true, ...}`` makes the consumer:
id ``sub`` (else ``username``, else ``client_id``), name ``username`` (else
the id), type ``external``, scopes from ``scope`` (space-separated) or
``scopes``; they must include every scope of the apiEndpoint (403; EG
answered 401). Inactive: 401 ``WWW-Authenticate: Bearer realm="Users",
error="invalid_token"``.

An endpoint that cannot be reached, times out, or answers anything but a
2xx JSON object is an outage, not a verdict on the token: 503 (EG answered
401, which tells clients to throw away good tokens).

Per worker: one ``httpx.AsyncClient`` (``ctx.services``, pooled, shared by
every introspect policy); per policy: a cache of active answers (bounded)
and at most one request in flight per token -- concurrent requests with
the same new token wait for the same answer. A cached token is answered
without a coroutine.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field, field_validator

from meshgate.config.base import ParamsModel
from meshgate.policies import POLICIES, BuildContext, PolicySpec
from meshgate.policies._auth import REALM, Gate, Identity, bearer_token, identity
from meshgate.policies.jwt_auth import claim_scopes

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from meshgate.protocol.exchange import Exchange

_CACHE_SIZE = 10000


class IntrospectParams(ParamsModel):
    passThrough: bool = Field(False, description="Go on anonymous instead of answering 401")
    endpoint: str = Field(description="URL of the RFC 7662 introspection endpoint")
    authorization_value: str | None = Field(
        None, description="Authorization header sent to the endpoint")
    ttl: int = Field(60, ge=0, description="Seconds an active answer is trusted")
    timeout: int = Field(10000, gt=0, description="Milliseconds to wait for the endpoint")

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("endpoint must be an http:// or https:// URL")
        return value


class IntrospectionFailed(Exception):
    """The endpoint gave no usable answer."""


class Introspect:
    def __init__(self, params: IntrospectParams, ctx: BuildContext) -> None:
        self.client: httpx.AsyncClient = ctx.services.get(
            "httpx:oauth2-introspect", lambda: httpx.AsyncClient(follow_redirects=False))
        self.endpoint = params.endpoint
        self.headers = {"accept": "application/json"}
        if params.authorization_value is not None:
            self.headers["authorization"] = params.authorization_value
        self.ttl = float(params.ttl)
        self.timeout = httpx.Timeout(params.timeout / 1000.0)
        self.gate = Gate("oauth2-introspect", params.passThrough, f'Bearer realm="{REALM}"',
                         f'Bearer realm="{REALM}", error="invalid_token"')
        self.cache: dict[str, tuple[float, Identity]] = {}
        self.inflight: dict[str, asyncio.Future[Identity | None]] = {}

    def __call__(self, ex: Exchange) -> bool | Awaitable[bool | None] | None:
        token = bearer_token(ex)
        if not token:
            return self.gate.deny(ex)
        entry = self.cache.get(token)
        if entry is not None:
            if entry[0] > time.monotonic():
                return self.gate.admit(ex, entry[1])
            del self.cache[token]
        return self.gate.settle(ex, self._shared(token))

    async def _shared(self, token: str) -> Identity | None:
        pending = self.inflight.get(token)
        if pending is None:
            pending = asyncio.ensure_future(self._introspect(token))
            self.inflight[token] = pending
            pending.add_done_callback(lambda done: self._finished(token, done))
        return await asyncio.shield(pending)

    def _finished(self, token: str, done: asyncio.Future[Identity | None]) -> None:
        self.inflight.pop(token, None)
        if not done.cancelled():
            done.exception()          # retrieved: every waiter may have gone away

    async def _introspect(self, token: str) -> Identity | None:
        try:
            response = await self.client.post(
                self.endpoint, data={"token": token, "token_type_hint": "access_token"},
                headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise IntrospectionFailed(f"{self.endpoint}: {exc!r}") from exc
        if not response.is_success:
            raise IntrospectionFailed(f"{self.endpoint} answered {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise IntrospectionFailed(f"{self.endpoint} answered no JSON") from None
        if not isinstance(data, dict):
            raise IntrospectionFailed(f"{self.endpoint} answered no JSON object")
        if data.get("active") is not True:
            return None
        who = _identity(data)
        self._remember(token, who, data.get("exp"))
        return who

    def _remember(self, token: str, who: Identity, exp: Any) -> None:
        ttl = self.ttl
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            ttl = min(ttl, exp - time.time())
        if ttl <= 0 or math.isnan(ttl):
            return
        cache = self.cache
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[token] = (time.monotonic() + ttl, who)


def _identity(data: dict[str, Any]) -> Identity:
    def text(key: str) -> str | None:
        value = data.get(key)
        return str(value) if value not in (None, "") else None

    id_ = text("sub") or text("username") or text("client_id")
    return identity(id_, text("username") or id_, "external", claim_scopes(data),
                    "oauth2-introspect")


POLICIES.add(PolicySpec("oauth2-introspect", IntrospectParams, Introspect,
                        "Accept Bearer tokens an RFC 7662 introspection endpoint says are active"))
