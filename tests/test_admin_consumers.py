"""Express Gateway's consumer Admin API, called as EG's docs and CLI call it.

One real gateway serves the module (each test uses its own names); paths,
bodies and status codes are EG's (``lib/rest/routes``), trailing slashes as
EG's CLI sends them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, proxy_config


def minimal_config() -> dict[str, Any]:
    return proxy_config("http://127.0.0.1:9")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("admin"), minimal_config())
    yield gateway
    gateway.stop()


@pytest.fixture
def admin(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.admin_url, timeout=30) as client:
        yield client


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_user(admin: httpx.Client, username: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"username": username or name("user"), "firstname": "Ada", "lastname": "Lovelace",
            **extra}
    response = admin.post("/users/", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def make_scopes(admin: httpx.Client, *scopes: str) -> None:
    assert admin.post("/scopes/", json={"scopes": list(scopes)}).status_code == 201


def credential(admin: httpx.Client, consumer: str, type_: str,
               **details: Any) -> dict[str, Any]:
    response = admin.post("/credentials/", json={"consumerId": consumer, "type": type_,
                                                 "credential": details})
    assert response.status_code == 200, response.text
    return dict(response.json())


# -- users -----------------------------------------------------------------------------

def test_create_user_answers_eg_shape_and_duplicate_is_409(admin: httpx.Client) -> None:
    username = name("bob")
    user = make_user(admin, username, email="bob@example.com",
                     redirectUri="https://example.com/cb")
    assert user["username"] == username and user["isActive"] is True
    assert uuid.UUID(user["id"])
    assert user["email"] == "bob@example.com"
    assert user["createdAt"].endswith("(Coordinated Universal Time)")
    again = admin.post("/users", json={"username": username, "firstname": "B", "lastname": "C"})
    assert again.status_code == 409
    assert again.text == "username already exists"


def test_get_user_by_username_or_id_and_404(admin: httpx.Client) -> None:
    user = make_user(admin)
    assert admin.get(f"/users/{user['username']}").json() == user
    assert admin.get(f"/users/{user['id']}").json() == user
    missing = admin.get("/users/nobody-here")
    assert missing.status_code == 404
    assert missing.text == "User not found: nobody-here"


def test_list_users_pages_with_start_and_next_key(admin: httpx.Client) -> None:
    made = {make_user(admin)["id"] for _ in range(3)}
    seen: list[str] = []
    start = 0
    for _ in range(100):
        page = admin.get("/users", params={"start": start, "count": 2}).json()
        assert set(page) == {"users", "nextKey"} and len(page["users"]) <= 2
        seen.extend(u["id"] for u in page["users"])
        start = page["nextKey"]
        if start == 0:
            break
    assert made <= set(seen)
    assert len(seen) == len(set(seen))


def test_update_user_keeps_username_and_refuses_unknown_fields(admin: httpx.Client) -> None:
    user = make_user(admin)
    response = admin.put(f"/users/{user['username']}",
                         json={"firstname": "Grace", "username": "renamed"})
    assert response.status_code == 200
    updated = response.json()
    assert updated["firstname"] == "Grace" and updated["username"] == user["username"]
    bad = admin.put(f"/users/{user['id']}", json={"shoeSize": 44})
    assert bad.status_code == 422 and "shoeSize" in bad.json()["error"]
    assert admin.put(f"/users/{user['id']}", json={"email": "not-mail"}).status_code == 422
    assert admin.put("/users/nobody-here", json={"firstname": "X"}).status_code == 404


def test_user_status_words_and_cascade_to_apps(admin: httpx.Client) -> None:
    user = make_user(admin)
    app = admin.post("/apps", json={"name": name("app"), "userId": user["id"]}).json()
    path = f"/users/{user['username']}/status"
    assert admin.put(path, json={"status": True}).json() == {"status": "Active"}
    assert admin.put(path, json={"status": False}).json() == {"status": "Deactivated"}
    assert admin.put(path, json={"status": False}).json() == {"status": "Inactive"}
    assert admin.get(f"/apps/{app['id']}").json()["isActive"] is False
    assert admin.put(path, json={"status": True}).json() == {"status": "Activated"}
    assert admin.get(f"/users/{user['id']}").json()["isActive"] is True
    missing = admin.put("/users/nobody-here/status", json={"status": True})
    assert missing.status_code == 404 and missing.text == "user not found: nobody-here"


def test_delete_user_removes_apps_and_credentials(admin: httpx.Client) -> None:
    user = make_user(admin)
    app = admin.post("/apps", json={"name": name("app"), "userId": user["username"]}).json()
    key = credential(admin, user["id"], "key-auth")
    app_key = credential(admin, app["id"], "key-auth")
    assert admin.delete(f"/users/{user['username']}").status_code == 204
    assert admin.get(f"/users/{user['id']}").status_code == 404
    assert admin.get(f"/apps/{app['id']}").status_code == 404
    assert admin.get(f"/credentials/key-auth/{key['keyId']}").status_code == 404
    assert admin.get(f"/credentials/key-auth/{app_key['keyId']}").status_code == 404
    assert admin.delete(f"/users/{user['id']}").status_code == 404


# -- apps ---------------------------------------------------------------------------------

def test_app_lifecycle(admin: httpx.Client) -> None:
    user = make_user(admin)
    app_name = name("app")
    created = admin.post("/apps/", json={"name": app_name, "redirectUri": "http://localhost/cb",
                                         "userId": user["username"]})
    assert created.status_code == 200, created.text
    app = created.json()
    assert app["userId"] == user["id"] and app["isActive"] is True and uuid.UUID(app["id"])
    assert admin.get(f"/apps/{app_name}").json() == app
    assert admin.get(f"/apps/{app['id']}").json() == app

    twin = admin.post("/apps", json={"name": app_name, "userId": user["id"]})
    assert twin.status_code == 409
    other = make_user(admin)
    assert admin.post("/apps", json={"name": app_name, "userId": other["id"]}).status_code == 200
    ambiguous = admin.get(f"/apps/{app_name}")
    assert ambiguous.status_code == 409 and "Multiple applications" in ambiguous.text

    updated = admin.put(f"/apps/{app['id']}", json={"redirectUri": "https://example.com/x"})
    assert updated.status_code == 200 and updated.json()["redirectUri"] == "https://example.com/x"
    assert admin.put(f"/apps/{app['id']}", json={"redirectUri": "no uri"}).status_code == 422
    status = f"/apps/{app['id']}/status"
    assert admin.put(status, json={"status": False}).json() == {"status": "Deactivated"}
    assert admin.put(status, json={"status": False}).json() == {"status": "Inactive"}
    assert admin.put(status, json={"status": True}).json() == {"status": "Activated"}
    assert admin.delete(f"/apps/{app['id']}").status_code == 204
    gone = admin.get(f"/apps/{app['id']}")
    assert gone.status_code == 404 and gone.text == f"Application not found: {app['id']}"
    assert admin.delete(f"/apps/{app['id']}").status_code == 404
    assert admin.put(f"/apps/{app['id']}/status", json={"status": True}).status_code == 404


def test_app_needs_an_existing_owner(admin: httpx.Client) -> None:
    response = admin.post("/apps", json={"name": name("app"), "userId": "nobody-here"})
    assert response.status_code == 409          # EG's status and words
    assert response.text == "The specified user does not exist"
    missing = admin.post("/apps", json={"name": name("app")})
    assert missing.status_code == 422 and "userId" in missing.json()["error"]
    user = make_user(admin)
    unnamed = admin.post("/apps", json={"userId": user["id"]})
    assert unnamed.status_code == 422 and "name" in unnamed.json()["error"]


def test_list_apps(admin: httpx.Client) -> None:
    user = make_user(admin)
    ids = {admin.post("/apps", json={"name": name("app"), "userId": user["id"]}).json()["id"]
           for _ in range(2)}
    listed = admin.get("/apps").json()
    assert set(listed) == {"apps", "nextKey"}
    assert ids <= {a["id"] for a in listed["apps"]}


# -- credentials ------------------------------------------------------------------------------

def test_key_auth_credentials(admin: httpx.Client) -> None:
    user = make_user(admin)
    read, write = name("read"), name("write")
    make_scopes(admin, read, write)
    key = credential(admin, user["username"], "key-auth", scopes=[read])
    assert key["isActive"] is True and key["consumerId"] == user["id"]
    assert key["id"] == key["keyId"] and len(key["keyId"]) == 22 and key["keySecret"]
    assert key["scopes"] == [read]
    chosen = credential(admin, user["id"], "key-auth", keyId=name("kid"), keySecret="s3cret")
    assert chosen["keySecret"] == "s3cret" and chosen["scopes"] is None

    shown = admin.get(f"/credentials/key-auth/{key['keyId']}").json()
    assert "keySecret" not in shown and "keySecretHash" not in shown
    assert shown["type"] == "key-auth" and shown["consumerId"] == user["id"]

    again = admin.post("/credentials", json={"consumerId": user["id"], "type": "key-auth",
                                             "credential": {"keyId": chosen["keyId"]}})
    assert again.status_code == 409

    listed = admin.get(f"/credentials/{user['username']}").json()["credentials"]
    assert {c["keyId"] for c in listed} == {key["keyId"], chosen["keyId"]}
    everything = admin.get("/credentials").json()["credentials"]
    assert all("consumerId" in c for c in everything)
    assert key["keyId"] in {c["id"] for c in everything}

    base = f"/credentials/key-auth/{key['keyId']}"
    assert admin.put(f"{base}/status", json={"status": False}).json() == {"status": "Deactivated"}
    assert admin.put(f"{base}/status", json={"status": False}).json() == {"status": "Inactive"}
    assert admin.put(f"{base}/status", json={"status": True}).json() == {"status": "Activated"}

    assert admin.put(f"{base}/scopes/{write}").status_code == 204
    assert admin.get(base).json()["scopes"] == [read, write]
    assert admin.delete(f"{base}/scopes/{read}").status_code == 204
    assert admin.get(base).json()["scopes"] == [write]
    assert admin.put(f"{base}/scopes/", json={"scopes": [read, write]}).status_code == 204
    assert admin.get(base).json()["scopes"] == [read, write]
    unknown = admin.put(f"{base}/scopes/{name('nope')}")
    assert unknown.status_code == 422 and "scopes don't exist" in unknown.json()["error"]


def test_credential_not_found_answers(admin: httpx.Client) -> None:
    missing = admin.get("/credentials/key-auth/no-such-key")
    assert missing.status_code == 404 and missing.text == "No credential found with id: no-such-key"
    assert admin.put("/credentials/key-auth/no-such-key/status",
                     json={"status": True}).status_code == 404
    assert admin.put("/credentials/key-auth/no-such-key/scopes/x").status_code in (404, 422)
    assert admin.delete("/credentials/key-auth/no-such-key/scopes/x").status_code == 404
    assert admin.get("/credentials/no-such-consumer").status_code == 404
    nobody = admin.post("/credentials", json={"consumerId": "no-such-consumer",
                                              "type": "key-auth"})
    assert nobody.status_code == 422
    assert nobody.json()["error"] == "No consumer found with id: no-such-consumer"
    user = make_user(admin)
    bad_type = admin.post("/credentials", json={"consumerId": user["id"], "type": "magic"})
    assert bad_type.status_code == 422
    assert bad_type.json()["error"] == "Invalid credential type: magic"
    assert admin.get(f"/credentials/magic/{user['id']}").status_code == 422


def test_basic_auth_one_active_per_consumer(admin: httpx.Client) -> None:
    user = make_user(admin)
    given = credential(admin, user["username"], "basic-auth", password="pa55word")
    assert given["id"] == user["id"] and "password" not in given
    second = admin.post("/credentials", json={"consumerId": user["id"], "type": "basic-auth",
                                              "credential": {"password": "x"}})
    assert second.status_code == 409
    assert second.text == "Credential already exists and is active"
    base = f"/credentials/basic-auth/{user['id']}"
    assert admin.put(f"{base}/status", json={"status": False}).json() == {"status": "Deactivated"}
    generated = credential(admin, user["id"], "basic-auth")
    assert generated["password"] and generated["isActive"] is True
    shown = admin.get(base).json()
    assert "password" not in shown and "passwordHash" not in shown
    other = make_user(admin)
    refused = admin.post("/credentials", json={
        "consumerId": other["id"], "type": "basic-auth",
        "credential": {"autoGeneratePassword": False}})
    assert refused.status_code == 422 and refused.json()["error"] == "password is required"


def test_oauth2_and_jwt_credentials(admin: httpx.Client) -> None:
    user = make_user(admin)
    app = admin.post("/apps", json={"name": name("app"), "userId": user["id"],
                                    "redirectUri": "https://example.com/cb"}).json()
    oauth = credential(admin, app["id"], "oauth2")
    assert oauth["id"] == app["id"] and oauth["secret"]
    assert "secret" not in admin.get(f"/credentials/oauth2/{app['id']}").json()
    chosen = credential(admin, user["id"], "oauth2", secret="client-secret")
    assert "secret" not in chosen

    jwt = credential(admin, app["name"], "jwt")
    assert jwt["keyId"] and jwt["keySecret"] and jwt["consumerId"] == app["id"]
    shown = admin.get(f"/credentials/jwt/{jwt['keyId']}").json()
    assert shown["keySecret"] == jwt["keySecret"]      # EG showed jwt secrets; HS needs them
    assert "keySecretSealed" not in shown


def test_delete_credential(admin: httpx.Client) -> None:
    user = make_user(admin)
    key = credential(admin, user["id"], "key-auth")
    assert admin.delete(f"/credentials/key-auth/{key['keyId']}").status_code == 204
    assert admin.get(f"/credentials/key-auth/{key['keyId']}").status_code == 404
    assert admin.delete(f"/credentials/key-auth/{key['keyId']}").status_code == 404


# -- scopes and tokens ---------------------------------------------------------------------------

def test_scopes(gateway_factory: Any) -> None:
    gw = gateway_factory(minimal_config())
    with httpx.Client(base_url=gw.admin_url, timeout=30) as admin:
        assert admin.get("/scopes").json() == {"scopes": None}     # EG's answer for none
        created = admin.post("/scopes", json={"scopes": ["read", "write"]})
        assert created.status_code == 201 and created.content == b""
        duplicate = admin.post("/scopes", json={"scopes": ["admin", "read"]})
        assert duplicate.status_code == 409
        assert duplicate.text == "One or more scopes already exist."
        assert admin.get("/scopes/admin").status_code == 404     # nothing of a refused batch
        assert sorted(admin.get("/scopes").json()["scopes"]) == ["read", "write"]
        assert admin.get("/scopes/read").json() == {"scope": "read"}
        missing = admin.get("/scopes/nope")
        assert missing.status_code == 404 and missing.text == "scope not found: nope"
        assert admin.put("/scopes/admin").status_code == 201
        assert admin.put("/scopes/admin").status_code == 409

        user = make_user(admin)
        key = credential(admin, user["id"], "key-auth", scopes=["read", "admin"])
        assert admin.delete("/scopes/admin").status_code == 204
        assert admin.delete("/scopes/admin").status_code == 404
        assert admin.get(f"/credentials/key-auth/{key['keyId']}").json()["scopes"] == ["read"]
        one = credential(admin, user["id"], "key-auth", scopes="write")
        assert one["scopes"] == ["write"]


def test_revoke_token(gw: Gateway, admin: httpx.Client) -> None:
    from meshgate.config.loader import load_config
    from meshgate.store import open_store

    user = make_user(admin)
    app = admin.post("/apps", json={"name": name("app"), "userId": user["id"]}).json()

    async def issue() -> str:
        store = open_store(load_config(gw.directory))
        try:
            _, presented = await store.issue_token("access_token", app["id"], ttl_ms=60000)
            assert await store.verify_token(presented) is not None
            return presented
        finally:
            await store.close()

    presented = asyncio.run(issue())
    revoked = admin.delete(f"/tokens/{presented}")
    assert revoked.status_code == 200, revoked.text
    again = admin.delete(f"/tokens/{presented}")
    assert again.status_code == 404 and again.text.startswith("token not found: ")


# -- bad input never costs a 500 -------------------------------------------------------------------

BODY_ROUTES = [
    ("POST", "/users"), ("PUT", "/users/{user}"), ("PUT", "/users/{user}/status"),
    ("POST", "/apps"), ("PUT", "/apps/{app}"), ("PUT", "/apps/{app}/status"),
    ("POST", "/credentials"), ("PUT", "/credentials/key-auth/{key}/status"),
    ("PUT", "/credentials/key-auth/{key}/scopes"), ("POST", "/scopes"),
]


@pytest.fixture(scope="module")
def targets(gw: Gateway) -> dict[str, str]:
    with httpx.Client(base_url=gw.admin_url, timeout=30) as admin:
        user = make_user(admin)
        app = admin.post("/apps", json={"name": name("app"), "userId": user["id"]}).json()
        key = credential(admin, user["id"], "key-auth")
    return {"user": user["id"], "app": app["id"], "key": key["keyId"]}


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\"text\"", b"\xff\xfe"])
def test_malformed_bodies_are_400(admin: httpx.Client, targets: dict[str, str], method: str,
                                  path: str, raw: bytes) -> None:
    response = admin.request(method, path.format(**targets), content=raw,
                             headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]


WRONG_BODIES = [
    ("POST", "/users", {"username": 5, "firstname": {}, "lastname": "x"}),
    ("POST", "/users", {"username": "x"}),
    ("POST", "/users", {"username": name("u"), "firstname": "a", "lastname": "b", "id": "x"}),
    ("PUT", "/users/{user}", {"firstname": ["list"]}),
    ("PUT", "/users/{user}/status", {}),
    ("PUT", "/users/{user}/status", {"status": "true"}),
    ("POST", "/apps", {"name": {"x": 1}, "userId": "{user}"}),
    ("POST", "/apps", {"name": "x", "userId": ["{user}"]}),
    ("PUT", "/apps/{app}", {"owner": "me"}),
    ("PUT", "/apps/{app}/status", {"status": None}),
    ("POST", "/credentials", {}),
    ("POST", "/credentials", {"consumerId": "{user}"}),
    ("POST", "/credentials", {"consumerId": "{user}", "type": "key-auth", "credential": "x"}),
    ("POST", "/credentials", {"consumerId": "{user}", "type": "key-auth",
                              "credential": {"scopes": [1]}}),
    ("POST", "/credentials", {"consumerId": "{user}", "type": "key-auth",
                              "credential": {"keyId": "a:b"}}),
    ("POST", "/credentials", {"consumerId": "{user}", "type": "jwt",
                              "credential": {"keySecret": {"x": 1}}}),
    ("POST", "/credentials", {"consumerId": "{user}", "type": "basic-auth",
                              "credential": {"autoGeneratePassword": "no"}}),
    ("POST", "/credentials", {"consumerId": 42, "type": "key-auth"}),
    ("PUT", "/credentials/key-auth/{key}/status", {"status": 1}),
    ("PUT", "/credentials/key-auth/{key}/scopes", {}),
    ("PUT", "/credentials/key-auth/{key}/scopes", {"scopes": {"a": 1}}),
    ("POST", "/scopes", {}),
    ("POST", "/scopes", {"scopes": [None]}),
    ("POST", "/scopes", {"scopes": 7}),
]


def _fill(value: Any, targets: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**targets)
    if isinstance(value, list):
        return [_fill(v, targets) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, targets) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "body"), WRONG_BODIES)
def test_wrong_fields_are_422_with_a_message(admin: httpx.Client, targets: dict[str, str],
                                             method: str, path: str, body: Any) -> None:
    response = admin.request(method, path.format(**targets), json=_fill(body, targets))
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_bad_query_parameters_are_422(admin: httpx.Client) -> None:
    for params in ({"count": "lots"}, {"start": "-1"}, {"count": "0"}):
        assert admin.get("/users", params=params).status_code == 422
        assert admin.get("/apps", params=params).status_code == 422


# -- the optional admin key ------------------------------------------------------------------------

def test_admin_key_guards_everything_but_probes(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, minimal_config(), env={"MESHGATE_ADMIN_KEY": "k3y"})
    try:
        with httpx.Client(base_url=gw.admin_url, timeout=30) as admin:
            assert admin.get("/ready").status_code == 200
            assert admin.get("/metrics").status_code == 200
            denied = admin.get("/users")
            assert denied.status_code == 401 and denied.json()["error"]
            assert denied.headers["www-authenticate"].startswith("Bearer")
            assert admin.get("/users", headers={"Authorization": "Bearer nope"}).status_code == 401
            assert admin.post("/scopes", json={"scopes": ["a"]}).status_code == 401
            ok = admin.get("/users", headers={"Authorization": "Bearer k3y"})
            assert ok.status_code == 200 and ok.json() == {"users": [], "nextKey": 0}
    finally:
        gw.stop()
