"""The oauth2 authorization endpoint: sign-in, consent and sign-out pages, as EG's.

Theory of operation
-------------------
EG logged a user in with a form (passport-local over the user's basic-auth
credential) into an express-session, then asked for consent with a dialog
whose decision completed the authorization transaction kept in that
session. meshgate serves the same pages and paths:

* ``GET /oauth2/authorize`` without a signed-in user: 302 to
  ``/login?returnTo=<that request>``.
* ``GET /login``: the form. ``POST /login`` (``username``, ``password``,
  ``returnTo``): 302 to ``returnTo`` with the session cookie, or back to the
  form with an error (EG's ``failureRedirect``).
* ``GET /oauth2/authorize`` with a user: the consent dialog (200,
  ``text/html``), its ``transaction_id`` in a hidden field and, as EG sent
  it, in a ``transaction_id`` response header (for scripted clients).
* ``POST /oauth2/authorize/decision`` (``transaction_id``, ``cancel`` to
  deny): the authorization answer, a 302 to the client's redirect URI with a
  code, a token or ``error=access_denied``.
* ``GET /logout?returnTo=&clientId=``: the session cookie is cleared; 302 to
  ``returnTo`` -- a path on this gateway, or with ``clientId`` exactly that
  client's ``redirectUri`` (else 400, as EG). EG also redirected to any other
  address, an open redirect; meshgate does not.

The authorization request: ``response_type`` ``code`` or ``token``
(implicit), ``client_id``, ``redirect_uri`` (default, and must equal, the
client's registered ``redirectUri``), ``scope`` (each held by the client's
oauth2 credential), ``state``, and for codes the PKCE challenge (see
``_oauth2_server``). A malformed one is refused at once (400 / 501); an
unknown client, another redirect URI or a scope it does not hold is 403
``unauthorized_client`` once the user has signed in (oauth2orize's order).

A request may instead carry the user's HTTP Basic credentials (scripts,
tests; wrong ones get a 401 challenge); consent is asked either way.

Sessions and transactions are signed, not stored (``_oauth2_session``). A
session is checked on every use against the store: the user and their
basic-auth credential must still be active, so deactivation ends sessions
within a second. The decision is accepted only from the user the dialog was
shown to, within ten minutes, and the client is checked again then. Pages
are ``no-store`` and may not be framed (``X-Frame-Options: DENY``).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from meshgate.policies._auth import REALM, basic_credentials
from meshgate.policies._oauth2_server import (
    OAuthError,
    client_of,
    guard,
    join,
    query_of,
    read_form,
    refused_method,
)
from meshgate.policies._pkce import challenge_props

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from meshgate.policies._auth import Gate
    from meshgate.policies._oauth2_server import Minter
    from meshgate.policies._oauth2_session import Sessions
    from meshgate.protocol.exchange import Exchange, Headers

_HTML = (b"content-type", b"text/html; charset=utf-8")
_NO_STORE = (b"cache-control", b"no-store")
_CHALLENGE: Headers = [(b"www-authenticate", f'Basic realm="{REALM}"'.encode())]


class Authorization:
    """``/oauth2/authorize``, ``/oauth2/authorize/decision``, ``/login``, ``/logout``."""

    def __init__(self, store: Any, minter: Minter, gate: Gate, sessions: Sessions,
                 require_pkce: bool = False) -> None:
        self.store = store
        self.minter = minter
        self.gate = gate                 # for 503s when the store fails
        self.sessions = sessions
        self.require_pkce = require_pkce

    def route(self, ex: Exchange) -> Awaitable[bool | None] | bool | None:
        """Handle ``/oauth2/authorize[/decision]``; None for other paths."""
        path = ex.path_only.rstrip(b"/")
        if path == b"/oauth2/authorize/decision":
            return refused_method(ex, b"POST") or guard(ex, self._decision(ex), self.gate)
        if path == b"/oauth2/authorize":
            return (refused_method(ex, b"GET", b"HEAD")
                    or guard(ex, self._authorize(ex), self.gate))
        return None

    async def _authorize(self, ex: Exchange) -> None:
        request = self._request(query_of(ex))
        user = await self._user(ex)
        if user is None:
            if ex.done:
                return
            if ex.header(b"authorization") is not None:
                ex.respond(401, b"Unauthorized", _CHALLENGE)
            else:
                login_redirect(ex)
            return
        client, _ = await self._client_of(request)     # checked again at the decision
        consumer = user.consumer
        consent_page(ex, consumer.name if consumer is not None else user.consumer_id,
                     client.consumer.name if client.consumer is not None else client.consumer_id,
                     request["scopes"], await self.sessions.transaction(request, user.consumer_id))

    async def _decision(self, ex: Exchange) -> None:
        form = await read_form(ex)
        user = await self._user(ex)
        if user is None:
            raise OAuthError("access_denied", "Sign in to decide on an authorization request")
        request = await self.sessions.open_transaction(form.get("transaction_id"),
                                                     user.consumer_id)
        if request is None:
            raise OAuthError("invalid_request", "Unable to load OAuth 2.0 transaction")
        client, redirect = await self._client_of(request)    # still allowed to ask?
        state = {"state": request["state"]} if request.get("state") is not None else {}
        sep = "?" if request["type"] == "code" else "#"
        if form.get("cancel"):
            location = join(redirect, sep, {"error": "access_denied", **state})
        elif request["type"] == "code":
            props = {"authenticatedUserId": user.consumer_id, **request["pkce"]}
            if request.get("redirect_uri"):
                props["redirectUri"] = redirect
            _, code = await self.store.issue_token("authorization_code", client.consumer_id,
                                                   ttl_ms=self.minter.code_ttl,
                                                   scopes=request["scopes"], props=props)
            location = join(redirect, sep, {"code": code, **state})
        else:
            props = {"grant": "implicit", "authenticatedUserId": user.consumer_id}
            body = await self.minter.grant(client.consumer_id, request["scopes"], props,
                                           refresh=False)
            location = join(redirect, sep, {**body, **state})
        if not ex.done:
            ex.respond(302, b"", [(b"location", location.encode("latin-1", "replace"))])

    def _request(self, query: dict[str, str]) -> dict[str, Any]:
        """The authorization request's parameters, checked before anyone signs in."""
        kind, client_id = query.get("response_type"), query.get("client_id")
        if kind not in ("code", "token"):
            raise OAuthError("unsupported_response_type", f"Unsupported response type: {kind}")
        if not client_id:
            raise OAuthError("invalid_request", "Missing required parameter: client_id")
        return {"type": kind, "client_id": client_id,
                "redirect_uri": query.get("redirect_uri") or None,
                "scopes": query["scope"].split() if query.get("scope") else None,
                "state": query.get("state"),
                "pkce": self._challenge(query) if kind == "code" else {}}

    async def _client_of(self, request: dict[str, Any]) -> tuple[Any, str]:
        """The client's oauth2 credential and redirect URI, if it may make ``request``."""
        client = await self.store.lookup("oauth2", request["client_id"])
        consumer = client.consumer if client is not None else None
        registered = consumer.doc.get("redirectUri") if consumer is not None else None
        redirect = request.get("redirect_uri") or registered
        scopes = request.get("scopes")
        if (client is None or not registered or redirect != registered
                or (scopes and not set(scopes) <= set(client.scopes))):
            raise OAuthError("unauthorized_client", "Unauthorized client")
        return client, str(redirect)

    async def _user(self, ex: Exchange) -> Any:
        """The signed-in user's basic-auth Credential: HTTP Basic, else the session."""
        sent = ex.header(b"authorization")
        if sent is not None:
            pair = basic_credentials(sent)
            return (await self.store.verify("basic-auth", *pair, client_of(ex))
                    if pair is not None else None)
        user_id = await self.sessions.user_id(ex)
        return await self.store.lookup("basic-auth", user_id) if user_id else None

    # -- /login, /logout -------------------------------------------------------------------
    def login_route(self, ex: Exchange) -> Awaitable[bool | None] | bool | None:
        if refused_method(ex, b"GET", b"HEAD", b"POST"):
            return True
        if ex.method != b"POST":
            login_page(ex)
            return True
        return guard(ex, self._login(ex), self.gate)

    async def _login(self, ex: Exchange) -> None:
        form = await read_form(ex)
        back = local_path(form.get("returnTo")) or "/"
        username, password = form.get("username"), form.get("password")
        user = (await self.store.verify("basic-auth", username, password, client_of(ex))
                if username and password else None)
        if ex.done:
            return
        if user is None:
            again = f"/login?error=1&returnTo={quote(back, safe='')}"
            ex.respond(302, b"", [(b"location", again.encode("latin-1"))])
            return
        ex.respond(302, b"", [(b"location", back.encode("latin-1", "replace")),
                              await self.sessions.start(user.consumer_id)])

    def logout_route(self, ex: Exchange) -> Awaitable[bool | None] | bool | None:
        return refused_method(ex, b"GET", b"HEAD") or guard(ex, self._logout(ex), self.gate)

    async def _logout(self, ex: Exchange) -> None:
        query = query_of(ex)
        target, client_id = query.get("returnTo"), query.get("clientId")
        if not target:
            location: str | None = "/"
        elif client_id:
            client = await self.store.find_consumer(client_id)
            location = (target if client is not None
                        and client.doc.get("redirectUri") == target else None)
        else:
            location = local_path(target)
        if ex.done:
            return
        if location is None:
            ex.respond(400, f"Invalid return URI {target} for client id {client_id}"
                       .encode("latin-1", "replace"),
                       [(b"content-type", b"text/plain; charset=utf-8")])
            return
        ex.respond(302, b"", [(b"location", location.encode("latin-1", "replace")),
                              self.sessions.end()])

    def _challenge(self, query: dict[str, str]) -> dict[str, str]:
        """The PKCE props a code request asks to keep with its code (RFC 7636 4.3)."""
        try:
            props = challenge_props(query.get("code_challenge"),
                                    query.get("code_challenge_method"))
        except ValueError as exc:
            raise OAuthError("invalid_request", str(exc)) from None
        if not props and self.require_pkce:
            raise OAuthError("invalid_request",
                             "Missing required parameter: code_challenge (PKCE is required)")
        return props


