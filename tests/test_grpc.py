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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.gateway import Gateway, free_port, proxy_config, wait_until
from tests.support.grpc_app import BINARY, LARGE_MESSAGES, GrpcApp, stubs
from tests.support.h2client import H2Client
from tests.test_tls import Pki

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
