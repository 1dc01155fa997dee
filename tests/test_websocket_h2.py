"""WebSocket over HTTP/2 (RFC 8441 extended CONNECT) through a real gateway to a real origin.

Clients are ``tests.support.h2client`` (the ``h2`` library, frames visible)
carrying WebSocket frames made by ``tests.support.ws_frames``; the origin is
the ``websockets`` library's echo server, reached over HTTP/1.1 as for any
handshake. Checked: the setting advertised only when some route tunnels
WebSocket, messages both ways (1 MiB through the flow-control windows),
the close handshake and half-close, resets both ways, the pipeline refusing
the handshake (key-auth) before the origin sees it, upstream refusals on
the stream, other ``:protocol`` values, routes without the opt-in,
``maxTunnels`` and ``idleTimeout``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import h2.errors
import httpx
import pytest

from tests import test_sidecar
from tests.support.gateway import Gateway, proxy_config, wait_until
from tests.support.h2client import H2Client, Stream
from tests.support.ws_backend import RawUpstream, WsBackend, header
from tests.support.ws_frames import BINARY, CLOSE, TEXT, Reader, close_payload, encode
from tests.test_auth_key import Admin, key_of
from tests.test_sidecar import _instances
from tests.test_websocket import counter, switching

mesh = test_sidecar.mesh        # the fixture: a registry and sidecars

VERSION = [("sec-websocket-version", "13")]


class WsStream:
    """One WebSocket over an extended CONNECT stream of ``client``."""

    def __init__(self, client: H2Client, sid: int) -> None:
        self.client = client
        self.sid = sid
        self.reader = Reader()
        self.seen = 0
        self.frames: list[tuple[int, bytes]] = []

    @property
    def stream(self) -> Stream:
        return self.client.streams[self.sid]

    def send(self, opcode: int, payload: bytes) -> None:
        self.client.send_body(self.sid, encode(opcode, payload), end=False)

    def _take(self) -> bool:
        body = self.stream.body
        if len(body) > self.seen:
            self.frames += self.reader.feed(bytes(body[self.seen:]))
            self.seen = len(body)
        return bool(self.frames)

    def recv(self, timeout: float = 5.0) -> tuple[int, bytes]:
        self.client.until(self._take, timeout)
        return self.frames.pop(0)


def open_ws(client: H2Client, path: str = "/chat",
            headers: list[tuple[str, str]] | None = None,
            authority: str = "gw") -> tuple[Stream, WsStream]:
    sid = client.extended_connect(path, headers=VERSION + (headers or []), authority=authority)
    stream = client.streams[sid]
    client.until(lambda: stream.headers or stream.reset is not None)
    return stream, WsStream(client, sid)


@pytest.fixture(scope="module")
def origin() -> Iterator[WsBackend]:
    backend = WsBackend()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, origin: WsBackend) -> Iterator[Gateway]:
    """/plain/* without the opt-in, /key/* behind key-auth, /limited/* one handshake a
    minute per X-Client, /cors/* with CORS for one origin, the rest tunnelled."""
    ws = {"serviceEndpoint": "backend", "websocket": True}
    config: dict[str, Any] = {
        "apiEndpoints": {"plain": {"host": "*", "paths": ["/plain/*"]},
                         "key": {"host": "*", "paths": ["/key/*"]},
                         "limited": {"host": "*", "paths": ["/limited/*"]},
                         "cors": {"host": "*", "paths": ["/cors/*"]},
                         "api": {"host": "*", "paths": ["/*"]}},
        "serviceEndpoints": {"backend": {"url": origin.url}},
        "policies": ["cors", "key-auth", "proxy", "rate-limit"],
        "pipelines": {
            "limited": {"apiEndpoints": ["limited"], "policies": [
                {"rate-limit": [{"action": {"max": 1, "rateLimitBy": "${req.headers.x-client}"}}]},
                {"proxy": [{"action": ws}]}]},
            "cors": {"apiEndpoints": ["cors"], "policies": [
                {"cors": [{"action": {"origin": ["https://app.example.com"]}}]},
                {"proxy": [{"action": ws}]}]},
            "plain": {"apiEndpoints": ["plain"],
                      "policies": [{"proxy": [{"action": {"serviceEndpoint": "backend"}}]}]},
            "key": {"apiEndpoints": ["key"],
                    "policies": [{"key-auth": [{"action": {}}]}, {"proxy": [{"action": ws}]}]},
            "main": {"apiEndpoints": ["api"], "policies": [{"proxy": [{"action": ws}]}]},
        },
    }
    gateway = Gateway(tmp_path_factory.mktemp("wsh2"), config)
    yield gateway
    gateway.stop()


@pytest.fixture
def client(gw: Gateway) -> Iterator[H2Client]:
    with H2Client(gw.port) as c:
        c.until(lambda: c.conn.remote_settings.enable_connect_protocol is not None)
        yield c


# -- the setting -----------------------------------------------------------------------------

def test_the_setting_is_advertised_when_a_route_tunnels_websocket(client: H2Client) -> None:
    client.until(lambda: any(type(e).__name__ == "RemoteSettingsChanged" for e in client.events))
    assert client.conn.remote_settings.enable_connect_protocol == 1


def test_not_advertised_and_refused_without_websocket_routes(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url))
    with H2Client(gw.port) as c:
        c.until(lambda: any(type(e).__name__ == "RemoteSettingsChanged" for e in c.events))
        assert c.conn.remote_settings.enable_connect_protocol == 0
        stream, ws = open_ws(c)
        c.response(ws.sid)
        assert stream.status == 501
    assert httpx.get(backend.url + "/_ctl/count", timeout=5).text.strip() == "0"


def advertised(port: int) -> int:
    with H2Client(port) as c:
        c.until(lambda: any(type(e).__name__ == "RemoteSettingsChanged" for e in c.events))
        return int(c.conn.remote_settings.enable_connect_protocol)


def test_a_reload_changes_what_new_connections_are_told(origin: WsBackend,
                                                        gateway_factory) -> None:
    config = proxy_config(origin.url, proxy_action={"websocket": True})
    gw = gateway_factory(config)
    assert advertised(gw.port) == 1
    with H2Client(gw.port) as kept:
        stream, ws = open_ws(kept)
        assert stream.status == 200
        plain = proxy_config(origin.url)
        plain["http"], plain["admin"] = config["http"], config["admin"]
        gw.write(plain)
        wait_until(lambda: advertised(gw.port) == 0, timeout=10)
        ws.send(TEXT, b"runs on")          # an open tunnel keeps its config (drainTimeout)
        assert ws.recv() == (TEXT, b"runs on")
        stream, again = open_ws(kept)      # its connection was told 1; the route now says no
        kept.response(again.sid)
        assert stream.status == 426       # the origin's answer to the plain GET, relayed


# -- messages ----------------------------------------------------------------------------------

def test_messages_echo_both_ways(client: H2Client, origin: WsBackend) -> None:
    stream, ws = open_ws(client, "/chat?room=1")
    assert stream.status == 200
    assert stream.header(b"sec-websocket-accept") is None       # RFC 8441 does not use it
    ws.send(TEXT, b"hello")
    assert ws.recv() == (TEXT, b"hello")
    ws.send(BINARY, b"\x00\xff binary")
    assert ws.recv() == (BINARY, b"\x00\xff binary")
    path, headers = origin.handshakes[-1]
    assert path == "/chat?room=1"
    assert headers["upgrade"] == ["websocket"] and headers["connection"] == ["upgrade"]
    assert len(base64.b64decode(headers["sec-websocket-key"][0])) == 16
    assert headers["sec-websocket-version"] == ["13"] and "eg-request-id" in headers
    assert not stream.ended and stream.reset is None


def test_one_mib_message_through_the_windows(client: H2Client) -> None:
    _, ws = open_ws(client)
    big = os.urandom(1 << 20)
    ws.send(BINARY, big)                 # send_body waits for the gateway's WINDOW_UPDATEs
    assert ws.recv(timeout=20) == (BINARY, big)


def test_a_client_that_stops_reading_holds_the_upstream(gw: Gateway) -> None:
    """Without WINDOW_UPDATEs from the client no more than its window arrives; then the rest."""
    with H2Client(gw.port, auto_ack=False) as c:
        c.until(lambda: c.conn.remote_settings.enable_connect_protocol is not None)
        stream, ws = open_ws(c)
        big = os.urandom(512 << 10)
        ws.send(BINARY, big)
        c.until(lambda: len(stream.body) >= 65535 - 16384, timeout=10)
        for _ in range(3):
            c.receive(0.2)
        assert len(stream.body) <= 65535 and not stream.ended and stream.reset is None
        acked = 0

        def more() -> bool:
            nonlocal acked
            if len(stream.body) > acked:
                c.conn.acknowledge_received_data(len(stream.body) - acked, ws.sid)
                acked = len(stream.body)
                c.flush()
            return ws._take()

        c.until(more, timeout=20)
        assert ws.frames.pop(0) == (BINARY, big)


def test_a_dropped_client_connection_closes_the_upstream(gw: Gateway,
                                                         origin: WsBackend) -> None:
    with H2Client(gw.port) as c:
        _, ws = open_ws(c)
        ws.send(TEXT, b"bye")
        assert ws.recv() == (TEXT, b"bye")
        closes = len(origin.closes)
    wait_until(lambda: len(origin.closes) > closes, timeout=5)


def test_several_tunnels_share_one_connection(client: H2Client) -> None:
    sockets = [open_ws(client, f"/multi/{i}")[1] for i in range(5)]
    for i, ws in enumerate(sockets):
        ws.send(TEXT, b"n%d" % i)
    for i, ws in enumerate(sockets):
        assert ws.recv() == (TEXT, b"n%d" % i)
    assert client.get("/plain/x").status == 426     # plain requests still flow beside them


def test_close_handshake_and_half_close(client: H2Client, origin: WsBackend) -> None:
    stream, ws = open_ws(client)
    ws.send(CLOSE, close_payload(4001, "done here"))
    assert ws.recv() == (CLOSE, close_payload(4001, "done here"))
    # The origin half-closes its TCP connection after the close handshake: our
    # END_STREAM; it then waits for the client's end, which is ours.
    client.until(lambda: stream.ended)
    assert stream.reset is None
    client.conn.end_stream(ws.sid)
    client.flush()
    wait_until(lambda: (4001, "done here") in origin.closes, timeout=5)
    assert client.get("/plain/y").status == 426     # the connection is fine afterwards
    assert stream.reset is None


def test_client_end_stream_half_closes_the_upstream(gateway_factory) -> None:
    """END_STREAM reaches the upstream as EOF after every byte; its close ends our side."""
    raw = RawUpstream(switching)
    try:
        gw = gateway_factory(proxy_config(raw.url, proxy_action={"websocket": True}))
        with H2Client(gw.port) as c:
            stream, ws = open_ws(c)
            assert stream.status == 200
            frames = encode(TEXT, b"one") + encode(BINARY, b"two" * 1000)
            c.send_body(ws.sid, frames, end=True)
            assert raw.done.wait(5)       # the upstream read to its EOF, then closed
            c.until(lambda: stream.ended or stream.reset is not None)
            assert stream.ended and stream.reset is None
        assert raw.after == [frames]
        head = raw.heads[0]
        key = header(head, b"sec-websocket-key")
        assert key is not None and len(base64.b64decode(key)) == 16
    finally:
        raw.stop()


def test_client_reset_aborts_the_tunnel(gw: Gateway, client: H2Client,
                                        origin: WsBackend) -> None:
    _, ws = open_ws(client)
    ws.send(TEXT, b"x")
    assert ws.recv() == (TEXT, b"x")
    closes = len(origin.closes)
    active = counter(gw, "meshgate_websocket_tunnels_active")
    client.conn.reset_stream(ws.sid, h2.errors.ErrorCodes.CANCEL)
    client.flush()
    wait_until(lambda: len(origin.closes) > closes, timeout=5)
    wait_until(lambda: counter(gw, "meshgate_websocket_tunnels_active") < active, timeout=5)


# -- refusals ----------------------------------------------------------------------------------

def test_key_auth_refuses_the_handshake_before_the_origin(gw: Gateway, client: H2Client,
                                                         origin: WsBackend) -> None:
    seen = len(origin.handshakes)
    stream, ws = open_ws(client, "/key/chat")
    client.response(ws.sid)
    assert stream.status == 401 and len(origin.handshakes) == seen
    admin = Admin(gw)
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    stream, ws = open_ws(client, "/key/chat", [("authorization", f"apiKey {key_of(cred)}")])
    assert stream.status == 200
    ws.send(TEXT, b"in")
    assert ws.recv() == (TEXT, b"in")
    assert origin.handshakes[-1][1]["eg-consumer-id"] == [user["id"]]


def test_refused_handshakes_give_their_early_data_window_back(client: H2Client) -> None:
    """DATA held for a tunnel that never opened must not shrink the connection window."""
    for _ in range(30):                  # 30 x 50000 bytes: over the 1 MiB window
        client.until(lambda: client.conn.outbound_flow_control_window >= 50000)
        sid = client.conn.get_next_available_stream_id()
        client.streams[sid] = Stream()
        client.conn.send_headers(sid, [
            (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
            (b":path", b"/key/chat"), (b":authority", b"gw"), (b"sec-websocket-version", b"13")])
        data = encode(BINARY, b"x" * 49990, mask=False)
        for at in range(0, len(data), 16384):       # in the same write as the head
            client.conn.send_data(sid, data[at:at + 16384])
        client.flush()
        assert client.response(sid).status == 401


def test_rate_limit_refuses_the_second_handshake(client: H2Client,
                                                 origin: WsBackend) -> None:
    who = [("x-client", os.urandom(4).hex())]
    stream, ws = open_ws(client, "/limited/a", who)
    assert stream.status == 200
    assert stream.header(b"ratelimit-remaining") == b"0"
    seen = len(origin.handshakes)
    stream, ws = open_ws(client, "/limited/a", who)
    client.response(ws.sid)
    assert stream.status == 429 and len(origin.handshakes) == seen


def test_cors_and_negotiated_extensions_reach_the_200(client: H2Client) -> None:
    stream, _ = open_ws(client, "/cors/chat", [
        ("origin", "https://app.example.com"),
        ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits")])
    assert stream.status == 200
    assert stream.header(b"access-control-allow-origin") == b"https://app.example.com"
    assert b"permessage-deflate" in (stream.header(b"sec-websocket-extensions") or b"")
    fields = [name for name, _ in stream.headers]
    assert b"upgrade" not in fields and b"connection" not in fields


def test_upstream_refusal_is_the_streams_status(gateway_factory) -> None:
    refusing = WsBackend(reject=403)
    try:
        gw = gateway_factory(proxy_config(refusing.url, proxy_action={"websocket": True}))
        with H2Client(gw.port) as c:
            sid = c.extended_connect("/chat", headers=VERSION)
            c.send_body(sid, encode(TEXT, b"never delivered"), end=False)
            stream = c.response(sid)
            assert stream.status == 403 and b"refused by the origin" in stream.body
            c.until(lambda: stream.reset is not None)   # NO_ERROR: stop sending (RFC 9113 8.1)
            assert stream.reset == 0
        assert len(refusing.handshakes) == 1
    finally:
        refusing.stop()


def test_a_101_with_the_wrong_accept_is_502(gateway_factory) -> None:
    raw = RawUpstream(lambda head: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSBvbmU=\r\n\r\n")
    try:
        gw = gateway_factory(proxy_config(raw.url, proxy_action={"websocket": True}))
        with H2Client(gw.port) as c:
            sid = c.extended_connect("/chat", headers=VERSION)
            c.send_body(sid, b"early bytes", end=False)
            stream = c.response(sid)
            assert stream.status == 502
        assert raw.done.wait(5) and raw.after == [b""]     # nothing went upstream
    finally:
        raw.stop()


def test_other_protocols_and_plain_connect_are_501(client: H2Client,
                                                   origin: WsBackend) -> None:
    seen = len(origin.handshakes)
    sid = client.extended_connect("/chat", protocol="connect-udp", headers=VERSION)
    assert client.response(sid).status == 501
    sid = client.conn.get_next_available_stream_id()
    client.streams[sid] = Stream()
    client.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"gw:443")])
    client.flush()
    assert client.response(sid).status == 501
    assert len(origin.handshakes) == seen


def test_a_missing_version_is_400(client: H2Client, origin: WsBackend) -> None:
    seen = len(origin.handshakes)
    sid = client.extended_connect("/chat")
    assert client.response(sid).status == 400
    assert len(origin.handshakes) == seen


def test_a_route_without_the_opt_in_never_answers_2xx(backend, gateway_factory) -> None:
    """The route forwards a plain GET; the backend's 200 would say 'tunnel open': 501."""
    config = proxy_config(backend.url)
    config["apiEndpoints"]["ws"] = {"host": "*", "paths": ["/ws/*"]}
    config["pipelines"]["ws"] = {"apiEndpoints": ["ws"], "policies": [
        {"proxy": [{"action": {"serviceEndpoint": "backend", "websocket": True}}]}]}
    gw = gateway_factory(config)
    with H2Client(gw.port) as c:
        stream, ws = open_ws(c, "/plain")
        c.response(ws.sid)
        assert stream.status == 501 and b"not enabled on this route" in stream.body
        assert c.get("/after").status == 200


# -- limits ------------------------------------------------------------------------------------

def test_max_tunnels_and_idle_timeout(origin: WsBackend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(origin.url, proxy_action={
        "websocket": {"maxTunnels": 1, "idleTimeout": 600}}))
    with H2Client(gw.port) as c:
        first, ws = open_ws(c)
        assert first.status == 200
        second, other = open_ws(c)
        c.response(other.sid)
        assert second.status == 503
        assert counter(gw, "meshgate_websocket_overflow_total") == 1
        ws.send(TEXT, b"still here")
        assert ws.recv() == (TEXT, b"still here")
        c.until(lambda: first.ended or first.reset is not None, timeout=5)   # idle 600 ms
        third, _ = open_ws(c)              # the slot came back
        assert third.status == 200
    wait_until(lambda: counter(gw, "meshgate_websocket_tunnels_closed_total",
                               reason="idle_timeout") >= 1, timeout=5)


# -- sidecars ----------------------------------------------------------------------------------

def test_through_caller_and_callee_sidecars(mesh: dict[str, Any], origin: WsBackend) -> None:
    """The caller's outbound port always offers extended CONNECT; the callee's inbound
    port does since its default pipeline tunnels WebSocket."""
    mesh["sidecar"]("chat", origin.port)
    caller = mesh["sidecar"]("web", 1, "--no-register")
    wait_until(lambda: _instances(mesh["registry"], "chat"), timeout=5)
    with H2Client(caller.outbound) as c:
        stream, ws = open_ws(c, "/room", authority="chat")
        assert stream.status == 200
        ws.send(TEXT, b"through two sidecars")
        assert ws.recv() == (TEXT, b"through two sidecars")
    path, headers = origin.handshakes[-1]
    assert path == "/room" and headers["upgrade"] == ["websocket"]
