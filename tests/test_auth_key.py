"""key-auth and basic-auth against real gateways, consumers made through the Admin API.

Also the common outcome every auth policy shares (``policies/_auth``): 401
with a challenge, 403 for a missing apiEndpoint scope (EG: all of them are
needed), ``eg-consumer-id`` upstream (a client-sent one never passes),
passThrough with the anonymous/authenticated conditions, deactivation
taking effect within a second, 503 when the store cannot answer, and the
hot-path rule (a cached answer costs no coroutine).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from meshgate.config.system import SystemConfig
from meshgate.policies import BuildContext
from meshgate.policies.basic_auth import BasicAuthParams
from meshgate.policies.basic_auth import build as basic_auth
from meshgate.policies.jwt_auth import JwtAuth, JwtParams
from meshgate.policies.key_auth import KeyAuthParams
from meshgate.policies.key_auth import build as key_auth
from meshgate.policies.oauth2 import OAuth2, OAuth2Params
from meshgate.protocol.exchange import Exchange
from meshgate.store import open_store_for
from meshgate.store.cache import VerifyCache
from tests.conftest import Backend
from tests.support.gateway import Gateway, proxy_config

# -- helpers shared by the test_auth_* modules -------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Admin:
    """The Admin API calls the auth tests need."""

    def __init__(self, gw: Gateway) -> None:
        self.http = httpx.Client(base_url=gw.admin_url, timeout=30)

    def user(self, **extra: Any) -> dict[str, Any]:
        body = {"username": unique("user"), "firstname": "Ada", "lastname": "L", **extra}
        r = self.http.post("/users", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def app(self, owner: str, **extra: Any) -> dict[str, Any]:
        r = self.http.post("/apps", json={"name": unique("app"), "userId": owner, **extra})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def scopes(self, *names: str) -> None:
        r = self.http.post("/scopes", json={"scopes": list(names)})
        assert r.status_code in (201, 409), r.text

    def credential(self, consumer: str, type_: str, **details: Any) -> dict[str, Any]:
        r = self.http.post("/credentials", json={"consumerId": consumer, "type": type_,
                                                 "credential": details})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def set_status(self, type_: str, id_: str, active: bool) -> None:
        r = self.http.put(f"/credentials/{type_}/{id_}/status", json={"status": active})
        assert r.status_code == 200, r.text

    def revoke(self, token: str) -> None:
        r = self.http.delete(f"/tokens/{token}")
        assert r.status_code == 200, r.text


def eventually(check: Callable[[], bool], within: float = 1.0) -> float:
    """Poll ``check`` until true; the seconds it took (fails past ``within``)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within}s")
        time.sleep(0.02)


