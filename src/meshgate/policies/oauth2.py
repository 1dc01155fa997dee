"""oauth2: EG's built-in OAuth2 authorization server, and Bearer-token protection.

Theory of operation
-------------------
One policy, two jobs, as in EG:

* **Authorization server.** ``POST /oauth2/token`` (``_oauth2_server``),
  and ``GET /oauth2/authorize`` with EG's sign-in form (``/login``),
  consent dialog (``POST /oauth2/authorize/decision``) and ``/logout``
  (``_oauth2_authorize``), are answered by the policy itself. As in EG they
  are served on every host, ahead of the apiEndpoints: the policy offers
  them as ``gateway_routes``, which the Snapshot turns into routes (the
  first oauth2 step of the config serves them). A pipeline whose own
  apiEndpoint matches ``/oauth2/*`` answers those too.
* **Protection.** Any other request must carry ``Authorization: Bearer
  <token>`` (or ``?access_token=``). With opaque tokens
  (``accessTokens.tokenType: opaque``, the default) the token must be a
  live access token of an active client, whose user -- for tokens granted
  on a user's behalf (password, code, implicit) -- still has an active
  basic-auth credential; revoking it (Admin API ``DELETE /tokens/:token``)
  or deactivating the client or user takes effect within a second (the
  store's cache). The token's scopes must include every scope of the
  apiEndpoint (403; EG answered 401). Missing / invalid / expired / revoked:
  401 ``WWW-Authenticate: Bearer realm="Users"[, error="invalid_token"]``.
  On success the consumer is the client (EG's choice), ``Authorization`` is
  removed before proxying, as EG did.

With ``tokenType: jwt`` the policy verifies JWTs like the jwt policy: with
its ``jwt`` params when given (EG's only way), else with system.config.yml's
``accessTokens`` key (the public half of a private key), ``algorithm``,
``issuer`` and ``audience``, the consumer being the token's ``consumerId``
(an active oauth2 client) and the scopes the token's. JWTs cannot be revoked
before they expire; deactivating the client stops them.

``passThrough`` as in every auth policy (``_auth``). ``requirePkce`` makes
the authorization server refuse code requests without a PKCE
``code_challenge``; as ``/oauth2/*`` is served by the config's first oauth2
step, that step's setting is the one that counts there.

Hot path: a known token is answered from the store's verification cache
without a coroutine; the token endpoint and cache misses await.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from meshgate.config.base import ParamsModel
from meshgate.policies import POLICIES, BuildContext, PolicySpec
from meshgate.policies._auth import (
    REALM,
    Gate,
    Identity,
    Memo,
    bearer_token,
    identity,
    shared_store,
)
from meshgate.policies._oauth2_authorize import Authorization
from meshgate.policies._oauth2_server import AuthorizationServer, Minter
from meshgate.policies._oauth2_session import Sessions
from meshgate.policies.jwt_auth import JwtAuth, JwtParams, verify_key
from meshgate.store import MISS

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from meshgate.protocol.exchange import Exchange
    from meshgate.store.model import Token

_PREFIX = b"/oauth2/"


class OAuth2Params(ParamsModel):
    passThrough: bool = Field(False, description="Go on anonymous instead of answering 401")
    jwt: JwtParams | None = Field(
        None, description="jwt policy params for JWT access tokens (accessTokens.tokenType jwt)")
    requirePkce: bool = Field(
        False, description="Refuse authorization-code requests without a PKCE code_challenge "
                           "(RFC 7636)")


class OAuth2:
    def __init__(self, params: OAuth2Params, ctx: BuildContext) -> None:
        self.store = shared_store(ctx)
        self.gate = Gate("oauth2", params.passThrough, f'Bearer realm="{REALM}"',
                         f'Bearer realm="{REALM}", error="invalid_token"',
                         strip=b"authorization")
        minter = Minter(ctx, self.store)
        self.server = AuthorizationServer(self.store, minter, self.gate)
        sessions = Sessions(ctx.system.session, ctx.system.crypto.cipherKey, self.store)
        self.authorization = Authorization(self.store, minter, self.gate, sessions,
                                           params.requirePkce)
        self.gateway_routes = [("/oauth2/*", self._serve),
                               ("/login", self.authorization.login_route),
                               ("/logout", self.authorization.logout_route)]
        self.memo = Memo()
        self.jwt: JwtAuth | None = None
        if minter.jwt:
            self.jwt = _jwt_bearer(params, ctx, minter)

    def __call__(self, ex: Exchange) -> bool | Awaitable[bool | None] | None:
        if ex.path.startswith(_PREFIX):
            answered = self._serve(ex)
            if answered is not None:
                return answered
        if self.jwt is not None:
            return self.jwt(ex)
        token = bearer_token(ex)
        if not token:
            return self.gate.deny(ex)
        store = self.store
        hit = store.cached_verify_token(token)
        if hit is MISS:
            return self.gate.settle(ex, self._verify(token))
        if hit is None:
            return self.gate.deny(ex, presented=True)
        user = hit.props.get("authenticatedUserId")
        if user:
            found = store.cached_lookup("basic-auth", user)
            if found is MISS:
                return self.gate.settle(ex, self._verify(token))
            if found is None:
                return self.gate.deny(ex, presented=True)
        return self.gate.admit(ex, self._identity(hit))

    def _serve(self, ex: Exchange) -> bool | Awaitable[bool | None] | None:
        """The authorization server's ``/oauth2/*`` endpoints; None for other paths."""
        answered = self.server.route(ex)
        return answered if answered is not None else self.authorization.route(ex)

    def _identity(self, token: Token) -> Identity:
        def make() -> Identity:
            consumer = token.consumer
            if consumer is None:
                return identity(token.consumer_id, None, "app", token.scopes, "oauth2")
            return identity(consumer.id, consumer.name, consumer.type, token.scopes, "oauth2")
        return self.memo.get(token, make)

    async def _verify(self, presented: str) -> Identity | None:
        token = await self.store.verify_token(presented)
        if token is None:
            return None
        user = token.props.get("authenticatedUserId")
        if user and await self.store.lookup("basic-auth", user) is None:
            return None
        return self._identity(token)


def _jwt_bearer(params: OAuth2Params, ctx: BuildContext, minter: Minter) -> JwtAuth:
    """The verifier of JWT access tokens: EG's ``jwt`` params, else accessTokens'."""
    if params.jwt is not None:
        jwt_params = params.jwt.model_copy(
            update={"passThrough": params.jwt.passThrough or params.passThrough})
        return JwtAuth(jwt_params, ctx, policy="oauth2")
    access = ctx.system.accessTokens
    settings: dict[str, Any] = {"passThrough": params.passThrough, "audience": access.audience,
                                "issuer": access.issuer}
    return JwtAuth(JwtParams.model_construct(**settings), ctx, policy="oauth2",
                   key=verify_key(minter.material, [access.algorithm]),
                   id_claim="consumerId", lookup="oauth2", token_scopes=True)


POLICIES.add(PolicySpec("oauth2", OAuth2Params, OAuth2,
                        "OAuth2 authorization server (/oauth2/token, /oauth2/authorize) and "
                        "Bearer-token protection"))
