"""gRPC through the gateway: grpcio clients -> meshgate -> grpcio servers, over real sockets.

The service is ``tests.support.grpc_app`` (every call shape; request
metadata steers failures, delays and trailers-only answers). Clients reach
meshgate over h2c by prior knowledge or over TLS with ALPN h2; meshgate
reaches the app over h2c or h2 over TLS. Where the frames matter (a
trailers-only answer, a ``grpc-timeout`` value, an HTTP/1.1 origin's
trailers) the peer is ``tests.support.h2client`` or a raw socket instead.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshgate.protocol import grpc as grpc_vocab
from tests.support.gateway import Gateway, free_port, proxy_config, wait_until
from tests.support.grpc_app import BINARY, LARGE_MESSAGES, GrpcApp, stubs
from tests.support.h2_origin import H2Origin
from tests.support.h2client import H2Client
from tests.test_tls import Pki
from tests.test_websocket import counter

MIB = 1 << 20
pb2, pb2_grpc = stubs()


# -- the rig ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("grpc-pki"))


def grpc_config(app_url: str, protocol: str, leaf: dict[str, str] | None = None,
                **service: Any) -> dict[str, Any]:
    """One route to the app; an https listener too when ``leaf`` is given."""
    extra: dict[str, Any] = {"protocol": protocol, **service}
    if protocol == "h2":
        extra.setdefault("proxyOptions", {"secure": False})
    config = proxy_config(app_url, service=extra)
    if leaf is not None:
        config["https"] = {"port": free_port(), "hostname": "127.0.0.1",
                           "tls": {"default": leaf}}
    return config


class Rig:
    """An app, a gateway in front of it (h2c and TLS listeners), channels to both."""

    def __init__(self, app: GrpcApp, gw: Gateway, pki: Pki) -> None:
        self.app = app
        self.gw = gw
        self.pki = pki

    def channel(self, downstream: str) -> grpc.Channel:
        if downstream == "h2c":
            return grpc.insecure_channel(f"127.0.0.1:{self.gw.port}", options=LARGE_MESSAGES)
        creds = grpc.ssl_channel_credentials(self.pki.ca_path.read_bytes())
        port = self.gw.config["https"]["port"]
        return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[
            *LARGE_MESSAGES, ("grpc.ssl_target_name_override", "a.example.com")])

    def stub(self, downstream: str = "h2c") -> Any:
        return pb2_grpc.EchoStub(self.channel(downstream))


def _rig(pki: Pki, tmp: Path, upstream: str, **service: Any) -> Iterator[Rig]:
    tls = None
    if upstream == "h2":
        leaf = pki.leaf("app", "localhost")
        tls = (Path(leaf["key"]).read_bytes(), Path(leaf["cert"]).read_bytes())
    app = GrpcApp(name=f"app-{upstream}", tls=tls)
    gw = Gateway(tmp, grpc_config(app.url, upstream, pki.leaf("gw", "a.example.com"),
                                  **service))
    try:
        yield Rig(app, gw, pki)
    finally:
        gw.stop()
        app.stop()


@pytest.fixture(scope="module", params=["h2c", "h2"])
def rig(request: pytest.FixtureRequest, pki: Pki,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The app behind meshgate, over h2c or h2 (TLS) upstream."""
    yield from _rig(pki, tmp_path_factory.mktemp("grpc"), request.param)


