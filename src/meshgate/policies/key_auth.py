"""key-auth: authenticate by an API key ``keyId:keySecret`` (EG's key-auth policy).

Theory of operation
-------------------
EG's parameters and defaults: the key is read from the ``apiKeyHeader``
(``Authorization``) as ``<apiKeyHeaderScheme> <key>`` (scheme ``apiKey``,
compared case-insensitively; ``disableHeadersScheme`` takes the last word of
the header whatever precedes it), else from the ``apiKeyField`` query
parameter (``apiKey``); ``disableHeaders`` / ``disableQueryParam`` turn a
source off. The key must be an active key-auth credential of an active
consumer (``keyId``) with that ``keySecret``, holding every scope of the
apiEndpoint (else 403). ``passThrough`` lets a request without a valid key
go on anonymous. See ``_auth`` for the common outcome.

Hot path: a key seen before is answered from the store's verification cache
(``cached_verify``) without a coroutine; only a miss awaits the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from meshgate.config.base import ParamsModel
from meshgate.policies import POLICIES, BuildContext, PolicySpec
from meshgate.policies._auth import (
    REALM,
    Gate,
    Identity,
    Memo,
    of_credential,
    query_param,
    shared_store,
)
from meshgate.store import MISS

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from meshgate.protocol.exchange import Exchange
    from meshgate.store.model import Credential

TYPE = "key-auth"


class KeyAuthParams(ParamsModel):
    passThrough: bool = Field(False, description="Go on anonymous instead of answering 401")
    apiKeyHeader: str = Field("Authorization", description="Header carrying the key")
    apiKeyHeaderScheme: str = Field("apiKey", description="Scheme before the key in the header")
    apiKeyField: str = Field("apiKey", description="Query parameter carrying the key")
    disableHeaders: bool = Field(False, description="Do not read the key from the header")
    disableHeadersScheme: bool = Field(False, description="Do not check the header's scheme")
    disableQueryParam: bool = Field(False, description="Do not read the key from the query")


class KeyAuth:
    def __init__(self, params: KeyAuthParams, ctx: BuildContext) -> None:
        self.store = shared_store(ctx)
        self.header = None if params.disableHeaders else params.apiKeyHeader.lower().encode()
        self.scheme = (None if params.disableHeadersScheme
                       else params.apiKeyHeaderScheme.lower().encode())
        self.field = None if params.disableQueryParam else params.apiKeyField
        self.gate = Gate(TYPE, params.passThrough,
                         f'{params.apiKeyHeaderScheme} realm="{REALM}"')
        self.memo = Memo()

    def _key(self, ex: Exchange) -> str | None:
        if self.header is not None:
            value = ex.header(self.header)
            if value:
                parts = value.split(b" ")
                if self.scheme is None or parts[0].lower() == self.scheme:
                    return parts[-1].decode("latin-1")
        if self.field is not None:
            return query_param(ex.path, self.field)
        return None

    def __call__(self, ex: Exchange) -> bool | Awaitable[bool | None] | None:
        key = self._key(ex)
        if not key:
            return self.gate.deny(ex)
        key_id, _, secret = key.partition(":")
        if not key_id or not secret:
            return self.gate.deny(ex, presented=True)
        hit = self.store.cached_verify(TYPE, key_id, secret)
        if hit is MISS:
            return self.gate.settle(ex, self._verify(key_id, secret))
        if hit is None:
            return self.gate.deny(ex, presented=True)
        return self.gate.admit(ex, self._identity(hit))

    def _identity(self, cred: Credential) -> Identity:
        return self.memo.get(cred, lambda: of_credential(cred))

    async def _verify(self, key_id: str, secret: str) -> Identity | None:
        cred = await self.store.verify(TYPE, key_id, secret)
        return self._identity(cred) if cred is not None else None


POLICIES.add(PolicySpec(TYPE, KeyAuthParams, KeyAuth,
                        "Authenticate by an API key (keyId:keySecret) in a header or the query"))
