"""HTTP/2 downstream through a real gateway to HTTP/1.1 backends.

Clients are separate peers: curl (prior knowledge and ALPN), nghttp, httpx
with ``http2=True``, and ``tests.support.h2client`` where the frames matter.
The backends are HTTP/1.1 (``tests/support/backend.py`` answers ``/echo``
with the length and CRC of the body it read; the strict origin of
``test_request_integrity`` records what it parsed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from h2.errors import ErrorCodes

from tests.conftest import Backend
from tests.support.gateway import Gateway, free_port, proxy_config, wait_until
from tests.support.h2client import H2Client, Stream
from tests.test_auth_key import Admin, key_of
from tests.test_request_integrity import StrictBackend, gateway_config
from tests.test_tls import Pki

MIB = 1 << 20
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          timeout=15)


@pytest.fixture(scope="module")
def gw(backend_mod: Backend, tmp_path_factory: pytest.TempPathFactory) -> Any:
    g = Gateway(tmp_path_factory.mktemp("h2"), proxy_config(backend_mod.url))
    yield g
    g.stop()


@pytest.fixture
def origin() -> Any:
    b = StrictBackend()
    yield b
    b.close()


# -- clients ------------------------------------------------------------------------
@needs_curl
def test_curl_prior_knowledge_and_http1_share_the_port(gw: Gateway) -> None:
    r = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", gw.url + "/echo?x=1")
    body, version = r.stdout.rsplit(b"\n", 1)
    assert version == b"2", r.stderr
    seen = json.loads(body)
    assert seen["path"] == "/echo?x=1"
    assert dict(seen["headers"])["host"] == f"127.0.0.1:{gw.port}"
    r = curl("--http1.1", "-w", "\n%{http_version}", gw.url + "/echo")
    assert r.stdout.rsplit(b"\n", 1)[1] == b"1.1"


@needs_curl
def test_upgrade_h2c_is_answered_as_http1(gw: Gateway) -> None:
    # curl --http2 on http:// sends "Upgrade: h2c": the upgrade is not made.
    r = curl("--http2", "-w", "\n%{http_version}", gw.url + "/echo")
    body, version = r.stdout.rsplit(b"\n", 1)
    assert version == b"1.1"
    assert "upgrade" not in dict(json.loads(body)["headers"])


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp not installed")
def test_nghttp(gw: Gateway) -> None:
    r = subprocess.run(["nghttp", "-v", "-n", gw.url + "/bytes/100000"], capture_output=True,
                       timeout=15, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ":status: 200" in r.stdout
    assert "END_STREAM" in r.stdout
    assert "GOAWAY" not in r.stdout.split("recv HEADERS")[1].split("END_STREAM")[0]


def test_httpx_http2_streams_a_mebibyte_both_ways(gw: Gateway) -> None:
    body = os.urandom(MIB)
    with httpx.Client(http1=False, http2=True, base_url=gw.url, timeout=20) as client:
        r = client.post("/echo", content=body)
        assert r.http_version == "HTTP/2"
        seen = r.json()
        assert (seen["length"], seen["crc"]) == (MIB, zlib.crc32(body))
        r = client.get(f"/bytes/{MIB}")
        assert r.status_code == 200 and r.content == b"x" * MIB


def test_chunked_upload_larger_than_the_windows(gw: Gateway) -> None:
    body = os.urandom(3 * MIB + 17)       # no content-length: the upstream gets it chunked
    with H2Client(gw.port) as c:
        sid = c.request("/echo", "POST", end=False)
        c.send_body(sid, body)
        seen = json.loads(bytes(c.response(sid, 20).body))
    assert (seen["length"], seen["crc"]) == (len(body), zlib.crc32(body))
    assert dict(seen["headers"])["transfer-encoding"] == "chunked"


def test_many_concurrent_streams_on_one_connection(gw: Gateway) -> None:
    with H2Client(gw.port) as c:
        sids = [c.request(f"/echo?n={i}") for i in range(60)]
        paths = {json.loads(bytes(c.response(sid, 10).body))["path"] for sid in sids}
    assert paths == {f"/echo?n={i}" for i in range(60)}


def test_response_headers_lose_connection_specific_fields(gw: Gateway) -> None:
    with H2Client(gw.port) as c:
        r = c.get("/hop")
    names = {k for k, _ in r.headers}
    assert r.status == 200 and r.header(b"x-kept") == b"yes"
    assert not names & {b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
                        b"transfer-encoding", b"x-secret"}


def test_chunked_response_and_head(gw: Gateway) -> None:
    with H2Client(gw.port) as c:
        assert bytes(c.get("/chunked").body) == b"hello world"
        head = c.get("/bytes/5000", method="HEAD")
        assert head.status == 200 and head.body == b"" and head.ended


# -- the same request checks as HTTP/1.1 ----------------------------------------------
def test_paths_normalise_and_refuse_as_in_http1(origin: StrictBackend,
                                                gateway_factory: Any) -> None:
    gw = gateway_factory(gateway_config(origin.url))
    with H2Client(gw.port) as c:
        assert c.get("/public/../admin/x").status == 401       # the admin pipeline
        assert c.get("/public/a%2Fb").status == 400
        assert c.get("/public/%2e%2e/admin/x").status == 401
        r = c.get("/public/ok", headers=[("eg-consumer-id", "spoofed"),
                                         ("x-meshgate-internal", "1"),
                                         ("cookie", "a=1"), ("cookie", "b=2")])
        assert r.status == 200
    (req,) = origin.requests
    assert req.target == b"/public/ok"
    assert req.header(b"eg-consumer-id") == [] and req.header(b"x-meshgate-internal") == []
    assert req.header(b"cookie") == [b"a=1; b=2"]
    assert req.header(b"host") == [b"gw"]


def test_connect_is_not_implemented(gw: Gateway) -> None:
    with H2Client(gw.port) as c:
        sid = c.conn.get_next_available_stream_id()
        c.streams[sid] = Stream()
        c.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"example:443")])
        c.flush()
        assert c.response(sid).status == 501


@pytest.mark.parametrize("field", [(b"te", b"gzip"), (b"connection", b"close"),
                                   (b":unknown", b"1"), (b"transfer-encoding", b"chunked")])
def test_malformed_heads_end_the_connection(gw: Gateway, field: tuple[bytes, bytes]) -> None:
    with H2Client(gw.port) as c:
        c.conn.config.validate_outbound_headers = False
        c.conn.config.normalize_outbound_headers = False
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(b":method", b"GET"), (b":path", b"/echo"),
                                  (b":scheme", b"http"), (b":authority", b"gw"), field],
                            end_stream=True)
        c.flush()
        c.until(lambda: c.goaway is not None or c.closed)
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.PROTOCOL_ERROR


def test_request_trailers_are_forwarded_without_forbidden_fields(
        origin: StrictBackend, gateway_factory: Any) -> None:
    gw = gateway_factory(gateway_config(origin.url, server={"bufferRequestBody": 0}))
    with H2Client(gw.port) as c:
        sid = c.request("/public/t", "POST", end=False)
        c.send_body(sid, b"payload", end=False)
        c.conn.send_headers(sid, [(b"x-checksum", b"abc"), (b"authorization", b"Basic x")],
                            end_stream=True)
        c.flush()
        assert c.response(sid).status == 200
    (req,) = origin.requests
    assert req.body == b"payload"
    assert req.trailers == [(b"x-checksum", b"abc")]


def test_key_auth_over_http2(backend: Backend, gateway_factory: Any) -> None:
    gw = gateway_factory(proxy_config(backend.url, policies=[{"key-auth": [{"action": {}}]}]))
    admin = Admin(gw)
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    with H2Client(gw.port) as c:
        assert c.get("/echo").status == 401
        r = c.get("/echo", headers=[("authorization", f"apiKey {key_of(cred)}"),
                                    ("eg-consumer-id", "spoofed")])
        assert r.status == 200
        assert dict(json.loads(bytes(r.body))["headers"])["eg-consumer-id"] == user["id"]


def test_refused_requests_give_their_body_window_back(backend: Backend,
                                                      gateway_factory: Any) -> None:
    """A body that arrived with a head the pipeline refuses must not shrink the
    connection window for good: 30 such requests of 50000 bytes exceed it."""
    gw = gateway_factory(proxy_config(backend.url, policies=[{"key-auth": [{"action": {}}]}]))
    with H2Client(gw.port) as c:
        for _ in range(30):
            c.until(lambda: c.conn.outbound_flow_control_window >= 50000)
            sid = c.conn.get_next_available_stream_id()
            c.streams[sid] = Stream()
            c.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                                      (b":path", b"/upload"), (b":authority", b"gw")])
            for _ in range(5):              # in the same write as the head
                c.conn.send_data(sid, b"x" * 10000)
            c.flush()
            assert c.response(sid).status == 401


# -- connection lifecycle -----------------------------------------------------------
@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp not installed")
def test_drain_sends_goaway_and_finishes_streams_in_flight(backend: Backend,
                                                           gateway_factory: Any) -> None:
    # nghttp, not h2: h2's client state machine accepts no frame after a GOAWAY.
    gw = gateway_factory(proxy_config(backend.url))
    client = subprocess.Popen(["nghttp", "-v", gw.url + "/slow/1200"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: "meshgate_upstream_connections 1" in gw.metrics(), 5)
        assert gw.process is not None
        os.kill(gw.process.pid, signal.SIGTERM)
        out, _ = client.communicate(timeout=10)
    finally:
        client.kill()
    goaway = out.index("recv GOAWAY frame")
    assert "last_stream_id=13" in out[goaway:goaway + 200]     # nghttp's request stream
    assert "error_code=NO_ERROR" in out[goaway:goaway + 200]
    assert ":status: 200" in out[goaway:] and client.returncode == 0, out


def test_idle_connection_gets_goaway_after_keep_alive_timeout(
        backend: Backend, gateway_factory: Any) -> None:
    config = proxy_config(backend.url)
    config["server"] = {"keepAliveTimeout": 500}
    gw = gateway_factory(config)
    with H2Client(gw.port) as c:
        assert c.get("/echo").status == 200
        c.until(lambda: c.closed, 5)
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.NO_ERROR


def test_request_body_that_stops_is_408(backend: Backend, gateway_factory: Any) -> None:
    config = proxy_config(backend.url)
    config["server"] = {"bodyTimeout": 700, "bufferRequestBody": 0}
    gw = gateway_factory(config)
    with H2Client(gw.port) as c:
        sid = c.request("/echo", "POST", end=False, headers=[("content-length", "100")])
        c.send_body(sid, b"x" * 10, end=False)
        r = c.response(sid, 5)
        assert r.status == 408


# -- TLS and ALPN ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _tls_gateway(pki: Pki, backend: Backend, directory: Path,
                 entry: dict[str, Any] | None = None) -> Gateway:
    config = proxy_config(backend.url)
    leaf = {**pki.leaf("h2leaf", "a.example.com"), **(entry or {})}
    config["https"] = {"port": free_port(), "hostname": "127.0.0.1",
                       "tls": {"default": leaf}}
    return Gateway(directory, config)


@needs_curl
def test_alpn_h2_and_http1_over_tls(pki: Pki, backend: Backend, tmp_path: Path) -> None:
    gw = _tls_gateway(pki, backend, tmp_path)
    try:
        port = gw.config["https"]["port"]
        url = f"https://a.example.com:{port}/echo"
        common = ["--cacert", str(pki.ca_path), "--resolve", f"a.example.com:{port}:127.0.0.1",
                  "-w", "\n%{http_version}"]
        r = curl("--http2", *common, url)
        body, version = r.stdout.rsplit(b"\n", 1)
        assert version == b"2", r.stderr
        assert dict(json.loads(body)["headers"])["x-forwarded-proto"] == "https"
        r = curl("--http1.1", *common, url)
        assert r.stdout.rsplit(b"\n", 1)[1] == b"1.1"
    finally:
        gw.stop()


@needs_curl
def test_a_certificate_may_offer_http1_only(pki: Pki, backend: Backend,
                                            tmp_path: Path) -> None:
    gw = _tls_gateway(pki, backend, tmp_path, {"protocols": ["http/1.1"]})
    try:
        port = gw.config["https"]["port"]
        r = curl("--http2", "--cacert", str(pki.ca_path), "--resolve",
                 f"a.example.com:{port}:127.0.0.1", "-w", "\n%{http_version}",
                 f"https://a.example.com:{port}/echo")
        assert r.stdout.rsplit(b"\n", 1)[1] == b"1.1", r.stderr
    finally:
        gw.stop()


# -- response trailers ----------------------------------------------------------------
class _Transport:
    """Enough of a transport for the codec, in-process: what it writes is kept."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def test_response_trailers_end_the_stream() -> None:
    # The codec's own filtering, driven directly: whatever an upstream codec
    # hands it, connection-specific fields leave neither the head nor the trailers.
    import asyncio
    from types import SimpleNamespace

    import h2.config
    import h2.connection
    import h2.events

    from meshgate.protocol.h2_server import H2Server
    from meshgate.server.context import WorkerContext
    from meshgate.telemetry.metrics import Metrics

    loop = asyncio.new_event_loop()
    try:
        seen: list[Any] = []
        pipeline = SimpleNamespace(run=seen.append)         # the route: keeps the exchange
        ctx = WorkerContext(loop, Metrics())
        ctx.snapshot = SimpleNamespace(                     # type: ignore[assignment]
            websocket=False,
            router=SimpleNamespace(match=lambda *_: SimpleNamespace(pipeline=pipeline,
                                                                    metric_key=("t", "t"))))
        server = H2Server(ctx)
        transport = _Transport()
        server.connection_made(transport)     # type: ignore[arg-type]
        client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
        client.initiate_connection()
        client.send_headers(1, [(b":method", b"GET"), (b":path", b"/t"), (b":scheme", b"http"),
                                (b":authority", b"gw")], end_stream=True)
        server.data_received(client.data_to_send())
        (ex,) = seen
        server.start_response(ex, 200, [(b"content-type", b"text/plain"),
                                        (b"connection", b"close")], True, None)
        server.send_data(ex, b"body")
        server.end_response(ex, [(b"grpc-status", b"0"), (b"Transfer-Encoding", b"x")])
        server.send_queued()
        events = client.receive_data(bytes(transport.out))
    finally:
        loop.close()
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert dict(response.headers) == {b":status": b"200", b"content-type": b"text/plain"}
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"body"
    trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    assert list(trailers.headers) == [(b"grpc-status", b"0")]
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


# -- settings ------------------------------------------------------------------------------
def test_http2_settings_are_validated_strictly() -> None:
    from pydantic import ValidationError

    from meshgate.config.model import ServerSettings

    server = ServerSettings.model_validate({"http2": {"maxConcurrentStreams": 8}})
    assert server.http2.maxConcurrentStreams == 8 and server.http2.enabled
    for bad in ({"maxConcurrentStream": 8}, {"maxFrameSize": 1000},
                {"initialWindowSize": 2**31}):
        with pytest.raises(ValidationError):
            ServerSettings.model_validate({"http2": bad})


def test_http2_can_be_turned_off(backend: Backend, gateway_factory: Any) -> None:
    config = proxy_config(backend.url)
    config["server"] = {"http2": {"enabled": False}}
    gw = gateway_factory(config)
    r = curl("--http2-prior-knowledge", gw.url + "/echo")
    assert r.returncode != 0 or b"400" in r.stdout
    assert curl(gw.url + "/echo").returncode == 0