def upstream_headers(response: httpx.Response) -> dict[str, list[str]]:
    """The request headers the backend's /echo saw, by lower-case name."""
    out: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def auth_config(upstream: str, policies: list[Any], *, scopes: list[str] | None = None,
                extra_paths: list[str] | None = None) -> dict[str, Any]:
    """``api`` (paths ``/*``, optional scopes) -> policies -> proxy; ``open`` (/open/*)
    -> the same pipeline without scopes; the proxy strips the prefix."""
    config = proxy_config(upstream, policies=policies, proxy_action={"stripPath": True})
    config["apiEndpoints"] = {
        "open": {"host": "*", "paths": ["/open/*", *(extra_paths or [])]},
        "api": {"host": "*", "paths": ["/*"], **({"scopes": scopes} if scopes else {})},
    }
    config["pipelines"]["main"]["apiEndpoints"] = ["open", "api"]
    return config


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def auth_pipeline(policy: str, name: str, paths: list[str], action: dict[str, Any],
                  scopes: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(apiEndpoint, pipeline) for ``name``: ``policy`` with ``action``, then the proxy."""
    endpoint: dict[str, Any] = {"host": "*", "paths": paths}
    if scopes:
        endpoint["scopes"] = scopes
    return endpoint, {"apiEndpoints": [name], "policies": [
        {policy: [{"action": action}]},
        {"proxy": [{"action": {"serviceEndpoint": "backend", "stripPath": True}}]}]}


# -- key-auth ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def key_gw(tmp_path_factory: pytest.TempPathFactory, backend_mod: Backend) -> Iterator[Gateway]:
    config = auth_config(backend_mod.url, [
        {"key-auth": [{"action": {}}]},
    ], scopes=["read", "write"])
    # A second pipeline: key from X-Api-Key without scheme, query disabled, passThrough,
    # then basic-auth with passThrough, and a step only anonymous requests run.
    config["apiEndpoints"]["loose"] = {"host": "*", "paths": ["/loose/*"]}
    config["pipelines"]["loose"] = {"apiEndpoints": ["loose"], "policies": [
        {"key-auth": [{"action": {"apiKeyHeader": "X-Api-Key", "disableHeadersScheme": True,
                                  "disableQueryParam": True, "passThrough": True}}]},
        {"basic-auth": [{"action": {"passThrough": True}}]},
        {"headers": [{"condition": {"name": "anonymous"},
                      "action": {"forwardHeaders": {"x-who": "nobody"}}},
                     {"condition": {"name": "authenticated"},
                      "action": {"forwardHeaders": {"x-who": "${consumer.name}"}}}]},
        {"proxy": [{"action": {"serviceEndpoint": "backend", "stripPath": True}}]},
    ]}
    config["policies"] = sorted({*config["policies"], "headers", "basic-auth"})
    apis = config["apiEndpoints"]
    config["apiEndpoints"] = {"loose": apis["loose"], "open": apis["open"], "api": apis["api"]}
    gw = Gateway(tmp_path_factory.mktemp("keyauth"), config)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def admin(key_gw: Gateway) -> Admin:
    return Admin(key_gw)


def key_of(cred: dict[str, Any]) -> str:
    return f"{cred['keyId']}:{cred['keySecret']}"


def test_key_auth_401_with_challenge_then_200_with_consumer_upstream(
        key_gw: Gateway, admin: Admin) -> None:
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    r = httpx.get(key_gw.url + "/open/echo")
    assert r.status_code == 401
    assert r.text == "Unauthorized"
    assert r.headers["www-authenticate"] == 'apiKey realm="Users"'
    r = httpx.get(key_gw.url + "/open/echo",
                  headers={"authorization": f"apiKey {key_of(cred)}",
                           "eg-consumer-id": "spoofed"})
    assert r.status_code == 200, r.text
    assert upstream_headers(r)["eg-consumer-id"] == [user["id"]]
    # the scheme is case-insensitive; another scheme is no key at all
    ok = httpx.get(key_gw.url + "/open/echo", headers={"authorization": f"APIKEY {key_of(cred)}"})
    assert ok.status_code == 200
    bad = httpx.get(key_gw.url + "/open/echo", headers={"authorization": f"Bearer {key_of(cred)}"})
    assert bad.status_code == 401


def test_key_auth_query_param_and_wrong_secret(key_gw: Gateway, admin: Admin) -> None:
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    assert httpx.get(key_gw.url + f"/open/echo?apiKey={key_of(cred)}").status_code == 200
    wrong = f"{cred['keyId']}:not-the-secret"
    assert httpx.get(key_gw.url + f"/open/echo?apiKey={wrong}").status_code == 401
    assert httpx.get(key_gw.url + f"/open/echo?apiKey={cred['keyId']}").status_code == 401
    assert httpx.get(key_gw.url + "/open/echo?apiKey=nobody:nothing").status_code == 401


def test_key_auth_scopes_all_required_else_403(key_gw: Gateway, admin: Admin) -> None:
    admin.scopes("read", "write")
    user = admin.user()
    both = admin.credential(user["id"], "key-auth", scopes=["read", "write"])
    one = admin.credential(user["id"], "key-auth", scopes=["read"])
    none = admin.credential(user["id"], "key-auth")
    def call(cred: dict[str, Any]) -> int:
        return httpx.get(key_gw.url + "/echo",
                         headers={"authorization": f"apiKey {key_of(cred)}"}).status_code
    assert call(both) == 200
    assert call(one) == 403
    assert call(none) == 403
    assert httpx.get(key_gw.url + "/echo").status_code == 401


def test_key_auth_deactivation_and_reactivation_within_a_second(
        key_gw: Gateway, admin: Admin) -> None:
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    headers = {"authorization": f"apiKey {key_of(cred)}"}
    def status() -> int:
        return httpx.get(key_gw.url + "/open/echo", headers=headers).status_code
    assert status() == 200
    assert status() == 200                       # now cached in the worker
    admin.set_status("key-auth", cred["keyId"], False)
    eventually(lambda: status() == 401, within=1.0)
    admin.set_status("key-auth", cred["keyId"], True)
    eventually(lambda: status() == 200, within=1.0)
    # deactivating the consumer itself counts too
    assert admin.http.put(f"/users/{user['id']}/status", json={"status": False}).status_code \
        == 200
    eventually(lambda: status() == 401, within=1.0)


def test_key_auth_custom_header_pass_through_and_conditions(
        key_gw: Gateway, admin: Admin) -> None:
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    r = httpx.get(key_gw.url + "/loose/echo", headers={"x-api-key": key_of(cred)})
    assert r.status_code == 200
    seen = upstream_headers(r)
    assert seen["eg-consumer-id"] == [user["id"]]
    assert seen["x-who"] == [user["username"]]
    # the basic-auth step found nothing, but the key-auth consumer stays
    assert "eg-consumer-id" not in r.headers
    # no key, a bad key, a spoofed consumer header: all anonymous, nothing forwarded
    for headers in ({}, {"x-api-key": "nobody:nothing"}, {"eg-consumer-id": "admin"}):
        r = httpx.get(key_gw.url + "/loose/echo", headers=headers)
        assert r.status_code == 200, headers
        assert r.headers["eg-consumer-id"] == "anonymous"
        seen = upstream_headers(r)
        assert "eg-consumer-id" not in seen
        assert seen["x-who"] == ["nobody"]
    # the query parameter is disabled on this pipeline
    r = httpx.get(key_gw.url + f"/loose/echo?apiKey={key_of(cred)}")
    assert upstream_headers(r)["x-who"] == ["nobody"]


# -- basic-auth ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def basic_gw(tmp_path_factory: pytest.TempPathFactory, backend_mod: Backend
             ) -> Iterator[Gateway]:
    config = auth_config(backend_mod.url, [{"basic-auth": None}], scopes=["admin"])
    gw = Gateway(tmp_path_factory.mktemp("basicauth"), config)
    yield gw
    gw.stop()


def test_basic_auth_challenge_password_scopes_and_deactivation(basic_gw: Gateway) -> None:
    admin = Admin(basic_gw)
    admin.scopes("admin")
    user = admin.user()
    admin.credential(user["id"], "basic-auth", password="s3cret")
    r = httpx.get(basic_gw.url + "/open/echo")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Basic realm="Users"'
    assert httpx.get(basic_gw.url + "/open/echo",
                     headers=basic(user["username"], "wrong")).status_code == 401
    assert httpx.get(basic_gw.url + "/open/echo",
                     headers={"authorization": "Basic !!notbase64"}).status_code == 401
    r = httpx.get(basic_gw.url + "/open/echo", headers=basic(user["username"], "s3cret"))
    assert r.status_code == 200
    assert upstream_headers(r)["eg-consumer-id"] == [user["id"]]
    # the apiEndpoint's scope is missing: 403, then granted through the Admin API
    assert httpx.get(basic_gw.url + "/echo",
                     headers=basic(user["username"], "s3cret")).status_code == 403
    assert admin.http.put(f"/credentials/basic-auth/{user['id']}/scopes/admin").status_code \
        == 204
    eventually(lambda: httpx.get(basic_gw.url + "/echo", headers=basic(
        user["username"], "s3cret")).status_code == 200)
    admin.set_status("basic-auth", user["id"], False)
    eventually(lambda: httpx.get(basic_gw.url + "/open/echo", headers=basic(
        user["username"], "s3cret")).status_code == 401)


# -- in-process: the hot path and store outages -----------------------------------------------

class _Responder:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, Any]] = []

    def respond(self, ex: Exchange, status: int, body: bytes, headers: Any = None) -> None:
        self.sent.append((status, body, headers))
        ex.done = True


class _Route:
    scopes: tuple[str, ...] = ()


def _exchange(headers: list[tuple[bytes, bytes]], path: bytes = b"/") -> tuple[Exchange,
                                                                               _Responder]:
    responder = _Responder()
    ex = Exchange(responder, b"GET", path, list(headers), b"localhost", b"http",  # type: ignore[arg-type]
                  b"127.0.0.1", b"1.1", False, 0.0)
    ex.route = _Route()
    return ex, responder


def _context(tmp_path: Path, system: dict[str, Any] | None = None) -> BuildContext:
    return BuildContext({}, SystemConfig.model_validate(system or {}), "main", ["api"],
                        config_dir=tmp_path)


def test_cached_answers_create_no_coroutine(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx = _context(tmp_path)
        store = ctx.services.get("store", lambda: open_store_for(ctx.system, tmp_path))
        user = await store.create_user({"username": "hot", "firstname": "H", "lastname": "P"})
        key = await store.create_credential(user["id"], "key-auth", {})
        await store.create_credential(user["id"], "basic-auth", {"password": "pw"})
        jwt_cred = await store.create_credential(user["id"], "jwt", {})
        app = await store.create_app({"name": "hot-app"}, user["id"])
        _, opaque = await store.issue_token("access_token", app["id"], ttl_ms=60000)
        # An answer computed while the store changed is not cached: let the writes settle.
        await store.refresh()
        signed = jwt.encode({"sub": jwt_cred["keyId"]}, "k" * 32, algorithm="HS256")
        cases: list[tuple[Callable[[Exchange], Any], str, str]] = [
            (key_auth(KeyAuthParams.model_validate({}), ctx),
             f"apiKey {key['keyId']}:{key['keySecret']}", user["id"]),
            (basic_auth(BasicAuthParams.model_validate({}), ctx),
             basic("hot", "pw")["authorization"], user["id"]),
            (JwtAuth(JwtParams.model_validate({"secretOrPublicKey": "k" * 32}), ctx),
             f"Bearer {signed}", user["id"]),
            (OAuth2(OAuth2Params.model_validate({}), ctx), f"Bearer {opaque}", app["id"]),
        ]
        for policy, sent, who in cases:
            header = (b"authorization", sent.encode())
            ex, _ = _exchange([header])
            first = policy(ex)                   # a miss: the store is read
            assert inspect.isawaitable(first)
            assert await first is None
            ex, responder = _exchange([header])
            assert policy(ex) is None            # a hit: synchronous, no awaitable
            assert ex.vars is not None and ex.vars["consumer"]["id"] == who
            assert (b"eg-consumer-id", who.encode()) in ex.headers
            assert responder.sent == []
        by_key = cases[0][0]
        ex, responder = _exchange([(b"authorization", b"apiKey nobody:nothing")])
        outcome = by_key(ex)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        assert outcome is True and responder.sent[0][0] == 401
        ex, responder = _exchange([(b"authorization", b"apiKey nobody:nothing")])
        assert by_key(ex) is True                # the refusal is cached too
        await store.close()
    asyncio.run(scenario())


def test_store_failure_answers_503_even_with_pass_through(tmp_path: Path) -> None:
    class Broken:
        cache = VerifyCache()                    # never fresh: every look-up misses

        async def verify(self, *args: Any) -> Any:
            raise ConnectionError("redis is down")

    async def scenario() -> None:
        ctx = _context(tmp_path)
        ctx.services.get("store", Broken)
        for pass_through in (False, True):
            policy = key_auth(KeyAuthParams.model_validate({"passThrough": pass_through}), ctx)
            ex, responder = _exchange([(b"authorization", b"apiKey a:b")])
            outcome = policy(ex)
            assert inspect.isawaitable(outcome)
            assert await outcome is True
            assert responder.sent[0][0] == 503
    asyncio.run(scenario())


def test_a_header_seen_before_follows_the_cache_rules(tmp_path: Path) -> None:
    """The policy's memo of admitted header values obeys revocation and staleness."""
    async def scenario() -> None:
        ctx = _context(tmp_path)
        store = ctx.services.get("store", lambda: open_store_for(ctx.system, tmp_path))
        user = await store.create_user({"username": "seen", "firstname": "S", "lastname": "N"})
        key = await store.create_credential(user["id"], "key-auth", {})
        await store.refresh()
        policy = key_auth(KeyAuthParams.model_validate({}), ctx)
        header = (b"authorization", f"apiKey {key['keyId']}:{key['keySecret']}".encode())

        async def outcome(sent: tuple[bytes, bytes]) -> tuple[Any, bool, _Responder]:
            ex, responder = _exchange([sent])
            result = policy(ex)
            waited = inspect.isawaitable(result)
            return (await result if waited else result), waited, responder

        assert (await outcome(header))[:2] == (None, True)      # the store is read
        assert (await outcome(header))[:2] == (None, False)     # the cache answers
        assert len(policy.seen) == 1                           # type: ignore[attr-defined]
        assert (await outcome(header))[:2] == (None, False)     # the memo answers
        # Same key id, another secret: not the header seen, so the store says no.
        wrong = (b"authorization", f"apiKey {key['keyId']}:nope".encode())
        assert (await outcome(wrong))[0] is True

        # A change to the store (here: this process's write) invalidates the memo.
        await store.set_credential_status("key-auth", key["keyId"], False)
        result, waited, responder = await outcome(header)
        assert (result, waited, responder.sent[0][0]) == (True, True, 401)

        # A cache the poller has not refreshed lately is not trusted either.
        await store.set_credential_status("key-auth", key["keyId"], True)
        await store.refresh()
        for _ in range(10):                                   # until answered from memory
            if not (await outcome(header))[1]:
                break
            await store.refresh()
        assert (await outcome(header))[:2] == (None, False)
        store.cache.fresh_until = 0.0
        assert (await outcome(header))[:2] == (None, True)
        await store.close()
    asyncio.run(scenario())