@pytest.fixture(scope="module")
def plain(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The app behind meshgate over h2c, for tests that need one path only."""
    yield from _rig(pki, tmp_path_factory.mktemp("grpc-plain"), "h2c")


def frame(message: Any) -> bytes:
    """A length-prefixed gRPC message (uncompressed)."""
    body = message.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def grpc_headers(*extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("content-type", "application/grpc"), ("te", "trailers"), *extra]


# -- call shapes -------------------------------------------------------------------------
@pytest.mark.parametrize("downstream", ["h2c", "tls"])
def test_every_call_shape(rig: Rig, downstream: str) -> None:
    stub = rig.stub(downstream)
    reply, call = stub.Unary.with_call(pb2.Msg(text="hi", seq=7), timeout=10)
    assert (reply.text, reply.seq) == ("hi", 7)
    assert dict(call.trailing_metadata())["server-name"] == rig.app.name

    stream = stub.ServerStream(pb2.Count(text="s", times=5), timeout=10)
    assert [m.seq for m in stream] == [0, 1, 2, 3, 4]
    assert stream.code() == grpc.StatusCode.OK

    reply = stub.ClientStream(iter([pb2.Msg(text=t) for t in "abcd"]), timeout=10)
    assert (reply.text, reply.seq) == ("abcd", 4)

    replies = stub.Bidi(iter([pb2.Msg(text=str(i), seq=i) for i in range(6)]), timeout=10)
    assert [(m.text, m.seq) for m in replies] == [(str(i), i) for i in range(6)]


@pytest.mark.parametrize("downstream", ["h2c", "tls"])
def test_bidi_interleaved_nothing_is_held_back(rig: Rig, downstream: str) -> None:
    """Message N+1 leaves only after reply N came back: any buffering would stall it."""
    outgoing: queue.Queue[Any] = queue.Queue()

    def requests() -> Iterator[Any]:
        while (item := outgoing.get(timeout=5)) is not None:
            yield item

    outgoing.put(pb2.Msg(text="m0", seq=0))
    replies = rig.stub(downstream).Bidi(requests(), timeout=10)
    seen = []
    for reply in replies:
        seen.append(reply.seq)
        nxt = reply.seq + 1
        outgoing.put(pb2.Msg(text=f"m{nxt}", seq=nxt) if nxt < 20 else None)
    assert seen == list(range(20))
    assert replies.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("downstream", ["h2c", "tls"])
def test_metadata_and_binary_metadata_both_ways(rig: Rig, downstream: str) -> None:
    sent = [("x-echo-meta-plain", "v1"), ("x-echo-meta-raw-bin", b"\x00\xff\x10"),
            ("x-caller", "test")]
    _, call = rig.stub(downstream).Unary.with_call(pb2.Msg(text="m"), metadata=sent,
                                                   timeout=10)
    initial = dict(call.initial_metadata())
    trailing = dict(call.trailing_metadata())
    for meta in (initial, trailing):
        assert meta["x-echo-meta-plain"] == "v1"
        assert meta["x-echo-meta-raw-bin"] == b"\x00\xff\x10"
    assert trailing["trace-bin"] == BINARY
    seen = rig.app.calls[-1][1]
    assert seen["x-caller"] == "test" and seen["x-echo-meta-raw-bin"] == b"\x00\xff\x10"


@pytest.mark.parametrize("downstream", ["h2c", "tls"])
def test_error_status_and_trailers_only_answers(rig: Rig, downstream: str) -> None:
    stub = rig.stub(downstream)
    with pytest.raises(grpc.RpcError) as err:
        stub.Unary(pb2.Msg(text="x"), timeout=10, metadata=[
            ("x-echo-code", "5"), ("x-echo-message", "no such thing"),
            ("x-echo-trailers-only", "1")])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no such thing"
    assert dict(err.value.trailing_metadata())["server-name"] == rig.app.name
    # A failure after initial metadata: headers, then trailers with the status.
    with pytest.raises(grpc.RpcError) as err:
        stub.Unary(pb2.Msg(text="x"), timeout=10, metadata=[
            ("x-echo-code", "9"), ("x-echo-meta-k", "v")])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(err.value.initial_metadata())["x-echo-meta-k"] == "v"


def test_trailers_only_is_one_headers_frame(plain: Rig) -> None:
    """The client sees the upstream's trailers-only answer as such: no DATA, no trailers."""
    with H2Client(plain.gw.port) as c:
        sid = c.request("/meshgate.test.Echo/Unary", "POST", body=frame(pb2.Msg(text="x")),
                        headers=grpc_headers(("x-echo-code", "14"),
                                             ("x-echo-trailers-only", "1")))
        r = c.response(sid)
    assert r.status == 200 and r.header(b"grpc-status") == b"14"
    assert not r.body and not r.trailers


@pytest.mark.parametrize("downstream", ["h2c", "tls"])
def test_four_mib_messages_each_way(rig: Rig, downstream: str) -> None:
    blob = bytes(range(256)) * (4 * MIB // 256)
    reply = rig.stub(downstream).Unary(pb2.Msg(text="big", blob=blob), timeout=20)
    assert reply.blob == blob
    replies = rig.stub(downstream).Bidi(iter([pb2.Msg(seq=i, blob=blob) for i in range(2)]),
                                        timeout=20)
    assert [len(m.blob) for m in replies] == [len(blob)] * 2


def test_client_cancel_reaches_the_app(rig: Rig) -> None:
    before = rig.app.cancelled.count("ServerStream")
    stream = rig.stub().ServerStream(pb2.Count(text="c", times=200, gap_ms=20), timeout=20)
    assert [next(stream).seq for _ in range(3)] == [0, 1, 2]
    stream.cancel()
    wait_until(lambda: rig.app.cancelled.count("ServerStream") > before, timeout=5)


def test_client_deadline_is_kept_and_passed_on(rig: Rig) -> None:
    stub = rig.stub()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.Unary(pb2.Msg(text="slow"), timeout=0.5, metadata=[("x-echo-delay-ms", "3000")])
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    left = rig.app.remaining[-1]
    assert left is not None and 0 < left < 0.55   # grpc core rounds a deadline up


# -- response trailers from an HTTP/1.1 upstream ---------------------------------------
class TrailerOrigin:
    """An HTTP/1.1 origin, raw sockets in a thread: every answer is chunked and ends
    with trailers (``X-Checksum``, ``grpc-status``, and a ``Set-Cookie`` that a
    trailer may not carry), written in pieces that split the last chunk."""

    RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                b"transfer-encoding: chunked\r\ntrailer: x-checksum, grpc-status\r\n\r\n"
                b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\nX-Check",
                b"sum: abc123\r\ngrpc-status: 7\r\nSet-Cookie: no=1\r\n\r\n")

    def __init__(self, pieces: tuple[bytes, ...] = RESPONSE) -> None:
        self.pieces = pieces
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head)
                for piece in self.pieces:
                    conn.sendall(piece)
                    time.sleep(0.01)             # separate reads for the gateway

    def stop(self) -> None:
        self.sock.close()


