"""gRPC-Web through meshgate to a gRPC (h2c) upstream, with a raw gRPC-Web client.

The upstream is ``tests.support.grpc_app.GrpcApp`` (grpcio, plaintext HTTP/2);
the client (``tests.support.grpc_web_client``) frames, base64-encodes and
parses by hand, over HTTP/1.1 (http.client) and HTTP/2 (h2client). Covered:
unary and server streaming in binary and -text, errors, trailers-only
answers, -bin metadata, -text bodies split at every kind of boundary,
malformed base64, CORS preflights, and meshgate's own answers (no route, no
upstream, an auth refusal) as gRPC-Web errors.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.protocol.grpc_web import _TextOut, decode, trailer_frame
from tests.conftest import Backend
from tests.support.gateway import Gateway, free_port, proxy_config, wait_until
from tests.support.grpc_app import BINARY, GrpcApp, stubs
from tests.support.grpc_web_client import (
    TEXT,
    WEB,
    Reply,
    b64_groups,
    body_of,
    call_h1,
    call_h2,
    frame,
    parse,
    unpad_b64,
)
from tests.support.h2_origin import H2Origin
from tests.support.h2client import H2Client

UNARY = "/meshgate.test.Echo/Unary"
STREAM = "/meshgate.test.Echo/ServerStream"
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def app() -> Iterator[GrpcApp]:
    with GrpcApp(name="web") as grpc_app:
        yield grpc_app


@pytest.fixture(scope="module")
def shadow() -> Iterator[GrpcApp]:
    with GrpcApp(name="shadow") as grpc_app:
        yield grpc_app


def web_config(app_url: str, backend_url: str, shadow_url: str | None = None) -> dict[str, Any]:
    cors = {"cors": [{"action": {"origin": [ORIGIN],
                                 "exposedHeaders": ["grpc-status", "grpc-message"]}}]}
    return {
        "apiEndpoints": {
            "locked": {"host": "locked.example", "paths": ["/*"]},
            "down": {"host": "down.example", "paths": ["/*"]},
            "h1": {"host": "h1.example", "paths": ["/*"]},
            "mirror": {"host": "mirror.example", "paths": ["/*"]},
            "guarded": {"host": "guarded.example", "paths": ["/*"]},
            "slow": {"host": "slow.example", "paths": ["/*"]},
            "grpc": {"host": "*", "paths": ["/meshgate.test.Echo/*"]},
        },
        "serviceEndpoints": {
            "echo": {"url": app_url, "protocol": "h2c"},
            "down": {"url": f"http://127.0.0.1:{free_port()}", "protocol": "h2c"},
            "plain": {"url": backend_url},
            "shadow": {"url": shadow_url or app_url, "protocol": "h2c"},
            # every other first attempt fails to connect: the retry replays the body
            "guarded": {"urls": [f"http://127.0.0.1:{free_port()}", app_url],
                        "protocol": "h2c", "loadBalancer": "round-robin",
                        "retry": {"retryOn": ["connect-failure"], "numRetries": 2}},
        },
        "policies": ["cors", "key-auth", "proxy"],
        "pipelines": {
            "grpc": {"apiEndpoints": ["grpc"], "policies": [
                cors, {"proxy": [{"action": {"serviceEndpoint": "echo"}}]}]},
            "locked": {"apiEndpoints": ["locked"], "policies": [
                cors, {"key-auth": [{"action": {}}]},
                {"proxy": [{"action": {"serviceEndpoint": "echo"}}]}]},
            "down": {"apiEndpoints": ["down"], "policies": [
                {"proxy": [{"action": {"serviceEndpoint": "down"}}]}]},
            "h1": {"apiEndpoints": ["h1"], "policies": [
                {"proxy": [{"action": {"serviceEndpoint": "plain"}}]}]},
            "mirror": {"apiEndpoints": ["mirror"], "policies": [
                {"proxy": [{"action": {"serviceEndpoint": "echo",
                                       "mirror": {"serviceEndpoint": "shadow"}}}]}]},
            "guarded": {"apiEndpoints": ["guarded"], "policies": [
                {"proxy": [{"action": {"serviceEndpoint": "guarded"}}]}]},
            "slow": {"apiEndpoints": ["slow"], "policies": [
                {"proxy": [{"action": {"serviceEndpoint": "echo", "timeout": 600}}]}]},
        },
    }


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, app: GrpcApp, shadow: GrpcApp,
       backend_mod: Backend) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("grpcweb"),
                      web_config(app.url, backend_mod.url, shadow.url))
    yield gateway
    gateway.stop()


@pytest.fixture
def h2(gw: Gateway) -> Iterator[H2Client]:
    with H2Client(gw.port, window=1 << 24) as client:
        yield client


def msg(**fields: Any) -> bytes:
    pb2, _ = stubs()
    return bytes(pb2.Msg(**fields).SerializeToString())


def count(**fields: Any) -> bytes:
    pb2, _ = stubs()
    return bytes(pb2.Count(**fields).SerializeToString())


def decoded(payload: bytes) -> Any:
    pb2, _ = stubs()
    return pb2.Msg.FromString(payload)


def assert_ok(reply: Reply, kind: str) -> None:
    assert reply.status == 200
    assert reply.headers["content-type"] == kind
    assert "content-length" not in reply.headers        # the body changed: never the upstream's
    assert reply.grpc_status == 0, reply.trailers
    assert reply.frames_after_trailers == 0
    assert reply.http_trailers == {}                   # the trailers travel in the body


# -- calls ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_unary_over_http1(gw: Gateway, app: GrpcApp, text: bool) -> None:
    reply = call_h1(gw.port, UNARY, body_of(msg(text="hello", seq=7, blob=b"\x00\xff"), text),
                    text=text)
    assert_ok(reply, TEXT if text else WEB)
    assert reply.headers["transfer-encoding"] == "chunked"
    assert [decoded(m).text for m in reply.messages] == ["hello"]
    assert decoded(reply.messages[0]).blob == b"\x00\xff"
    assert reply.trailers["server-name"] == "web"
    assert unpad_b64(reply.trailers["trace-bin"]) == BINARY
    method, meta = app.calls[-1]
    assert method == "Unary"
    assert meta["x-grpc-web"] == "1" and meta["x-user-agent"].startswith("grpc-web")
    if text:                                             # base64 on the wire, both ways
        assert reply.body.isascii() and b"\x00" not in reply.body


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_unary_over_http2(gw: Gateway, h2: H2Client, text: bool) -> None:
    reply = call_h2(h2, UNARY, [body_of(msg(text="over h2", seq=1), text)], text=text)
    assert_ok(reply, TEXT if text else WEB)
    assert decoded(reply.messages[0]).text == "over h2"


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_server_stream(gw: Gateway, h2: H2Client, text: bool) -> None:
    reply = call_h2(h2, STREAM, [body_of(count(text="tick", times=5), text)], text=text)
    assert_ok(reply, TEXT if text else WEB)
    assert [decoded(m).seq for m in reply.messages] == [0, 1, 2, 3, 4]
    h1 = call_h1(gw.port, STREAM, body_of(count(text="tock", times=3), text), text=text)
    assert_ok(h1, TEXT if text else WEB)
    assert [decoded(m).text for m in h1.messages] == ["tock"] * 3


def test_text_stream_each_message_decodable_on_arrival(gw: Gateway, h2: H2Client) -> None:
    """Base64 is padded where a frame ends: the first message can be read before the next."""
    sid = h2.request(STREAM, method="POST", end=False, headers=[
        ("content-type", TEXT), ("accept", TEXT)])
    h2.send_body(sid, body_of(count(text="slow", times=2, gap_ms=1500), True))
    stream = h2.streams[sid]

    def first() -> bool:
        body = bytes(stream.body)
        if len(body) < 8 or len(body) % 4:
            return False
        data = b64_groups(body)
        return len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[1:5], "big")

    h2.until(first, timeout=5)
    assert not stream.ended                              # the second message is still to come
    h2.response(sid, timeout=10)


def test_large_text_message_spans_upstream_frames(gw: Gateway) -> None:
    blob = bytes(range(256)) * 400 + b"tail"             # ~100 KiB: many DATA frames
    reply = call_h1(gw.port, UNARY, body_of(msg(text="big", blob=blob), True), text=True)
    assert_ok(reply, TEXT)
    assert decoded(reply.messages[0]).blob == blob


# -- errors, trailers-only, metadata ---------------------------------------------------
@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_error_status_in_trailer_frame(gw: Gateway, text: bool) -> None:
    reply = call_h1(gw.port, UNARY, body_of(msg(text="x"), text), text=text,
                    headers={"x-echo-code": "5", "x-echo-message": "no such thing"})
    assert reply.status == 200
    assert reply.messages == []
    assert reply.grpc_status == 5
    assert reply.trailers["grpc-message"] == "no such thing"


def test_trailers_only_becomes_a_trailer_frame(gw: Gateway, h2: H2Client) -> None:
    headers = {"x-echo-code": "7", "x-echo-message": "denied", "x-echo-trailers-only": "1"}
    for reply in (call_h1(gw.port, UNARY, body_of(msg(), False), headers=headers),
                  call_h2(h2, UNARY, [body_of(msg(), True)], text=True, headers=headers)):
        assert reply.status == 200
        assert reply.headers["grpc-status"] == "7"       # kept in the head, as Envoy does
        assert reply.messages == []
        assert reply.grpc_status == 7
        assert reply.trailers["grpc-message"] == "denied"
        assert "content-length" not in reply.headers


def test_binary_metadata_both_ways(gw: Gateway) -> None:
    value = base64.b64encode(b"\x00\x01\x02\xfe").decode()
    reply = call_h1(gw.port, UNARY, body_of(msg(text="m"), True), text=True,
                    headers={"x-echo-meta-token-bin": value, "x-echo-meta-plain": "p"})
    assert_ok(reply, TEXT)
    assert unpad_b64(reply.headers["x-echo-meta-token-bin"]) == b"\x00\x01\x02\xfe"
    assert unpad_b64(reply.trailers["x-echo-meta-token-bin"]) == b"\x00\x01\x02\xfe"
    assert reply.headers["x-echo-meta-plain"] == reply.trailers["x-echo-meta-plain"] == "p"


# -- -text request bodies ---------------------------------------------------------------
def split_every(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos:pos + size])
        pos += size
        i += 1
    return out


def test_text_body_split_across_chunks(gw: Gateway, h2: H2Client) -> None:
    payload = msg(text="split across every boundary", blob=bytes(range(200)))
    text = body_of(payload, True)
    for sizes in ([1], [3], [5, 2], [7, 1, 4]):
        chunks = split_every(text, sizes)
        reply = call_h2(h2, UNARY, chunks, text=True)
        assert_ok(reply, TEXT)
        assert decoded(reply.messages[0]).blob == bytes(range(200)), sizes
        h1 = call_h1(gw.port, UNARY, chunks, text=True)          # one HTTP/1.1 chunk each
        assert_ok(h1, TEXT)
        assert decoded(h1.messages[0]).text == "split across every boundary"


def test_text_body_padded_per_piece(gw: Gateway) -> None:
    """Clients may encode piece by piece: padding inside the body is allowed."""
    payload = msg(text="ab")
    data = frame(payload)
    body = base64.b64encode(data[:4]) + base64.b64encode(data[4:])
    assert b"=" in body[:-4]
    reply = call_h1(gw.port, UNARY, body, text=True)
    assert_ok(reply, TEXT)
    assert decoded(reply.messages[0]).text == "ab"


@pytest.mark.parametrize("body", [b"AAAA!!!!", b"AAAAAAA", b"AA=A"],
                         ids=["alphabet", "length", "padding"])
def test_malformed_base64_is_internal(gw: Gateway, app: GrpcApp, body: bytes) -> None:
    before = len(app.calls)
    reply = call_h1(gw.port, UNARY, body, text=True)
    assert reply.status == 200
    assert reply.headers["content-type"] == TEXT
    assert reply.headers["grpc-status"] == "13"          # HTTP 400 in gRPC's mapping
    assert "base64" in reply.headers["grpc-message"]
    assert reply.grpc_status == 13
    assert len(app.calls) == before                      # the upstream handler never ran


def test_text_body_mirrored_and_decoded_for_both(gw: Gateway, h2: H2Client, app: GrpcApp,
                                                 shadow: GrpcApp) -> None:
    text = body_of(msg(text="seen twice"), True)
    key = f"mirror-{id(text)}"
    reply = call_h2(h2, UNARY, split_every(text, [3, 2]), text=True, authority="mirror.example",
                    headers={"content-length": str(len(text)), "x-echo-key": key})
    assert_ok(reply, TEXT)
    assert decoded(reply.messages[0]).text == "seen twice"
    # The copy is a gRPC-Web request of its own, decoded from the client's bytes.
    wait_until(lambda: any(m.get("x-echo-key") == key for _, m in shadow.calls), timeout=5)
    assert [c for c, m in app.calls if m.get("x-echo-key") == key] == ["Unary"]


def test_retry_replays_the_decoded_body(gw: Gateway, h2: H2Client) -> None:
    text = body_of(msg(text="again", blob=bytes(range(100))), True)
    for i in range(4):                     # round robin: half the first attempts find no one
        reply = call_h2(h2, UNARY, split_every(text, [5, 3]), text=True,
                        authority="guarded.example")
        assert_ok(reply, TEXT)
        assert decoded(reply.messages[0]).blob == bytes(range(100)), i
    retries = [line for line in gw.metrics().splitlines()
               if line.startswith('meshgate_upstream_retries_total{service_endpoint="guarded"}')]
    assert retries and float(retries[0].split()[-1]) >= 1


def test_timeout_mid_stream_ends_with_a_trailer_frame(gw: Gateway) -> None:
    """The response has started: the call still ends as gRPC-Web, not as a broken body."""
    reply = call_h1(gw.port, STREAM, body_of(count(text="late", times=2, gap_ms=3000), True),
                    text=True, headers={"host": "slow.example"})
    assert reply.status == 200
    assert [decoded(m).text for m in reply.messages] == ["late"]
    assert reply.grpc_status == 4                        # DEADLINE_EXCEEDED, as for gRPC
    assert reply.trailers["grpc-message"] == "Gateway Timeout"


# -- what the upstream sees, and answers that are not gRPC ------------------------------
def test_upstream_request_and_non_grpc_answers(tmp_path: Path) -> None:
    origin = H2Origin()
    try:
        url = f"http://127.0.0.1:{origin.port}"
        gateway = Gateway(tmp_path, proxy_config(url, service={"protocol": "h2c"}))
        try:
            body = body_of(b"hello", True)
            reply = call_h1(gateway.port, "/echo", [body[:3], body[3:]], text=True)
            head = origin.seen.requests[-1]
            assert head[b"content-type"] == b"application/grpc+proto"
            assert head[b"te"] == b"trailers"
            assert head[b"grpc-accept-encoding"] == b"identity"
            assert head[b"x-grpc-web"] == b"1"
            assert b"content-length" not in head           # the decoded body is shorter
            # /echo answers 200 without a gRPC content-type: an error, its body the message
            assert reply.status == 200 and reply.grpc_status == 2   # UNKNOWN
            assert unquote_to_bytes(reply.trailers["grpc-message"]) == frame(b"hello")
            assert reply.messages == []
            failed = call_h1(gateway.port, "/status/503", body_of(b"x", False))
            assert failed.status == 200
            assert failed.headers["grpc-status"] == "14"
            assert failed.trailers == {"grpc-status": "14", "grpc-message": "status"}
        finally:
            gateway.stop()
    finally:
        origin.stop()


# -- CORS ----------------------------------------------------------------------------
def test_cors_preflight_and_exposed_headers(gw: Gateway) -> None:
    asked = "content-type,x-grpc-web,x-user-agent,grpc-timeout"
    r = httpx.options(gw.url + UNARY, timeout=5, headers={
        "origin": ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": asked})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == asked
    reply = call_h1(gw.port, UNARY, body_of(msg(text="cors"), False),
                    headers={"origin": ORIGIN})
    assert_ok(reply, WEB)
    assert reply.headers["access-control-allow-origin"] == ORIGIN
    assert reply.headers["access-control-expose-headers"] == "grpc-status,grpc-message"


# -- meshgate's own answers ---------------------------------------------------------
@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_no_route_is_unimplemented(gw: Gateway, h2: H2Client, text: bool) -> None:
    for reply in (call_h1(gw.port, "/other.Service/Call", body_of(msg(), text), text=text),
                  call_h2(h2, "/other.Service/Call", [body_of(msg(), text)], text=text)):
        assert reply.status == 200
        assert reply.headers["content-type"] == (TEXT if text else WEB)
        assert reply.headers["grpc-status"] == "12"
        assert reply.grpc_status == 12
        assert reply.trailers["grpc-message"] == "Not Found"
        assert reply.messages == []


def test_upstream_down_is_unavailable(gw: Gateway) -> None:
    reply = call_h1(gw.port, UNARY, body_of(msg(), True), text=True,
                    headers={"host": "down.example"})
    assert reply.status == 200
    assert reply.headers["grpc-status"] == "14"
    assert reply.grpc_status == 14


def test_auth_refusal_is_unauthenticated(gw: Gateway, h2: H2Client) -> None:
    reply = call_h1(gw.port, UNARY, body_of(msg(), False),
                    headers={"host": "locked.example", "origin": ORIGIN})
    assert reply.status == 200
    assert reply.grpc_status == 16
    assert reply.headers["grpc-status"] == "16"
    assert "www-authenticate" in reply.headers           # the policy's headers stay
    assert reply.headers["access-control-allow-origin"] == ORIGIN   # ... and CORS's
    over_h2 = call_h2(h2, UNARY, [body_of(msg(), True)], text=True, authority="locked.example")
    assert over_h2.grpc_status == 16
    # Metrics count what the answer meant, as for gRPC answers.
    assert 'api_endpoint="locked",code="401",pipeline="locked"' in gw.metrics()


def test_http1_serviceendpoint_passes_grpc_web_through(gw: Gateway) -> None:
    """Only HTTP/2 serviceEndpoints translate (grpcWeb: auto): others see the request as sent."""
    r = httpx.post(gw.url + "/echo", content=frame(b"x"), timeout=5, headers={
        "host": "h1.example", "content-type": WEB})
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in json.loads(r.text)["headers"]}
    assert seen["content-type"] == WEB
    assert "te" not in seen


def test_plain_requests_untouched(gw: Gateway) -> None:
    """A non-gRPC-Web request on the same route gets plain HTTP answers."""
    r = httpx.post(gw.url + "/nowhere", content=b"{}", timeout=5,
                   headers={"content-type": "application/json"})
    assert r.status_code == 404
    assert "grpc-status" not in r.headers


# -- config --------------------------------------------------------------------------
@pytest.mark.parametrize(("pipeline", "value", "error"), [
    ("h1", True, "grpcWeb: true needs serviceEndpoint 'plain' to speak HTTP/2"),
    ("grpc", "maybe", "grpcWeb"),
    ("grpc", False, None),
    ("h1", "auto", None),
])
def test_grpc_web_setting(tmp_path: Path, pipeline: str, value: Any, error: str | None) -> None:
    config = web_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    config["pipelines"][pipeline]["policies"][-1]["proxy"][0]["action"]["grpcWeb"] = value
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "meshgate", "validate", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    said = done.stderr + done.stdout
    if error is None:
        assert done.returncode == 0, said
        return
    assert done.returncode == 2
    assert error in said
    assert "gateway.config.yml:" in said


# -- the base64 codecs, on their own ------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(messages=st.lists(st.binary(max_size=40), max_size=6),
       cuts=st.lists(st.integers(0, 300), max_size=8))
def test_text_encoding_decodes_whole_frames_at_any_split(messages: list[bytes],
                                                         cuts: list[int]) -> None:
    data = b"".join(frame(m) for m in messages)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    encoder = _TextOut()
    out = b"".join(encoder.encode(data[a:b]) for a, b in itertools.pairwise(bounds))
    assert b64_groups(out) == data                       # every frame out, nothing held back
    trailer = trailer_frame([(b"grpc-status", b"0")])
    assert b64_groups(out + encoder.finish(trailer)) == data + trailer


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.binary(max_size=20), max_size=6))
def test_text_decoding_takes_padding_between_pieces(pieces: list[bytes]) -> None:
    text = b"".join(base64.b64encode(p) for p in pieces)
    assert decode(text) == b"".join(pieces)


@pytest.mark.parametrize("text", [b"AA=A", b"A===", b"=AAA", b"AA==AA=A", b"AAA*", b"AA\nA"])
def test_text_decoding_refuses_malformed(text: bytes) -> None:
    assert decode(text) is None


def test_empty_body_is_still_translated(gw: Gateway) -> None:
    """No message frame at all: the upstream says so, in gRPC-Web terms."""
    reply = call_h1(gw.port, UNARY, b"")
    assert reply.status == 200
    assert reply.headers["content-type"] == WEB
    assert reply.grpc_status != 0


def test_binary_request_answered_in_base64_when_accept_asks(gw: Gateway) -> None:
    reply = call_h1(gw.port, UNARY, body_of(msg(text="b64 please"), False), text=True,
                    ctype=WEB, headers={"accept": TEXT})
    assert_ok(reply, TEXT)
    assert decoded(reply.messages[0]).text == "b64 please"


def test_calls_share_a_keep_alive_connection(gw: Gateway) -> None:
    """Each response ends where its framing says: the next call on the connection works."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        for i, (kind, extra) in enumerate([(WEB, {}), (TEXT, {}), (WEB, {"x-echo-code": "3"}),
                                           (TEXT, {"x-echo-code": "9",
                                                   "x-echo-trailers-only": "1"})] * 2):
            text = kind == TEXT
            conn.request("POST", UNARY, body_of(msg(text=f"call {i}"), text),
                         {"content-type": kind, **extra})
            r = conn.getresponse()
            reply = parse(Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()),
                          text)
            assert reply.grpc_status == int(extra.get("x-echo-code", "0")), i
            assert r.getheader("connection") != "close"
            if not extra:
                assert decoded(reply.messages[0]).text == f"call {i}"
    finally:
        conn.close()


def test_slow_reader_gets_every_message(gw: Gateway) -> None:
    """A client reading a little at a time: the stream pauses and resumes, nothing is lost."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("POST", STREAM, body_of(count(text="z" * 1000, times=1500), True),
                     {"content-type": TEXT, "accept": TEXT})
        r = conn.getresponse()
        body = bytearray()
        while chunk := r.read(2048):
            body += chunk
    finally:
        conn.close()
    reply = parse(Reply(r.status, {}, bytes(body)), True)
    assert reply.grpc_status == 0
    assert [decoded(m).seq for m in reply.messages] == list(range(1500))
