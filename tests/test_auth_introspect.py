"""oauth2-introspect against a tiny RFC 7662 introspection server started by the test."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import yaml

from meshgate.config.errors import ConfigError
from meshgate.config.loader import load_config
from tests.conftest import Backend
from tests.support.gateway import Gateway, proxy_config
from tests.test_auth_key import auth_pipeline, upstream_headers

AUTHORIZATION = "Basic Z2F0ZXdheTpzZWNyZXQ="


class Introspection:
    """``POST /introspect``: answers from ``tokens``; ``/broken`` 500s; ``/slow`` stalls."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.seen: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                owner.seen.append({"path": self.path, "form": form,
                                   "authorization": self.headers.get("authorization"),
                                   "content-type": self.headers.get("content-type")})
                owner.calls[form.get("token", "")] += 1
                if self.path == "/broken":
                    self._send(500, b"oops")
                elif self.path == "/slow":
                    time.sleep(1.5)
                    self._send(200, b'{"active": true}')
                elif self.headers.get("authorization") != AUTHORIZATION:
                    self._send(401, b'{"error": "invalid_client"}')
                else:
                    answer = owner.tokens.get(form.get("token", ""), {"active": False})
                    self._send(200, json.dumps(answer).encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def idp() -> Iterator[Introspection]:
    server = Introspection()
    yield server
    server.stop()


def _pipeline(name: str, paths: list[str], action: dict[str, Any],
              scopes: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    return auth_pipeline("oauth2-introspect", name, paths, action, scopes)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, idp: Introspection) -> Iterator[Gateway]:
    backend = Backend("backend")
    config = proxy_config(backend.url)
    config["policies"] = ["oauth2-introspect", "proxy"]
    good = {"endpoint": idp.url + "/introspect", "authorization_value": AUTHORIZATION}
    pipelines: dict[str, tuple[list[str], dict[str, Any], list[str] | None]] = {
        "open": (["/open/*"], good, None),
        "scoped": (["/scoped/*"], good, ["orders"]),
        "nocache": (["/nocache/*"], {**good, "ttl": 0}, None),
        "noauth": (["/noauth/*"], {"endpoint": idp.url + "/introspect"}, None),
        "broken": (["/broken/*"], {**good, "endpoint": idp.url + "/broken"}, None),
        "slow": (["/slow/*"], {**good, "endpoint": idp.url + "/slow", "timeout": 300}, None),
        "loose": (["/loose/*"], {**good, "passThrough": True}, None),
    }
    config["apiEndpoints"], config["pipelines"] = {}, {}
    for name, (paths, action, scopes) in pipelines.items():
        endpoint, pipeline = _pipeline(name, paths, action, scopes)
        config["apiEndpoints"][name] = endpoint
        config["pipelines"][name] = pipeline
    gateway = Gateway(tmp_path_factory.mktemp("introspect"), config)
    yield gateway
    gateway.stop()
    backend.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_active_token_becomes_the_consumer_and_is_cached(gw: Gateway,
                                                         idp: Introspection) -> None:
    idp.tokens["tok-alice"] = {"active": True, "sub": "u-1", "username": "alice",
                               "scope": "orders read", "exp": int(time.time()) + 300}
    r = httpx.get(gw.url + "/open/echo", headers=bearer("tok-alice"))
    assert r.status_code == 200, r.text
    assert upstream_headers(r)["eg-consumer-id"] == ["u-1"]
    request = idp.seen[-1]
    assert request["form"] == {"token": "tok-alice", "token_type_hint": "access_token"}
    assert request["authorization"] == AUTHORIZATION
    assert request["content-type"] == "application/x-www-form-urlencoded"
    for _ in range(5):
        assert httpx.get(gw.url + "/scoped/echo", headers=bearer("tok-alice")).status_code \
            == 200
    assert idp.calls["tok-alice"] == 2          # once per policy instance, then cached
    # ttl 0: asked every time
    for _ in range(3):
        assert httpx.get(gw.url + "/nocache/echo", headers=bearer("tok-alice")).status_code \
            == 200
    assert idp.calls["tok-alice"] >= 5


def test_inactive_unknown_and_missing_tokens_are_401(gw: Gateway, idp: Introspection) -> None:
    idp.tokens["tok-off"] = {"active": False, "sub": "u-2"}
    r = httpx.get(gw.url + "/open/echo", headers=bearer("tok-off"))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="Users", error="invalid_token"'
    assert httpx.get(gw.url + "/open/echo", headers=bearer("never-issued")).status_code == 401
    r = httpx.get(gw.url + "/open/echo")
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="Users"'
    r = httpx.get(gw.url + "/loose/echo", headers=bearer("tok-off"))
    assert r.status_code == 200 and r.headers["eg-consumer-id"] == "anonymous"


def test_scopes_from_the_answer(gw: Gateway, idp: Introspection) -> None:
    idp.tokens["tok-read"] = {"active": True, "client_id": "app-9", "scope": "read"}
    r = httpx.get(gw.url + "/open/echo", headers=bearer("tok-read"))
    assert r.status_code == 200
    assert upstream_headers(r)["eg-consumer-id"] == ["app-9"]
    assert httpx.get(gw.url + "/scoped/echo", headers=bearer("tok-read")).status_code == 403


def test_endpoint_failures_are_503(gw: Gateway, idp: Introspection) -> None:
    idp.tokens["tok-x"] = {"active": True, "sub": "x"}
    assert httpx.get(gw.url + "/broken/echo", headers=bearer("tok-x")).status_code == 503
    started = time.monotonic()
    r = httpx.get(gw.url + "/slow/echo", headers=bearer("tok-x"), timeout=10)
    assert r.status_code == 503
    assert time.monotonic() - started < 1.2      # the 300 ms timeout, not the 1.5 s stall
    # the endpoint refuses the gateway (no authorization_value): an outage, not a verdict
    assert httpx.get(gw.url + "/noauth/echo", headers=bearer("tok-x")).status_code == 503


def test_concurrent_requests_share_one_introspection(gw: Gateway, idp: Introspection) -> None:
    idp.tokens["tok-burst"] = {"active": True, "sub": "b"}
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(
            lambda _: httpx.get(gw.url + "/open/echo", headers=bearer("tok-burst")).status_code,
            range(16)))
    assert statuses == [200] * 16
    assert idp.calls["tok-burst"] == 1


@pytest.mark.parametrize("action", [{}, {"endpoint": "ftp://example.com/x"},
                                    {"endpoint": "http://x/", "ttl": -1}])
def test_invalid_params(tmp_path: Any, action: dict[str, Any]) -> None:
    config = proxy_config("http://127.0.0.1:9",
                          policies=[{"oauth2-introspect": [{"action": action}]}])
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError):
        load_config(tmp_path, env={})
