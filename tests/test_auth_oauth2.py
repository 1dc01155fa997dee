"""The oauth2 policy: its authorization server (/oauth2/token, /oauth2/authorize with its
sign-in and consent pages) and Bearer protection, with opaque store tokens and with JWT
access tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from meshgate.policies._oauth2_session import Signer
from tests.conftest import Backend
from tests.support.gateway import Gateway
from tests.test_auth_key import Admin, auth_config, basic, eventually, upstream_headers

REDIRECT = "https://client.example/callback"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, backend_mod: Backend) -> Iterator[Gateway]:
    # No apiEndpoint matches /oauth2/*: the policy serves it on every host, as EG did.
    config = auth_config(backend_mod.url, [{"oauth2": None}], scopes=["orders"])
    gateway = Gateway(tmp_path_factory.mktemp("oauth2"), config)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def admin(gw: Gateway) -> Admin:
    a = Admin(gw)
    a.scopes("orders", "admin")
    return a


@pytest.fixture
def client(admin: Admin) -> dict[str, Any]:
    """An app with a redirectUri and an oauth2 credential holding scope ``orders``."""
    owner = admin.user()
    app = admin.app(owner["id"], redirectUri=REDIRECT)
    admin.credential(app["id"], "oauth2", secret="client-secret", scopes=["orders"])
    return {"id": app["id"], "secret": "client-secret", "owner": owner}


def token_call(gw: Gateway, data: dict[str, str], auth: tuple[str, str] | None = None,
               **kwargs: Any) -> httpx.Response:
    headers = basic(*auth) if auth else {}
    return httpx.post(gw.url + "/oauth2/token", data=data, headers=headers, timeout=30,
                      **kwargs)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def consent(gw: Gateway, query: dict[str, str], headers: dict[str, str],
            cancel: bool = False) -> httpx.Response:
    """Ask for authorization as a signed-in user, and answer the consent dialog."""
    r = httpx.get(gw.url + "/oauth2/authorize", params=query, headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text
    decision = {"transaction_id": r.headers["transaction_id"]}
    if cancel:
        decision["cancel"] = "Deny"
    return httpx.post(gw.url + "/oauth2/authorize/decision", data=decision, headers=headers,
                      timeout=30)


def test_client_credentials_end_to_end(gw: Gateway, admin: Admin,
                                       client: dict[str, Any]) -> None:
    auth = (client["id"], client["secret"])
    r = token_call(gw, {"grant_type": "client_credentials"}, auth)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert list(body) == ["access_token", "expires_in", "token_type"]
    assert body["token_type"] == "Bearer" and 700 <= body["expires_in"] <= 720
    token = body["access_token"]
    # the same client asking again gets the same live token (EG's findOrSave)
    assert token_call(gw, {"grant_type": "client_credentials"}, auth).json()["access_token"] \
        == token
    r = httpx.get(gw.url + "/open/echo", headers=bearer(token))
    assert r.status_code == 200, r.text
    seen = upstream_headers(r)
    assert seen["eg-consumer-id"] == [client["id"]]
    assert "authorization" not in seen            # EG removed it before proxying
    # no scope in the token: the apiEndpoint's scope is missing
    assert httpx.get(gw.url + "/echo", headers=bearer(token)).status_code == 403
    admin.revoke(token)
    eventually(lambda: httpx.get(gw.url + "/open/echo", headers=bearer(token)).status_code
               == 401)


def test_client_authentication_forms_and_scopes(gw: Gateway, client: dict[str, Any]) -> None:
    body = {"grant_type": "client_credentials", "client_id": client["id"],
            "client_secret": client["secret"], "scope": "orders"}
    r = token_call(gw, body)
    assert r.status_code == 200, r.text
    scoped = r.json()["access_token"]
    assert httpx.get(gw.url + "/echo", headers=bearer(scoped)).status_code == 200
    r = httpx.post(gw.url + "/oauth2/token", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["access_token"] == scoped
    for bad in ({**body, "client_secret": "wrong"}, {**body, "scope": "admin"},
                {"grant_type": "client_credentials"}):
        r = token_call(gw, bad)
        assert r.status_code == 401, bad
        assert r.headers["www-authenticate"] == 'Basic realm="Users"'


def test_token_endpoint_errors(gw: Gateway, client: dict[str, Any]) -> None:
    auth = (client["id"], client["secret"])
    r = token_call(gw, {"grant_type": "magic"}, auth)
    assert r.status_code == 501
    assert r.json() == {"error": "unsupported_grant_type",
                        "error_description": "Unsupported grant type: magic"}
    r = token_call(gw, {"grant_type": "password", "password": "x"}, auth)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert httpx.get(gw.url + "/oauth2/token").status_code == 405
    r = httpx.post(gw.url + "/oauth2/token", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json", **basic(*auth)})
    assert r.status_code == 400


def test_bearer_refusals(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/open/echo")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="Users"'
    r = httpx.get(gw.url + "/open/echo", headers=bearer("nope|nothing"))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="Users", error="invalid_token"'


def test_password_grant_refresh_and_user_deactivation(gw: Gateway, admin: Admin,
                                                      client: dict[str, Any]) -> None:
    user = admin.user()
    admin.credential(user["id"], "basic-auth", password="pw-1")
    auth = (client["id"], client["secret"])
    r = token_call(gw, {"grant_type": "password", "username": user["username"],
                        "password": "wrong"}, auth)
    assert r.status_code == 403 and r.json()["error"] == "invalid_grant"
    r = token_call(gw, {"grant_type": "password", "username": user["username"],
                        "password": "pw-1", "scope": "orders"}, auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["access_token", "refresh_token", "expires_in", "token_type"]
    r = httpx.get(gw.url + "/echo", headers=bearer(body["access_token"]))
    assert r.status_code == 200
    assert upstream_headers(r)["eg-consumer-id"] == [client["id"]]
    admin.revoke(body["access_token"])
    eventually(lambda: httpx.get(gw.url + "/echo", headers=bearer(body["access_token"]))
               .status_code == 401)
    r = token_call(gw, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                   auth)
    assert r.status_code == 200, r.text
    fresh = r.json()["access_token"]
    assert fresh != body["access_token"] and "refresh_token" not in r.json()
    assert httpx.get(gw.url + "/echo", headers=bearer(fresh)).status_code == 200
    # a token granted on a user's behalf ends with the user's credential
    admin.set_status("basic-auth", user["id"], False)
    eventually(lambda: httpx.get(gw.url + "/echo", headers=bearer(fresh)).status_code == 401)
    r = token_call(gw, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                   auth)
    assert r.status_code == 403


def test_authorization_code_and_implicit_grants(gw: Gateway, admin: Admin,
                                                client: dict[str, Any]) -> None:
    user = admin.user()
    admin.credential(user["id"], "basic-auth", password="pw-2")
    login = basic(user["username"], "pw-2")
    query = {"response_type": "code", "client_id": client["id"], "redirect_uri": REDIRECT,
             "scope": "orders", "state": "xyz"}
    r = httpx.get(gw.url + "/oauth2/authorize", params=query, headers=basic("nobody", "x"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="Users"'
    r = httpx.get(gw.url + "/oauth2/authorize", params={**query, "redirect_uri": "https://evil"},
                  headers=login)
    assert r.status_code == 403 and r.json()["error"] == "unauthorized_client"
    r = consent(gw, query, login)
    assert r.status_code == 302, r.text
    location = urlsplit(r.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    params = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert params["state"] == "xyz"
    auth = (client["id"], client["secret"])
    exchange = {"grant_type": "authorization_code", "code": params["code"],
                "redirect_uri": REDIRECT}
    assert token_call(gw, {**exchange, "redirect_uri": "https://evil"}, auth).status_code == 403
    r = token_call(gw, exchange, auth)
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert "refresh_token" in tokens
    assert httpx.get(gw.url + "/echo", headers=bearer(tokens["access_token"])).status_code \
        == 200
    again = token_call(gw, exchange, auth)          # a code is good for one use
    assert again.status_code == 403 and again.json()["error"] == "invalid_grant"
    # implicit: the token comes back in the fragment
    r = consent(gw, {"response_type": "token", "client_id": client["id"]}, login)
    assert r.status_code == 302
    fragment = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).fragment).items()}
    assert fragment["token_type"] == "Bearer"
    assert httpx.get(gw.url + "/open/echo",
                     headers=bearer(fragment["access_token"])).status_code == 200
    r = httpx.get(gw.url + "/oauth2/authorize", headers=login,
                  params={"response_type": "bogus", "client_id": client["id"]})
    assert r.status_code == 501


def test_browser_signs_in_consents_and_signs_out(gw: Gateway, admin: Admin,
                                                 client: dict[str, Any]) -> None:
    """EG's pages: /login, the consent dialog, its decision, /logout; a session cookie."""
    user = admin.user()
    admin.credential(user["id"], "basic-auth", password="pw-3")
    query = {"response_type": "code", "client_id": client["id"], "redirect_uri": REDIRECT,
             "scope": "orders", "state": "s1"}
    # A session signed with the config's secret alone (here the default cipherKey) is
    # refused: the key also holds the store's own random bytes.
    forged = Signer(["sensitiveKey"], b"").sign("s", {"u": user["id"]}, 3600)
    r = httpx.get(gw.url + "/oauth2/authorize", params=query, timeout=30,
                  headers={"cookie": f"meshgate.sid={forged}"})
    assert r.status_code == 302 and r.headers["location"].startswith("/login?")
    with httpx.Client(base_url=gw.url, timeout=30) as browser:
        r = browser.get("/oauth2/authorize", params=query)
        assert r.status_code == 302 and r.headers["location"].startswith("/login?returnTo=")
        form_page = browser.get(r.headers["location"])
        assert form_page.status_code == 200 and 'action="/login"' in form_page.text
        back = parse_qs(urlsplit(r.headers["location"]).query)["returnTo"][0]
        assert back.startswith("/oauth2/authorize?") and f'value="{back.replace("&", "&amp;")}"' \
            in form_page.text
        r = browser.post("/login", data={"username": user["username"], "password": "nope",
                                         "returnTo": back})
        assert r.status_code == 302 and "error=1" in r.headers["location"]
        assert "Invalid username or password" in browser.get(r.headers["location"]).text
        assert not browser.cookies
        r = browser.post("/login", data={"username": user["username"], "password": "pw-3",
                                         "returnTo": back})
        assert r.status_code == 302 and r.headers["location"] == back
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("meshgate.sid=") and "HttpOnly" in cookie \
            and "SameSite=Lax" in cookie
        dialog = browser.get(back)
        assert dialog.status_code == 200 and "orders" in dialog.text
        assert dialog.headers["x-frame-options"] == "DENY"
        transaction = dialog.headers["transaction_id"]
        assert f'value="{transaction}"' in dialog.text
        # Deny, then allow: the client gets access_denied, then a code.
        r = browser.post("/oauth2/authorize/decision",
                         data={"transaction_id": transaction, "cancel": "Deny"})
        denied = parse_qs(urlsplit(r.headers["location"]).query)
        assert r.status_code == 302 and denied == {"error": ["access_denied"], "state": ["s1"]}
        r = browser.post("/oauth2/authorize/decision", data={"transaction_id": transaction})
        code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
        exchange = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        tokens = token_call(gw, exchange, (client["id"], client["secret"])).json()
        assert httpx.get(gw.url + "/echo", headers=bearer(tokens["access_token"])
                         ).status_code == 200
        # A transaction is the signed-in user's own, and cannot be forged.
        forged = transaction[:-2] + ("AA" if not transaction.endswith("AA") else "BB")
        r = browser.post("/oauth2/authorize/decision", data={"transaction_id": forged})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"
        other = admin.user()
        admin.credential(other["id"], "basic-auth", password="pw-4")
        r = httpx.post(gw.url + "/oauth2/authorize/decision", headers=basic(
            other["username"], "pw-4"), data={"transaction_id": transaction})
        assert r.status_code == 400
        r = httpx.post(gw.url + "/oauth2/authorize/decision", data={"transaction_id": transaction})
        assert r.status_code == 403 and r.json()["error"] == "access_denied"
        for method, path, allow in (("GET", "/oauth2/authorize/decision", "POST"),
                                    ("POST", "/logout", "GET, HEAD"),
                                    ("DELETE", "/login", "GET, HEAD, POST")):
            r = browser.request(method, path)
            assert (r.status_code, r.headers["allow"]) == (405, allow)
        # Sign-out: the cookie goes; returnTo must stay on the gateway or be the client's.
        r = browser.get("/logout", params={"returnTo": "https://evil.example/"})
        assert r.status_code == 400
        r = browser.get("/logout", params={"returnTo": REDIRECT, "clientId": client["id"]})
        assert r.status_code == 302 and r.headers["location"] == REDIRECT
        assert "Max-Age=0" in r.headers["set-cookie"] and not browser.cookies
        assert browser.get("/oauth2/authorize", params=query).status_code == 302
        # Nor does sign-in redirect anywhere but here.
        r = browser.post("/login", data={"username": user["username"], "password": "pw-3",
                                         "returnTo": "//evil.example/x"})
        assert r.headers["location"] == "/"
        # Deactivating the user's credential ends the session within a second.
        admin.set_status("basic-auth", user["id"], False)
        eventually(lambda: browser.get("/oauth2/authorize", params=query).status_code == 302)