# -- pages ------------------------------------------------------------------------------

def local_path(target: str | None) -> str | None:
    """``target`` if it is a path on this gateway: printable ASCII, no scheme, host, ``//``."""
    if (not target or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(not "!" <= c <= "~" for c in target)):
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


def login_redirect(ex: Exchange) -> None:
    """Send the browser to the login form, to come back to this request."""
    back = ex.path.decode("latin-1")
    ex.respond(302, b"", [(b"location", b"/login?returnTo=" + quote(back, safe="").encode())])


def login_page(ex: Exchange) -> None:
    query = query_of(ex)
    back = local_path(query.get("returnTo")) or "/"
    alert = '<p class="error">Invalid username or password.</p>' if query.get("error") else ""
    _page(ex, "Sign in", f"""{alert}
<form action="/login" method="post">
  <input type="hidden" name="returnTo" value="{html.escape(back)}">
  <label>Username <input name="username" autocomplete="username" required autofocus></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"
    required></label>
  <button type="submit">Sign in</button>
</form>""")


def consent_page(ex: Exchange, user: str, client: str, scopes: list[str] | None,
                 transaction: str) -> None:
    scope_text = ", ".join(scopes) if scopes else "none"
    body = f"""<p>Hi {html.escape(user)}!</p>
<p><b>{html.escape(client)}</b> is requesting access to your account.</p>
<p>Requesting the following scopes: {html.escape(scope_text)}</p>
<p>Do you approve?</p>
<form action="/oauth2/authorize/decision" method="post">
  <input type="hidden" name="transaction_id" value="{html.escape(transaction)}">
  <button type="submit" id="allow">Allow</button>
  <button type="submit" name="cancel" value="Deny" id="deny">Deny</button>
</form>"""
    _page(ex, "Authorize", body, [(b"transaction_id", transaction.encode("latin-1"))])


def _page(ex: Exchange, title: str, body: str, extra: Headers | None = None) -> None:
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem}}
label{{display:block;margin:.8rem 0}}input{{display:block;width:100%;padding:.4rem}}
button{{padding:.5rem 1.2rem;margin-right:.5rem}}.error{{color:#b00020}}</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
    headers: Headers = [_HTML, _NO_STORE, (b"x-frame-options", b"DENY")]
    if extra:
        headers += extra
    if not ex.done:
        ex.respond(200, doc.encode(), headers)