# The same answer with its head split over two reads, and in one read whole.
_SPLIT_HEAD = (TrailerOrigin.RESPONSE[0][:30], TrailerOrigin.RESPONSE[0][30:],
               *TrailerOrigin.RESPONSE[1:])
_ONE_READ = (b"".join(TrailerOrigin.RESPONSE),)


@pytest.fixture(params=[TrailerOrigin.RESPONSE, _SPLIT_HEAD, _ONE_READ],
                ids=["pieces", "split-head", "one-read"])
def trailer_origin(request: pytest.FixtureRequest) -> Iterator[TrailerOrigin]:
    origin = TrailerOrigin(request.param)
    yield origin
    origin.stop()


def raw_http1(port: int, head: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_http1_upstream_trailers_reach_http2_and_http1_clients(trailer_origin: TrailerOrigin,
                                                              gateway_factory: Any) -> None:
    gw = gateway_factory(proxy_config(f"http://127.0.0.1:{trailer_origin.port}"))
    with H2Client(gw.port) as c:
        r = c.get("/t")
    assert r.status == 200 and bytes(r.body) == b"hello world"
    assert r.trailers == [(b"x-checksum", b"abc123"), (b"grpc-status", b"7")]
    # An HTTP/1.1 client that takes trailers gets them chunked, the same filtered ones.
    data = raw_http1(gw.port, "GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n"
                              "Connection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body.endswith(b"\r\n0\r\nx-checksum: abc123\r\ngrpc-status: 7\r\n\r\n")
    # ... one that did not ask gets none, on the same (reused) upstream connection.
    data = raw_http1(gw.port, "GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.endswith(b"6\r\n world\r\n0\r\n\r\n")
    assert trailer_origin.connections == 1 and len(trailer_origin.requests) == 3


def test_http1_upstream_trailers_on_a_guarded_cluster(trailer_origin: TrailerOrigin,
                                                      gateway_factory: Any) -> None:
    gw = gateway_factory(proxy_config(f"http://127.0.0.1:{trailer_origin.port}",
                                      service={"retry": {"retryOn": ["5xx"]}}))
    with H2Client(gw.port) as c:
        for _ in range(3):
            r = c.get("/t")
            assert bytes(r.body) == b"hello world"
            assert (b"x-checksum", b"abc123") in r.trailers
    assert trailer_origin.connections == 1


def test_upstream_trailer_fields_are_capped(gateway_factory: Any) -> None:
    many = b"".join(b"x-t%d: %d\r\n" % (i, i) for i in range(150))
    origin = TrailerOrigin((TrailerOrigin.RESPONSE[0], b"0\r\n" + many + b"\r\n"))
    try:
        gw = gateway_factory(proxy_config(f"http://127.0.0.1:{origin.port}"))
        with H2Client(gw.port) as c:
            r = c.get("/t")
        assert bytes(r.body) == b"hello"
        assert r.trailers == [(b"x-t%d" % i, b"%d" % i) for i in range(100)]
    finally:
        origin.stop()


# -- grpc-timeout ---------------------------------------------------------------------
@pytest.fixture
def h2_origin() -> Iterator[H2Origin]:
    origin = H2Origin()
    yield origin
    origin.stop()


def _timed(port: int, path: str, *headers: tuple[str, str]) -> tuple[bytes, float]:
    """(the answer's grpc-status, or its HTTP status if it has none; seconds it took)."""
    with H2Client(port) as c:
        started = time.monotonic()
        r = c.response(c.request(path, "POST", body=b"\x00\x00\x00\x00\x00",
                                 headers=list(headers)), 10)
        took = time.monotonic() - started
        return r.header(b"grpc-status") or b"http %d" % r.status, took


def _sent_timeout(origin: H2Origin) -> float | None:
    value = origin.seen.requests[-1].get(b"grpc-timeout")
    return None if value is None else grpc_vocab.parse_timeout(value)


@pytest.mark.parametrize("retry", [False, True], ids=["plain", "call"])
def test_grpc_timeout_bounds_the_deadline(h2_origin: H2Origin, gateway_factory: Any,
                                          retry: bool) -> None:
    service: dict[str, Any] = {"protocol": "h2c", "timeout": 20000}
    if retry:
        service["retry"] = {"retryOn": ["5xx", "unavailable"], "numRetries": 2}
    gw = gateway_factory(proxy_config(f"http://127.0.0.1:{h2_origin.port}", service=service))
    status, took = _timed(gw.port, "/wait/3000", *grpc_headers(("grpc-timeout", "400m")))
    assert status == b"%d" % grpc_vocab.DEADLINE_EXCEEDED
    assert 0.35 < took < 1.0                     # the sweep runs every 250 ms
    sent = _sent_timeout(h2_origin)
    assert sent is not None and 0.3 < sent <= 0.4    # what was left of it


def test_a_shorter_route_timeout_still_applies(h2_origin: H2Origin,
                                              gateway_factory: Any) -> None:
    """meshgate's own timeout answers first; the service is sent the client's deadline
    (meshgate's timeouts restart with each read of a stream: no deadline for the service)."""
    gw = gateway_factory(proxy_config(f"http://127.0.0.1:{h2_origin.port}",
                                      service={"protocol": "h2c", "timeout": 300}))
    status, took = _timed(gw.port, "/wait/3000", *grpc_headers(("grpc-timeout", "10S")))
    assert status == b"%d" % grpc_vocab.DEADLINE_EXCEEDED and took < 1.0
    sent = _sent_timeout(h2_origin)
    assert sent is not None and 9.5 < sent <= 10


def test_a_stream_outlives_the_route_timeout_within_its_deadline(
        gateway_factory: Any) -> None:
    """The route's timeout restarts with every message; the service is not told it."""
    with GrpcApp(name="streams") as app:
        gw = gateway_factory(grpc_config(app.url, "h2c", timeout=400))
        stub = pb2_grpc.EchoStub(grpc.insecure_channel(f"127.0.0.1:{gw.port}"))
        stream = stub.ServerStream(pb2.Count(text="s", times=8, gap_ms=150), timeout=10)
        assert [m.seq for m in stream] == list(range(8))    # 1 s in all
        assert stream.code() == grpc.StatusCode.OK
        left = app.remaining[-1]
        assert left is not None and left > 9


@pytest.mark.parametrize("headers", [
    grpc_headers(("grpc-timeout", "100x")),                      # malformed: ignored
    grpc_headers(("grpc-timeout", "123456789S")),                # more than 8 digits
    grpc_headers(("grpc-timeout", "0m")),                        # none (Envoy: infinite)
    [("content-type", "text/plain"), ("grpc-timeout", "100m")],  # not a gRPC request
], ids=["bad-unit", "too-long", "zero", "not-grpc"])
def test_grpc_timeout_that_is_not_a_deadline_is_passed_on(h2_origin: H2Origin,
                                                          gateway_factory: Any,
                                                          headers: list[tuple[str, str]]) -> None:
    gw = gateway_factory(proxy_config(f"http://127.0.0.1:{h2_origin.port}",
                                      service={"protocol": "h2c"}))
    status, _ = _timed(gw.port, "/wait/400", *headers)
    assert status == b"http 200"
    assert h2_origin.seen.requests[-1][b"grpc-timeout"] == dict(headers)["grpc-timeout"].encode()


# -- retries on gRPC status codes -----------------------------------------------------------
@pytest.fixture(scope="module")
def retrying(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    yield from _rig(pki, tmp_path_factory.mktemp("grpc-retry"), "h2c", retry={
        "retryOn": ["unavailable", "resource-exhausted"], "numRetries": 2,
        "backoff": {"baseInterval": 5}})


def _attempts(app: GrpcApp, key: str) -> int:
    return sum(1 for _, meta in app.calls if meta.get("x-echo-key") == key)


def test_trailers_only_unavailable_is_retried(retrying: Rig) -> None:
    reply = retrying.stub().Unary(pb2.Msg(text="again"), timeout=10, metadata=[
        ("x-echo-code", "14"), ("x-echo-fail-times", "2"), ("x-echo-key", "r1"),
        ("x-echo-trailers-only", "1")])
    assert reply.text == "again"
    assert _attempts(retrying.app, "r1") == 3


def test_grpc_retries_stop_at_num_retries(retrying: Rig) -> None:
    with pytest.raises(grpc.RpcError) as err:
        retrying.stub().Unary(pb2.Msg(text="x"), timeout=10, metadata=[
            ("x-echo-code", "8"), ("x-echo-key", "r2"), ("x-echo-trailers-only", "1")])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _attempts(retrying.app, "r2") == 3


def test_streaming_request_bodies_are_replayed(retrying: Rig) -> None:
    reply = retrying.stub().ClientStream(iter([pb2.Msg(text=t) for t in "xyz"]), timeout=10,
                                         metadata=[("x-echo-code", "14"),
                                                   ("x-echo-fail-times", "1"),
                                                   ("x-echo-key", "r3"),
                                                   ("x-echo-trailers-only", "1")])
    assert (reply.text, reply.seq) == ("xyz", 3)
    assert _attempts(retrying.app, "r3") == 2


def test_a_body_too_long_to_keep_is_not_retried(retrying: Rig) -> None:
    """Past retry.maxBodyBytes (64 KiB) the request cannot be replayed: the failure stands."""
    with pytest.raises(grpc.RpcError) as err:      # a unary call is read whole first
        retrying.stub().Unary(pb2.Msg(text="x", blob=b"b" * 100_000), timeout=10, metadata=[
            ("x-echo-code", "14"), ("x-echo-fail-times", "1"), ("x-echo-key", "r4"),
            ("x-echo-trailers-only", "1")])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _attempts(retrying.app, "r4") == 1


@pytest.mark.parametrize("metadata", [
    [("x-echo-code", "5"), ("x-echo-trailers-only", "1")],       # a code not named
    [("x-echo-code", "14"), ("x-echo-meta-h", "1")],             # not trailers-only
], ids=["other-code", "after-headers"])
def test_what_is_not_retried(retrying: Rig, metadata: list[tuple[str, str]]) -> None:
    key = f"n{len(retrying.app.calls)}"
    with pytest.raises(grpc.RpcError) as err:
        retrying.stub().Unary(pb2.Msg(text="x"), timeout=10,
                              metadata=[*metadata, ("x-echo-key", key)])
    assert err.value.code().value[0] == int(metadata[0][1])
    assert _attempts(retrying.app, key) == 1


def test_unknown_retry_on_is_refused() -> None:
    from meshgate.config.mesh import Retry
    with pytest.raises(ValueError, match="unknown retryOn 'aborted'"):
        Retry.model_validate({"retryOn": ["unavailable", "aborted"]})


# -- metrics ------------------------------------------------------------------------------
def test_requests_are_counted_by_grpc_status(plain: Rig) -> None:
    def count(status: str) -> float:
        return counter(plain.gw, "meshgate_requests_total", grpc_status=status)

    before = {s: count(s) for s in ("0", "14", "9")}
    stub = plain.stub()
    stub.Unary(pb2.Msg(text="ok"), timeout=10)
    for code, extra in (("14", ("x-echo-trailers-only", "1")), ("9", ("x-echo-meta-h", "1"))):
        with pytest.raises(grpc.RpcError):
            stub.Unary(pb2.Msg(text="x"), timeout=10, metadata=[("x-echo-code", code), extra])
    wait_until(lambda: all(count(s) == before[s] + 1 for s in before), timeout=5)
    lines = [line for line in plain.gw.metrics().splitlines()
             if line.startswith("meshgate_requests_total{")]
    assert any('code="200",grpc_status="14"' in line for line in lines)
    assert not any('grpc_status=""' in line for line in lines)


def test_grpc_status_from_http1_trailers_is_counted(trailer_origin: TrailerOrigin,
                                                    gateway_factory: Any) -> None:
    gw = gateway_factory(proxy_config(f"http://127.0.0.1:{trailer_origin.port}"))
    with H2Client(gw.port) as c:
        assert c.get("/t").trailers
    wait_until(lambda: counter(gw, "meshgate_requests_total", grpc_status="7") == 1, timeout=5)
