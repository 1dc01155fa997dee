"""The cors policy: preflights answered before auth, headers on every kind of response."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from meshgate.policies import POLICIES
from meshgate.protocol.hop import merge_extra as _merge_extra
from meshgate.protocol.hop import remove_lines as remove_block_lines
from tests.conftest import Backend
from tests.support.gateway import Gateway

ORIGINS = ["https://app.example.com", "/^https://[a-z]+\\.partner\\.org$/"]


def cors_config(upstream: str) -> dict[str, Any]:
    """Three hosts: ``open`` (defaults), ``strict`` (list of origins + an auth stand-in
    answering 401), ``continue`` (preflightContinue, optionsSuccessStatus 200)."""
    auth = {"terminate": [{"action": {"statusCode": 401, "message": "Unauthorized"}}]}
    proxy = {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}
    return {
        "apiEndpoints": {
            "open": {"host": "open.test", "paths": ["/*"]},
            "strict": {"host": "strict.test", "paths": ["/*"]},
            "cont": {"host": "continue.test", "paths": ["/*"]},
        },
        "serviceEndpoints": {"backend": {"url": upstream}},
        "policies": ["cors", "terminate", "proxy"],
        "pipelines": {
            "open": {"apiEndpoints": ["open"], "policies": [{"cors": None}, proxy]},
            "strict": {"apiEndpoints": ["strict"], "policies": [
                {"cors": [{"action": {
                    "origin": ORIGINS, "credentials": True, "maxAge": 600,
                    "methods": ["GET", "POST"], "allowedHeaders": ["Authorization", "X-Key"],
                    "exposedHeaders": ["X-Request-Id", "X-Total"]}}]},
                auth]},
            "cont": {"apiEndpoints": ["cont"], "policies": [
                {"cors": [{"action": {"preflightContinue": True, "optionsSuccessStatus": 200,
                                      "origin": True}}]},
                proxy]},
        },
    }


@pytest.fixture
def gw(backend: Backend, gateway_factory: Any) -> Gateway:
    return gateway_factory(cors_config(backend.url))


def call(gw: Gateway, method: str, host: str, path: str = "/echo",
         headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.request(method, gw.url + path, headers={"host": host, **(headers or {})},
                         timeout=5)


def test_preflight_is_answered_before_an_auth_policy_can_reject_it(gw: Gateway) -> None:
    # EG #932: key-auth (here a 401 stand-in) must never see the preflight.
    r = call(gw, "OPTIONS", "strict.test", headers={
        "origin": "https://app.example.com", "access-control-request-method": "POST",
        "access-control-request-headers": "x-key"})
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-allow-methods"] == "GET,POST"
    assert r.headers["access-control-allow-headers"] == "Authorization,X-Key"
    assert r.headers["access-control-max-age"] == "600"
    assert r.headers["access-control-expose-headers"] == "X-Request-Id,X-Total"
    assert "Origin" in r.headers.get_list("vary")
    # The actual request does reach the auth stand-in, and its 401 carries CORS headers
    # so the browser lets the page read it.
    r = call(gw, "GET", "strict.test", headers={"origin": "https://app.example.com"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-expose-headers"] == "X-Request-Id,X-Total"
    assert "access-control-allow-methods" not in r.headers      # preflight only
    assert "access-control-max-age" not in r.headers


def test_preflight_passes_a_real_key_auth(backend: Backend, gateway_factory: Any) -> None:
    if POLICIES.get("key-auth") is None:
        pytest.skip("key-auth is not available")
    config = cors_config(backend.url)
    config["policies"].append("key-auth")
    config["pipelines"]["strict"]["policies"][1] = {"key-auth": None}
    config["pipelines"]["strict"]["policies"].append(
        {"proxy": [{"action": {"serviceEndpoint": "backend"}}]})
    gw = gateway_factory(config)
    origin = {"origin": "https://app.example.com"}
    r = call(gw, "OPTIONS", "strict.test", headers={**origin,
                                                    "access-control-request-method": "GET"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    r = call(gw, "GET", "strict.test", headers=origin)
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"


def test_origin_lists_and_regex_entries(gw: Gateway) -> None:
    r = call(gw, "OPTIONS", "strict.test", headers={"origin": "https://shop.partner.org"})
    assert r.headers["access-control-allow-origin"] == "https://shop.partner.org"
    for origin in ("https://evil.example.com", "https://shop.partner.org.evil.com"):
        r = call(gw, "OPTIONS", "strict.test", headers={"origin": origin})
        assert r.status_code == 204
        assert "access-control-allow-origin" not in r.headers
        assert r.headers["vary"] == "Origin"
    r = call(gw, "GET", "strict.test")                         # no Origin at all
    assert "access-control-allow-origin" not in r.headers


def test_default_origin_star_on_a_proxied_response(gw: Gateway) -> None:
    r = call(gw, "GET", "open.test", headers={"origin": "https://anywhere.example"})
    assert r.status_code == 200
    assert r.json()["path"] == "/echo"                        # the backend answered
    assert r.headers["access-control-allow-origin"] == "*"
    assert "vary" not in r.headers
    assert "access-control-allow-credentials" not in r.headers
    # A default preflight reflects the requested headers and lists EG's default methods.
    r = call(gw, "OPTIONS", "open.test", headers={
        "origin": "https://anywhere.example", "access-control-request-headers": "x-a, x-b"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-methods"] == "GET,HEAD,PUT,PATCH,POST,DELETE"
    assert r.headers["access-control-allow-headers"] == "x-a, x-b"
    assert r.headers["vary"] == "Access-Control-Request-Headers"


def test_preflight_continue_passes_the_preflight_on(gw: Gateway) -> None:
    r = call(gw, "OPTIONS", "continue.test", headers={"origin": "https://a.example"})
    assert r.status_code == 200
    assert r.json()["method"] == "OPTIONS"                    # the backend saw it
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert r.headers["access-control-allow-methods"] == "GET,HEAD,PUT,PATCH,POST,DELETE"
    r = call(gw, "GET", "continue.test", headers={"origin": "https://b.example"})
    assert r.headers["access-control-allow-origin"] == "https://b.example"
    assert "Origin" in r.headers.get_list("vary")


def test_options_success_status(backend: Backend, gateway_factory: Any) -> None:
    config = cors_config(backend.url)
    config["pipelines"]["open"]["policies"][0] = {
        "cors": [{"action": {"optionsSuccessStatus": 200}}]}
    gw = gateway_factory(config)
    r = call(gw, "OPTIONS", "open.test", headers={"origin": "https://x.example"})
    assert r.status_code == 200
    assert r.headers["content-length"] == "0"
    assert r.headers["access-control-allow-origin"] == "*"


def test_policy_headers_replace_upstream_ones_but_vary_adds_up() -> None:
    block = (b"Content-Type: text/plain\r\nAccess-Control-Allow-Origin: https://old\r\n"
             b"Vary: Accept-Encoding\r\ncontent-length: 3\r\n")
    merged = _merge_extra(block, [(b"access-control-allow-origin", b"*"),
                                  (b"vary", b"Origin")])
    assert merged == (b"Content-Type: text/plain\r\nVary: Accept-Encoding\r\n"
                      b"content-length: 3\r\naccess-control-allow-origin: *\r\nvary: Origin\r\n")
    assert remove_block_lines(b"A: 1\r\nB: 2\r\n", {b"a"}) == b"B: 2\r\n"


def test_invalid_origin_regex_is_a_located_config_error(tmp_path: Path) -> None:
    config = cors_config("http://127.0.0.1:9")
    config["pipelines"]["open"]["policies"][0] = {"cors": [{"action": {"origin": ["/a(/"]}}]}
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "meshgate", "validate", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "pipelines.open.policies[0].cors[0].action.origin" in result.stderr
    assert "invalid regular expression" in result.stderr
