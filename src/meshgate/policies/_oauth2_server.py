"""The built-in OAuth2 authorization server of the oauth2 policy: the token endpoint.

Theory of operation
-------------------
EG ran oauth2orize behind passport; meshgate keeps its endpoints, grants,
answers and status codes:

* ``POST /oauth2/token`` -- the client authenticates with its oauth2
  credential (client id + secret) by HTTP Basic or ``client_id`` /
  ``client_secret`` in the body (form or JSON); a requested ``scope``
  (space-separated; query, then body) must be held by that credential, else
  401 ``WWW-Authenticate: Basic realm="Users"``. Grants:
  ``client_credentials``; ``password`` (``username`` / ``password`` of a
  user's basic-auth credential; with a refresh token);
  ``authorization_code`` (``code``, ``redirect_uri`` if the authorization
  request named one, ``code_verifier`` if it carried a PKCE challenge; one
  use only, atomically: the code is taken from the store in one step, so of
  several requests racing with it exactly one gets tokens; with a refresh
  token);
  ``refresh_token`` (a new access token for the same client, scopes and
  user). The answer is ``{access_token, refresh_token?, expires_in,
  token_type: "Bearer"}`` with ``Cache-Control: no-store``; errors are
  ``{error, error_description}`` with oauth2orize's statuses
  (invalid_request 400, invalid_grant 403, unsupported_grant_type 501).
* ``GET /oauth2/authorize`` and the pages around it (sign-in, consent,
  sign-out) are ``_oauth2_authorize``'s; it shares this module's errors,
  body reader and ``guard``.

PKCE (RFC 7636, ``_pkce``): a code request may carry ``code_challenge`` and
``code_challenge_method`` (``S256``, or ``plain`` by default; else
``invalid_request``); they are kept with the code, and the exchange must
then send the matching ``code_verifier``, else ``invalid_grant`` -- also
when a verifier comes for a code issued without a challenge (OAuth 2.1,
against PKCE downgrade). A refused exchange leaves the code usable. With
the policy's ``requirePkce``, a code request without a challenge is
``invalid_request``. Client authentication is unchanged: PKCE adds to the
client secret, it does not replace it.

Tokens follow system.config.yml: opaque store tokens (``id|secret``, found
again for the same client, scopes and user as EG's ``findOrSave`` did) or,
with ``accessTokens.tokenType: jwt``, JWTs signed with
``secretOrPrivateKey[File]`` and ``algorithm`` carrying ``consumerId``,
``scopes`` and ``iss`` / ``aud`` / ``sub`` as configured; refresh tokens and
codes are always store tokens. Lifetimes are ``timeToExpiry`` (ms).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from meshgate.policies._auth import REALM, basic_credentials, query_param
from meshgate.policies._pkce import verifier_error
from meshgate.policies.jwt_auth import read_key_material
from meshgate.store.guard import Refused
from meshgate.store.model import now_ms

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from meshgate.policies import BuildContext
    from meshgate.policies._auth import Gate
    from meshgate.protocol.exchange import Exchange, Headers

BODY_LIMIT = 64 * 1024
_JSON: Headers = [(b"content-type", b"application/json; charset=utf-8"),
                  (b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
_CLIENT_CHALLENGE: Headers = [(b"www-authenticate", f'Basic realm="{REALM}"'.encode())]
_STATUS = {"invalid_request": 400, "invalid_client": 401, "invalid_grant": 403,
           "unauthorized_client": 403, "unsupported_grant_type": 501, "invalid_scope": 400,
           "unsupported_response_type": 501, "access_denied": 403}


class OAuthError(Exception):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.status = _STATUS.get(code, 400)


class Minter:
    """Issues access and refresh tokens per system.config.yml."""

    def __init__(self, ctx: BuildContext, store: Any) -> None:
        system = ctx.system
        access = system.accessTokens
        self.store = store
        self.access_ttl = int(access.timeToExpiry)
        self.refresh_ttl = int(system.refreshTokens.timeToExpiry)
        self.code_ttl = int(system.authorizationCodes.timeToExpiry)
        self.jwt = access.tokenType == "jwt"
        self.material = b""
        self.sign_key: Any = None
        if self.jwt:
            if not access.secretOrPrivateKey and not access.secretOrPrivateKeyFile:
                raise ValueError("system.config.yml: accessTokens.tokenType jwt needs "
                                 "secretOrPrivateKey or secretOrPrivateKeyFile")
            self.material = read_key_material(access.secretOrPrivateKey or None,
                                              access.secretOrPrivateKeyFile, ctx.config_dir)
            stripped = self.material.strip()
            self.sign_key = (load_pem_private_key(stripped, None)
                             if stripped.startswith(b"-----BEGIN") else self.material)
        self.algorithm = access.algorithm
        self.claims = {k: v for k, v in (("iss", access.issuer), ("aud", access.audience),
                                         ("sub", access.subject)) if v}

    def sign(self, consumer_id: str, scopes: list[str] | None, user_id: str | None) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"consumerId": consumer_id, "iat": now,
                                   "exp": now + self.access_ttl // 1000, **self.claims}
        if scopes is not None:
            payload["scopes"] = scopes
        if user_id:
            payload["authenticatedUserId"] = user_id
        return jwt.encode(payload, self.sign_key, algorithm=self.algorithm)

    async def _find_or_issue(self, kind: str, consumer_id: str, ttl: int,
                             scopes: list[str] | None, props: dict[str, Any]
                             ) -> tuple[Any, str]:
        found = await self.store.find_token(kind, consumer_id, scopes=scopes, props=props)
        if found is not None:
            return found
        return await self.store.issue_token(
            kind, consumer_id, ttl_ms=ttl, scopes=scopes, props=props)

    async def grant(self, client_id: str, scopes: list[str] | None, props: dict[str, Any],
                    refresh: bool) -> dict[str, Any]:
        """The token endpoint's answer: access token, maybe a refresh token, expiry."""
        if self.jwt:
            access = self.sign(client_id, scopes, props.get("authenticatedUserId"))
            expires_in = self.access_ttl // 1000
        else:
            token, access = await self._find_or_issue("access_token", client_id,
                                                      self.access_ttl, scopes, props)
            expires_in = max(0, (token.expires_at - now_ms()) // 1000)
        body: dict[str, Any] = {"access_token": access}
        if refresh:
            _, body["refresh_token"] = await self._find_or_issue(
                "refresh_token", client_id, self.refresh_ttl, scopes, props)
        body["expires_in"] = expires_in
        body["token_type"] = "Bearer"
        return body


class AuthorizationServer:
    """The token endpoint; ``_oauth2_authorize.Authorization`` is the authorization one."""

    def __init__(self, store: Any, minter: Minter, gate: Gate) -> None:
        self.store = store
        self.minter = minter
        self.gate = gate                 # for 503s when the store fails

    def route(self, ex: Exchange) -> Awaitable[bool | None] | bool | None:
        """Handle ``/oauth2/token``; None for other paths."""
        if ex.path_only.rstrip(b"/") != b"/oauth2/token":
            return None
        if refused_method(ex, b"POST"):
            return True
        return guard(ex, self._token(ex), self.gate)

    # -- POST /oauth2/token ---------------------------------------------------------
    async def _token(self, ex: Exchange) -> None:
        form = await read_form(ex)
        client = await self._client(ex, form)
        if client is None:
            if not ex.done:
                ex.respond(401, b"Unauthorized", _CLIENT_CHALLENGE)
            return
        cred, scopes = client
        grant = form.get("grant_type", "")
        if grant == "client_credentials":
            body = await self.minter.grant(cred.consumer_id, scopes,
                                           {"grant": grant}, refresh=False)
        elif grant == "password":
            body = await self._password(cred.consumer_id, scopes, form, client_of(ex))
        elif grant == "authorization_code":
            body = await self._code(cred.consumer_id, form)
        elif grant == "refresh_token":
            body = await self._refresh(cred.consumer_id, form)
        else:
            raise OAuthError("unsupported_grant_type", f"Unsupported grant type: {grant}")
        _json(ex, 200, body)

    async def _client(self, ex: Exchange, form: dict[str, str]
                      ) -> tuple[Any, list[str] | None] | None:
        pair = basic_credentials(ex.header(b"authorization"))
        if pair is None:
            client_id, secret = form.get("client_id"), form.get("client_secret")
            if not client_id or not secret:
                return None
            pair = (client_id, secret)
        scope = query_param(ex.path, "scope") or form.get("scope")
        scopes = scope.split() if scope else None
        cred = await self.store.verify("oauth2", *pair, client_of(ex))
        if cred is None or (scopes and not set(scopes) <= set(cred.scopes)):
            return None
        return cred, scopes

    async def _password(self, client_id: str, scopes: list[str] | None,
                        form: dict[str, str], address: str) -> dict[str, Any]:
        username, password = form.get("username"), form.get("password")
        if not username:
            raise OAuthError("invalid_request", "Missing required parameter: username")
        if not password:
            raise OAuthError("invalid_request", "Missing required parameter: password")
        user = await self.store.verify("basic-auth", username, password, address)
        if user is None:
            raise OAuthError("invalid_grant", "Invalid resource owner credentials")
        props = {"grant": "password", "authenticatedUserId": user.consumer_id}
        return await self.minter.grant(client_id, scopes, props, refresh=True)

    async def _code(self, client_id: str, form: dict[str, str]) -> dict[str, Any]:
        presented = form.get("code")
        if not presented:
            raise OAuthError("invalid_request", "Missing required parameter: code")
        code = await self.store.verify_token(presented, "authorization_code")
        redirect = code.props.get("redirectUri") if code is not None else None
        if (code is None or code.consumer_id != client_id
                or (redirect is not None and form.get("redirect_uri") != redirect)):
            raise OAuthError("invalid_grant", "Invalid authorization code")
        refused = verifier_error(code.props, form.get("code_verifier") or None)
        if refused is not None:
            raise OAuthError("invalid_grant", refused)
        # One use only: the check above may have read a cached answer; taking the code
        # from the store is what decides, atomically, which request gets the tokens.
        if await self.store.consume_token(presented, "authorization_code") is None:
            raise OAuthError("invalid_grant", "Invalid authorization code")
        props = {"grant": "authorization_code",
                 "authenticatedUserId": code.props.get("authenticatedUserId")}
        return await self.minter.grant(client_id, list(code.scopes) or None, props,
                                       refresh=True)

    async def _refresh(self, client_id: str, form: dict[str, str]) -> dict[str, Any]:
        presented = form.get("refresh_token")
        if not presented:
            raise OAuthError("invalid_request", "Missing required parameter: refresh_token")
        token = await self.store.verify_token(presented, "refresh_token")
        if token is None or token.consumer_id != client_id:
            raise OAuthError("invalid_grant", "Invalid refresh token")
        props = {k: token.props[k] for k in ("grant", "authenticatedUserId")
                 if k in token.props}
        user = props.get("authenticatedUserId")
        if user and await self.store.lookup("basic-auth", user) is None:
            raise OAuthError("invalid_grant", "Invalid refresh token")
        return await self.minter.grant(client_id, list(token.scopes) or None, props,
                                       refresh=False)


def client_of(ex: Exchange) -> str:
    """The client's address, whose failed secret checks the store counts."""
    return ex.client_addr.decode("latin-1")


def refused_method(ex: Exchange, *allowed: bytes) -> bool:
    """Answer 405 (with ``Allow``) unless the request's method is one of ``allowed``."""
    if ex.method in allowed:
        return False
    ex.respond(405, b"Method Not Allowed", [(b"allow", b", ".join(allowed))])
    return True


def query_of(ex: Exchange) -> dict[str, str]:
    """The request's query parameters (the first value of each)."""
    return dict(parse_qsl(ex.path.partition(b"?")[2].decode("latin-1")))


async def guard(ex: Exchange, work: Awaitable[None], gate: Gate) -> bool:
    """Run an endpoint; its OAuth errors, bad bodies and store failures become answers."""
    try:
        await work
    except OAuthError as err:
        _json(ex, err.status, {"error": err.code, "error_description": str(err)})
    except Refused as refused:        # too many failed or waiting secret checks
        gate.refuse(ex, refused)
    except BodyError as err:
        if not ex.done:
            ex.keep_alive = False
            ex.respond(err.status, err.message)
    except Exception as exc:          # the store cannot answer
        gate.unavailable(ex, exc)
    return True


def join(uri: str, sep: str, params: dict[str, Any]) -> str:
    if sep == "?" and "?" in uri:
        sep = "&"
    return f"{uri}{sep}{urlencode(params)}"


def _json(ex: Exchange, status: int, body: dict[str, Any]) -> None:
    if not ex.done:
        ex.respond(status, json.dumps(body).encode(), _JSON)


# -- request bodies ---------------------------------------------------------------------

class BodyError(Exception):
    def __init__(self, status: int, message: bytes) -> None:
        super().__init__(message.decode())
        self.status = status
        self.message = message


class _Collector:
    """BodySink gathering a small request body into a future."""

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future
        self.chunks: list[bytes] = []
        self.size = 0

    def body_data(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > BODY_LIMIT:
            if not self.future.done():
                self.future.set_exception(BodyError(413, b"Payload Too Large\n"))
            return
        self.chunks.append(data)

    def body_end(self, trailers: Headers | None) -> None:
        if not self.future.done():
            self.future.set_result(b"".join(self.chunks))

    def body_abort(self) -> None:
        if not self.future.done():
            self.future.set_exception(BodyError(400, b"Bad Request\n"))


async def read_form(ex: Exchange) -> dict[str, str]:
    """A urlencoded or JSON request body as a flat dict of strings."""
    if not ex.body_expected:
        return {}
    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    ex.attach_body_sink(_Collector(future))
    raw = await future
    ctype = (ex.header(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype == b"application/json":
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise OAuthError("invalid_request", "The request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise OAuthError("invalid_request", "The request body must be a JSON object")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