# -- JWT access tokens ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def jwt_gw(tmp_path_factory: pytest.TempPathFactory, backend_mod: Backend
           ) -> Iterator[tuple[Gateway, bytes]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    directory = tmp_path_factory.mktemp("oauth2jwt")
    (directory / "signing.pem").write_bytes(pem)
    config = auth_config(backend_mod.url, [{"oauth2": None}], scopes=["orders"],
                         extra_paths=["/oauth2/*"])
    system = {"accessTokens": {"tokenType": "jwt", "secretOrPrivateKeyFile": "signing.pem",
                               "algorithm": "RS256", "issuer": "meshgate",
                               "audience": "orders-api", "timeToExpiry": 60000}}
    gateway = Gateway(directory, config, system=system)
    yield gateway, public
    gateway.stop()


def test_jwt_access_tokens(jwt_gw: tuple[Gateway, bytes]) -> None:
    gw, public = jwt_gw
    admin = Admin(gw)
    admin.scopes("orders")
    app = admin.app(admin.user()["id"])
    admin.credential(app["id"], "oauth2", secret="s", scopes=["orders"])
    r = token_call(gw, {"grant_type": "client_credentials", "scope": "orders"}, (app["id"], "s"))
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    claims = jwt.decode(token, public, algorithms=["RS256"], audience="orders-api",
                        issuer="meshgate")
    assert claims["consumerId"] == app["id"] and claims["scopes"] == ["orders"]
    assert claims["exp"] - time.time() <= 60
    r = httpx.get(gw.url + "/echo", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert upstream_headers(r)["eg-consumer-id"] == [app["id"]]
    unscoped = token_call(gw, {"grant_type": "client_credentials"}, (app["id"], "s"))
    assert httpx.get(gw.url + "/echo",
                     headers=bearer(unscoped.json()["access_token"])).status_code == 403
    forged = jwt.encode({**claims, "consumerId": "someone-else"},
                        rsa.generate_private_key(public_exponent=65537, key_size=2048),
                        algorithm="RS256")
    assert httpx.get(gw.url + "/echo", headers=bearer(forged)).status_code == 401
    # JWTs cannot be revoked, but deactivating the client stops them
    admin.set_status("oauth2", app["id"], False)
    eventually(lambda: httpx.get(gw.url + "/echo", headers=bearer(token)).status_code == 401)
