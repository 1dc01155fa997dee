"""CEL expressions (condition and policy) and the authenticated / anonymous conditions."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError

from meshgate.conditions._cel import compile_cel
from meshgate.config.model import ConditionUse
from meshgate.policies import POLICIES
from meshgate.protocol.exchange import Exchange
from tests.conftest import Backend
from tests.support.gateway import Gateway


def exchange(method: bytes = b"GET", path: bytes = b"/", headers: list[tuple[bytes, bytes]]
             | None = None, consumer: Any = None, ip: bytes = b"10.1.2.3") -> Exchange:
    ex = Exchange(None, method, path,  # type: ignore[arg-type]
                  headers if headers is not None else [(b"host", b"api.example.com")],
                  b"api.example.com", b"https", ip, b"1.1", False, 0.0)
    if consumer is not None:
        ex.scratch()["consumer"] = consumer
    return ex


def condition(expression: str) -> Any:
    return ConditionUse.parse({"name": "expression", "expression": expression}).compile()


# -- the language and its variables ---------------------------------------------------------
@pytest.mark.parametrize("expression,expected", [
    ('request.method == "POST"', True),
    ('request.path == "/orders/7" && request.url == "/orders/7?debug=1&x="', True),
    ('request.query.debug == "1" && request.query.x == ""', True),
    ('request.host == "api.example.com" && request.scheme == "https"', True),
    ('request.ip.startsWith("10.")', True),
    ('request.headers["x-tenant"] == "acme, beta"', True),       # repeated header, joined
    ('headers["content-type"].contains("json")', True),
    ('"x-tenant" in request.headers && !has(request.headers.authorization)', True),
    ('request.headers.exists(h, h.startsWith("x-"))', True),
    ('request.path.matches("^/orders/[0-9]+$")', True),
    ('size(request.query) == 2', True),
    ('consumer == null', True),
    ('request.headers["missing"] == "x"', False),                # CEL error -> false
    ('request.method', False),                                   # not a bool -> false
])
def test_expressions_over_the_request(expression: str, expected: bool) -> None:
    ex = exchange(b"POST", b"/orders/7?debug=1&x=", [
        (b"host", b"api.example.com"), (b"x-tenant", b"acme"), (b"x-tenant", b"beta"),
        (b"content-type", b"application/json")])
    assert condition(expression)(ex) is expected


def test_the_consumer_an_auth_policy_set() -> None:
    admin = {"id": "u-1", "username": "ann", "type": "user", "scopes": ["admin", "read"]}
    check = condition('consumer != null && "admin" in consumer.scopes')
    assert check(exchange(consumer=admin)) is True
    assert check(exchange(consumer={**admin, "scopes": ["read"]})) is False
    assert check(exchange()) is False
    named = condition('consumer.name == "ann" && consumer.username == "ann" '
                      '&& consumer.type == "user" && consumer.id == "u-1"')
    assert named(exchange(consumer=admin)) is True

    class App:                                 # consumers may be objects, too
        id = "a-9"
        name = "billing"
        type = "application"
        scopes = ("read",)

    assert condition('consumer.type == "application" && consumer.scopes == ["read"]')(
        exchange(consumer=App())) is True


def test_results_are_memoized_on_exactly_the_inputs_read() -> None:
    program = compile_cel('request.headers["x-v"] == "2" && request.method == "GET"')
    assert program.deps == {("headers", "x-v"), ("request", "method")}
    assert program(exchange(headers=[(b"x-v", b"2")])) is True
    assert program(exchange(headers=[(b"x-v", b"3")])) is False
    assert program(exchange(b"PUT", headers=[(b"x-v", b"2")])) is False
    # Unrelated inputs share the memo entry; the interpreter ran three times.
    assert program(exchange(headers=[(b"x-v", b"2"), (b"other", b"1")], ip=b"1.1.1.1"))
    assert len(program.memo) == 3
    assert compile_cel('request.headers["x-v"] == "2" && request.method == "GET"') is program
    whole = compile_cel("size(request.headers) > 1")
    assert whole.deps == {("headers", None)}


@pytest.mark.parametrize("expression,message", [
    ('request.method ==', "invalid CEL expression at line 1, column"),
    ('request.methd == "GET"', "request has no field 'methd' at column 9"),
    ('req.method == "GET"', "unknown variable 'req'"),
    ('request.headers["X-Key"] == "a"', "use 'x-key', not 'X-Key'"),
])
def test_bad_expressions_fail_validation(expression: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ConditionUse.parse({"name": "expression", "expression": expression})


def test_macro_variables_are_not_unknown() -> None:
    assert condition('["a", "b"].all(x, x.size() == 1)')(exchange()) is True


# -- authenticated / anonymous --------------------------------------------------------------
def test_authenticated_and_anonymous() -> None:
    authenticated = ConditionUse.parse({"name": "authenticated"}).compile()
    anonymous = ConditionUse.parse({"name": "anonymous"}).compile()
    ex = exchange()
    assert (authenticated(ex), anonymous(ex)) == (False, True)
    ex.scratch()["other"] = 1
    assert (authenticated(ex), anonymous(ex)) == (False, True)
    ex.scratch()["consumer"] = {"id": "u-1"}
    assert (authenticated(ex), anonymous(ex)) == (True, False)
    with pytest.raises(ValidationError):
        ConditionUse.parse({"name": "authenticated", "extra": 1})


# -- end to end -------------------------------------------------------------------------
def expression_config(upstream: str) -> dict[str, Any]:
    proxy = {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}
    return {
        "apiEndpoints": {"guard": {"host": "guard.test", "paths": ["/*"]},
                         "custom": {"host": "custom.test", "paths": ["/*"]},
                         "cond": {"host": "cond.test", "paths": ["/*"]}},
        "serviceEndpoints": {"backend": {"url": upstream}},
        "policies": ["expression", "terminate", "proxy"],
        "pipelines": {
            "guard": {"apiEndpoints": ["guard"], "policies": [
                {"expression": [{"action": {
                    "expression": 'request.method == "GET" || '
                                  'request.headers["x-role"] == "writer"'}}]},
                proxy]},
            "custom": {"apiEndpoints": ["custom"], "policies": [
                {"expression": [{"action": {"expression": "consumer != null",
                                            "statusCode": 401, "message": "who are you?"}}]},
                proxy]},
            "cond": {"apiEndpoints": ["cond"], "policies": [
                {"terminate": [{"condition": {"name": "expression",
                                              "expression": 'request.query.block == "yes"'},
                                "action": {"statusCode": 451, "message": "blocked"}}]},
                proxy]},
        },
    }


@pytest.fixture
def gw(backend: Backend, gateway_factory: Any) -> Gateway:
    return gateway_factory(expression_config(backend.url))


def test_expression_policy_guards_the_route(gw: Gateway) -> None:
    def send(method: str, host: str, path: str = "/name", **headers: str) -> httpx.Response:
        return httpx.request(method, gw.url + path, headers={"host": host, **headers},
                             timeout=5)

    assert send("GET", "guard.test").status_code == 200
    r = send("DELETE", "guard.test")
    assert (r.status_code, r.text) == (403, "Forbidden")
    assert send("DELETE", "guard.test", **{"x-role": "writer"}).status_code == 200
    r = send("GET", "custom.test")                 # no auth policy: consumer is null
    assert (r.status_code, r.text) == (401, "who are you?")
    r = send("GET", "cond.test", "/name?block=yes")
    assert (r.status_code, r.text) == (451, "blocked")
    assert send("GET", "cond.test", "/name?block=no").text == "backend"


def validate(tmp_path: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "meshgate", "validate", str(tmp_path)],
                          capture_output=True, text=True)


def test_a_bad_expression_is_a_located_config_error(tmp_path: Path) -> None:
    config = expression_config("http://127.0.0.1:9")
    config["pipelines"]["cond"]["policies"][0]["terminate"][0]["condition"]["expression"] = (
        'request.query.block = "yes"')
    result = validate(tmp_path, config)
    assert result.returncode == 2
    assert ("pipelines.cond.policies[0].terminate[0].condition.expression: "
            "invalid CEL expression at line 1, column") in result.stderr


def test_jscode_is_refused_with_a_hint(tmp_path: Path) -> None:
    config = expression_config("http://127.0.0.1:9")
    config["pipelines"]["guard"]["policies"][0] = {
        "expression": [{"action": {"jscode": "req.url = '/x'"}}]}
    result = validate(tmp_path, config)
    assert result.returncode == 2
    assert "pipelines.guard.policies[0].expression" in result.stderr
    assert "does not run JavaScript" in result.stderr


def test_the_policy_creates_no_coroutine() -> None:
    spec = POLICIES.get("expression")
    assert spec is not None
    action = spec.build(spec.params.model_validate({"expression": "request.method == 'GET'"}),
                        None)  # type: ignore[arg-type]
    assert action(exchange()) is None


def test_consumer_of_a_real_key_auth(backend: Backend, gateway_factory: Any) -> None:
    """key-auth fills ex.vars["consumer"]; anonymous/authenticated and CEL read it."""
    if POLICIES.get("key-auth") is None:
        pytest.skip("key-auth is not available")
    name = f"ann-{uuid.uuid4().hex[:8]}"
    config = expression_config(backend.url)
    config["policies"].append("key-auth")
    config["pipelines"]["guard"]["policies"] = [
        {"key-auth": [{"action": {"passThrough": True}}]},
        {"terminate": [{"condition": {"name": "anonymous"},
                        "action": {"statusCode": 418, "message": "anonymous"}}]},
        {"expression": [{"condition": {"name": "authenticated"}, "action": {
            "expression": f'consumer.name == "{name}" && consumer.type == "user" '
                          '&& consumer.id != null'}}]},
        {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}]
    gw = gateway_factory(config)
    admin = httpx.Client(base_url=gw.admin_url, timeout=30)

    def key_for(username: str) -> str:
        user = admin.post("/users", json={"username": username, "firstname": "A",
                                          "lastname": "B"}).json()
        cred = admin.post("/credentials", json={"consumerId": user["id"], "type": "key-auth",
                                                "credential": {}}).json()
        return f"apiKey {cred['keyId']}:{cred['keySecret']}"

    def send(authorization: str | None) -> httpx.Response:
        headers = {"host": "guard.test"}
        if authorization:
            headers["authorization"] = authorization
        return httpx.get(gw.url + "/name", headers=headers, timeout=5)

    assert send(None).status_code == 418
    assert send(key_for(name)).text == "backend"
    assert send(key_for(f"bob-{uuid.uuid4().hex[:8]}")).status_code == 403
