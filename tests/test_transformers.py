"""request-transformer and response-transformer: headers, JSON bodies, limits."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Backend
from tests.support.gateway import Gateway

REQUEST_RULES = {
    "headers": {"add": {"x-const": "'fixed value'", "x-ip": "req.ip",
                        "x-tpl": "v-${req.headers.x-in}", "x-num": 7},
                "remove": ["x-drop", "user-agent"]},
    "body": {"add": {"added": "'world'", "n": 42, "flag": True, "from": "${req.method}"},
             "remove": ["secret"]},
    "maxBodySize": 1000,
}
RESPONSE_RULES = {
    "headers": {"add": {"x-served-by": "'meshgate'", "x-path": "req.url"},
                "remove": ["content-type"]},
    "body": {"add": {"gateway": "'meshgate'"}, "remove": ["headers", "crc"]},
}


def transformer_config(upstream: str) -> dict[str, Any]:
    """``req.test`` rewrites requests, ``resp.test`` responses, ``hdr.test`` only headers,
    ``tiny.test`` responses with maxBodySize 50."""
    proxy = {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}
    return {
        "apiEndpoints": {name: {"host": f"{name}.test", "paths": ["/*"]}
                         for name in ("req", "resp", "hdr", "tiny", "local")},
        "serviceEndpoints": {"backend": {"url": upstream}},
        "policies": ["request-transformer", "response-transformer", "terminate", "proxy"],
        "pipelines": {
            "req": {"apiEndpoints": ["req"], "policies": [
                {"request-transformer": [{"action": REQUEST_RULES}]}, proxy]},
            "resp": {"apiEndpoints": ["resp"], "policies": [
                {"response-transformer": [{"action": RESPONSE_RULES}]}, proxy]},
            "hdr": {"apiEndpoints": ["hdr"], "policies": [
                {"request-transformer": [{"action": {"headers": REQUEST_RULES["headers"]}}]},
                {"response-transformer": [{"action": {"headers": {"remove": ["x-kept"]}}}]},
                proxy]},
            "tiny": {"apiEndpoints": ["tiny"], "policies": [
                {"response-transformer": [{"action": {"body": {"remove": ["a"]},
                                                      "maxBodySize": 50}}]}, proxy]},
            "local": {"apiEndpoints": ["local"], "policies": [
                {"response-transformer": [{"action": RESPONSE_RULES}]},
                {"terminate": [{"action": {"statusCode": 418, "message": "teapot"}}]}]},
        },
    }


@pytest.fixture
def gw(backend: Backend, gateway_factory: Any) -> Gateway:
    return gateway_factory(transformer_config(backend.url))


def expected(doc: dict[str, Any]) -> tuple[int, int]:
    """Length and CRC of the compact JSON the transformer emits."""
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    return len(body), zlib.crc32(body)


def header_map(echo: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in echo["headers"]}


# -- request side ------------------------------------------------------------------------
def test_request_headers_are_added_and_removed(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/echo", timeout=5, headers={
        "host": "hdr.test", "x-in": "abc", "x-drop": "1", "x-const": "client value"})
    seen = header_map(r.json())
    assert seen["x-const"] == "fixed value"                 # replaced, not duplicated
    assert [k for k, _ in r.json()["headers"]].count("x-const") == 1
    assert seen["x-ip"] == "127.0.0.1"
    assert seen["x-tpl"] == "v-abc"
    assert seen["x-num"] == "7"
    assert "x-drop" not in seen and "user-agent" not in seen
    assert r.json()["length"] == 0                          # no body, nothing buffered


def test_request_json_body_is_rewritten_with_a_correct_length(gw: Gateway) -> None:
    doc = {"name": "ann", "secret": "hunter2", "added": "old"}
    r = httpx.post(gw.url + "/echo", json=doc, headers={"host": "req.test"}, timeout=5)
    echo = r.json()
    want = {"name": "ann", "added": "world", "n": 42, "flag": True, "from": "POST"}
    assert (echo["length"], echo["crc"]) == expected(want)
    assert header_map(echo)["content-length"] == str(expected(want)[0])


def raw_exchange(port: int, head: bytes, parts: list[bytes], pause: float = 0.0) -> bytes:
    """Send a request in pieces, return the whole response (the server closes or
    answers with a Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        for part in parts:
            if pause:
                time.sleep(pause)
            try:
                sock.sendall(part)
            except OSError:             # the server answered early and closed
                break
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        head_end = data.index(b"\r\n\r\n") + 4
        length = next((int(line.split(b":")[1]) for line in data[:head_end].split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        while length is not None and len(data) < head_end + length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def response_json(raw: bytes) -> Any:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def test_chunked_body_arriving_slowly_is_buffered_then_sent_with_content_length(
        gw: Gateway) -> None:
    body = json.dumps({"secret": 1, "k": "v" * 100}).encode()
    chunks = [body[:10], body[10:70], body[70:]]
    head = (b"POST /echo HTTP/1.1\r\nhost: req.test\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    parts = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"]
    raw = raw_exchange(gw.port, head, parts, pause=0.05)
    assert raw.startswith(b"HTTP/1.1 200")
    echo = response_json(raw)
    want = {"k": "v" * 100, "added": "world", "n": 42, "flag": True, "from": "POST"}
    assert (echo["length"], echo["crc"]) == expected(want)
    seen = header_map(echo)
    assert "transfer-encoding" not in seen
    assert seen["content-length"] == str(expected(want)[0])


def test_expect_continue_with_body_rules(gw: Gateway) -> None:
    body = b'{"a": 1}'
    head = (b"POST /echo HTTP/1.1\r\nhost: req.test\r\ncontent-type: application/json\r\n"
            b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        data = b""
        while not data.endswith(b"}"):
            data += sock.recv(65536)
    want = {"a": 1, "added": "world", "n": 42, "flag": True, "from": "POST"}
    echo = response_json(data)
    assert (echo["length"], echo["crc"]) == expected(want)


def test_form_bodies_are_rewritten_too(gw: Gateway) -> None:
    r = httpx.post(gw.url + "/echo", data={"secret": "x", "keep": "y"},
                   headers={"host": "req.test"}, timeout=5)
    want = b"keep=y&added=world&n=42&flag=true&from=POST"
    assert (r.json()["length"], r.json()["crc"]) == (len(want), zlib.crc32(want))


def test_other_bodies_pass_through_untouched(gw: Gateway) -> None:
    body = b"plain text, not JSON " * 100          # larger than maxBodySize: not buffered
    r = httpx.post(gw.url + "/echo", content=body, timeout=5,
                   headers={"host": "req.test", "content-type": "text/plain"})
    assert (r.json()["length"], r.json()["crc"]) == (len(body), zlib.crc32(body))
    r = httpx.post(gw.url + "/echo", content=b"[1, 2]", timeout=5,
                   headers={"host": "req.test", "content-type": "application/json"})
    assert (r.json()["length"], r.json()["crc"]) == (6, zlib.crc32(b"[1, 2]"))


def test_request_body_over_the_limit_is_413(gw: Gateway) -> None:
    big = json.dumps({"k": "v" * 2000}).encode()
    r = httpx.post(gw.url + "/echo", content=big, timeout=5,
                   headers={"host": "req.test", "content-type": "application/json"})
    assert r.status_code == 413
    head = (b"POST /echo HTTP/1.1\r\nhost: req.test\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    parts = [b"%x\r\n%s\r\n" % (len(big[i:i + 500]), big[i:i + 500])
             for i in range(0, len(big), 500)]
    raw = raw_exchange(gw.port, head, parts, pause=0.02)
    assert raw.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in raw.lower()


def test_invalid_json_is_400(gw: Gateway) -> None:
    r = httpx.post(gw.url + "/echo", content=b'{"a": ', timeout=5,
                   headers={"host": "req.test", "content-type": "application/json"})
    assert r.status_code == 400


# -- response side -----------------------------------------------------------------------
def test_response_json_body_and_headers_are_rewritten(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/echo?q=1", headers={"host": "resp.test"}, timeout=5)
    assert r.status_code == 200
    doc = r.json()
    assert doc["gateway"] == "meshgate"
    assert doc["path"] == "/echo?q=1" and doc["method"] == "GET"
    assert "headers" not in doc and "crc" not in doc
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["x-served-by"] == "meshgate"
    assert r.headers["x-path"] == "/echo?q=1"
    assert "content-type" not in r.headers                  # removed by the rules


def test_non_json_responses_stream_through(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/chunked", headers={"host": "resp.test"}, timeout=5)
    assert r.text == "hello world"
    assert r.headers["x-served-by"] == "meshgate"
    r = httpx.head(gw.url + "/echo", headers={"host": "resp.test"}, timeout=5)
    assert r.status_code == 200 and r.content == b""


def test_response_header_rules_alone(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/hop", headers={"host": "hdr.test"}, timeout=5)
    assert r.text == "hop\n"
    assert "x-kept" not in r.headers


def test_response_too_large_to_transform_is_502(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/echo", headers={"host": "tiny.test"}, timeout=5)
    assert r.status_code == 502
    # The gateway is fine afterwards.
    r = httpx.get(gw.url + "/echo", headers={"host": "resp.test"}, timeout=5)
    assert r.status_code == 200


def test_local_answers_get_the_header_rules(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/x", headers={"host": "local.test"}, timeout=5)
    assert r.status_code == 418 and r.text == "teapot"
    assert r.headers["x-served-by"] == "meshgate"


# -- config ----------------------------------------------------------------------------
@pytest.mark.parametrize("action,message", [
    ({}, "expected `headers` or `body` rules"),
    ({"headers": {"remove": ["Content-Length"]}}, "managed by meshgate"),
    ({"body": {"add": {"a": "req.nothing"}}}, "unsupported expression"),
    ({"body": {"add": {"a": "${req.nothing}"}}}, "unsupported template expression"),
    ({"headers": {"add": {"x": "'a' + req.ip"}}}, "looks like a JavaScript expression"),
])
def test_invalid_rules_are_config_errors(tmp_path: Path, action: dict[str, Any],
                                         message: str) -> None:
    config = transformer_config("http://127.0.0.1:9")
    config["pipelines"]["req"]["policies"][0] = {"request-transformer": [{"action": action}]}
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "meshgate", "validate", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "pipelines.req.policies[0].request-transformer" in result.stderr
    assert message in result.stderr
