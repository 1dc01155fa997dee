"""basic-auth: authenticate by HTTP Basic username and password (EG's basic-auth policy).

Theory of operation
-------------------
``Authorization: Basic base64(username:password)``: the username names an
active user (or app id -- EG's ``validateConsumer`` order) whose basic-auth
credential is active and whose password matches; the credential must hold
every scope of the apiEndpoint (else 403 -- EG answered 401 here, unlike its
other policies). Failure answers 401 with ``WWW-Authenticate: Basic
realm="Users"`` (passport-http's realm), or goes on anonymous with
``passThrough``, EG's only parameter.

EG's strategy checked the *oauth2* credential instead when the apiEndpoint
had no scopes (its token endpoint reused the strategy); meshgate always
checks the basic-auth credential.

Hot path: a password proven once is answered from the store's verification
cache without a coroutine (and without the slow hash).
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
    basic_credentials,
    of_credential,
    shared_store,
)
from meshgate.store import MISS

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from meshgate.protocol.exchange import Exchange
    from meshgate.store.model import Credential

TYPE = "basic-auth"


class BasicAuthParams(ParamsModel):
    passThrough: bool = Field(False, description="Go on anonymous instead of answering 401")


class BasicAuth:
    def __init__(self, params: BasicAuthParams, ctx: BuildContext) -> None:
        self.store = shared_store(ctx)
        self.gate = Gate(TYPE, params.passThrough, f'Basic realm="{REALM}"')
        self.memo = Memo()

    def __call__(self, ex: Exchange) -> bool | Awaitable[bool | None] | None:
        found = basic_credentials(ex.header(b"authorization"))
        if found is None:
            return self.gate.deny(ex)
        username, password = found
        hit = self.store.cached_verify(TYPE, username, password)
        if hit is MISS:
            return self.gate.settle(ex, self._verify(username, password))
        if hit is None:
            return self.gate.deny(ex, presented=True)
        return self.gate.admit(ex, self._identity(hit))

    def _identity(self, cred: Credential) -> Identity:
        return self.memo.get(cred, lambda: of_credential(cred))

    async def _verify(self, username: str, password: str) -> Identity | None:
        cred = await self.store.verify(TYPE, username, password)
        return self._identity(cred) if cred is not None else None


POLICIES.add(PolicySpec(TYPE, BasicAuthParams, BasicAuth,
                        "Authenticate by HTTP Basic username and password"))
