"""WebSocket over HTTP/1.1 through a real gateway (and sidecars) to a real origin.

The origin is the ``websockets`` library's server (echo) or a raw socket
server for answers a correct one would not give; clients are the
``websockets`` client or raw sockets. Checked: messages both ways (5 MiB
with backpressure), the close handshake, the pipeline refusing handshakes
(key-auth, rate-limit) before the origin sees them, routes without the
opt-in, upstream refusals relayed, a wrong ``Sec-WebSocket-Accept``, idle
timeout, bytes a client sends before the 101, the sidecar path, metrics.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from meshgate.protocol.websocket import accept_for
from tests import test_sidecar
from tests.support.gateway import Gateway, free_port, proxy_config, wait_until
from tests.support.ws_backend import RawUpstream, WsBackend, header, masked_text_frame
from tests.test_auth_key import Admin, key_of
from tests.test_bad_input import send_raw, status_of
from tests.test_sidecar import _instances
from tests.test_tls import Pki

mesh = test_sidecar.mesh        # the fixture: a registry and sidecars

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def handshake(path: bytes = b"/chat", extra: bytes = b"") -> bytes:
    return (b"GET %s HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n") % (path, KEY, extra)


def switching(head: bytes) -> bytes:
    """A correct 101 for the handshake ``head``."""
    key = header(head, b"sec-websocket-key") or b""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept_for(key))


def ws_config(upstream: str, **websocket: Any) -> dict[str, Any]:
    return proxy_config(upstream, proxy_action={"websocket": websocket or True})


def open_ws(gw: Gateway, path: str = "/chat", **kwargs: Any) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{gw.port}{path}", open_timeout=5, close_timeout=5,
                   max_size=None, **kwargs)


def counter(gw: Gateway, name: str, **labels: str) -> float:
    """The value of one sample of ``name`` on /metrics (0 if absent)."""
    for line in gw.metrics().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def origin() -> Iterator[WsBackend]:
    backend = WsBackend()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, origin: WsBackend) -> Iterator[Gateway]:
    """Routes: /plain/* without the opt-in, /key/* behind key-auth, /limited/* one
    handshake a minute per X-Client, everything else tunnelled."""
    ws = {"serviceEndpoint": "backend", "websocket": True}
    config: dict[str, Any] = {
        "apiEndpoints": {"plain": {"host": "*", "paths": ["/plain/*"]},
                         "key": {"host": "*", "paths": ["/key/*"]},
                         "limited": {"host": "*", "paths": ["/limited/*"]},
                         "api": {"host": "*", "paths": ["/*"]}},
        "serviceEndpoints": {"backend": {"url": origin.url}},
        "policies": ["key-auth", "proxy", "rate-limit"],
        "pipelines": {
            "plain": {"apiEndpoints": ["plain"],
                      "policies": [{"proxy": [{"action": {"serviceEndpoint": "backend"}}]}]},
            "key": {"apiEndpoints": ["key"],
                    "policies": [{"key-auth": [{"action": {}}]}, {"proxy": [{"action": ws}]}]},
            "limited": {"apiEndpoints": ["limited"], "policies": [
                {"rate-limit": [{"action": {"max": 1, "rateLimitBy": "${req.headers.x-client}"}}]},
                {"proxy": [{"action": ws}]}]},
            "main": {"apiEndpoints": ["api"], "policies": [{"proxy": [{"action": ws}]}]},
        },
    }
    gateway = Gateway(tmp_path_factory.mktemp("ws"), config)
    yield gateway
    gateway.stop()


# -- messages ------------------------------------------------------------------------------

def test_text_and_binary_messages_echo(gw: Gateway, origin: WsBackend) -> None:
    with open_ws(gw, "/chat?room=1") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\xff binary")
        assert ws.recv(timeout=5) == b"\x00\xff binary"
    path, headers = origin.handshakes[-1]
    assert path == "/chat?room=1"
    assert headers["upgrade"] == ["websocket"] and headers["connection"] == ["upgrade"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"] and "eg-request-id" in headers


def test_five_mib_message_both_ways(gw: Gateway) -> None:
    big = os.urandom(5 << 20)
    with open_ws(gw, compression=None) as ws:
        ws.send(big)
        assert ws.recv(timeout=20) == big


def test_close_handshake_passes_through(gw: Gateway, origin: WsBackend) -> None:
    with open_ws(gw) as ws:
        ws.send("x")
        ws.recv(timeout=5)
        ws.close(4001, "done here")
    assert ws.close_code == 4001 and ws.close_reason == "done here"   # the origin's echo
    # The origin is shared: an earlier test's connection may record its close later.
    wait_until(lambda: (4001, "done here") in origin.closes, timeout=5)


def test_permessage_deflate_is_negotiated_end_to_end(gw: Gateway, origin: WsBackend) -> None:
    with open_ws(gw) as ws:
        ws.send("a" * 10000)
        assert ws.recv(timeout=5) == "a" * 10000
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
    assert "permessage-deflate" in origin.handshakes[-1][1]["sec-websocket-extensions"][0]


# -- the pipeline applies to the handshake -------------------------------------------------

def test_key_auth_refuses_a_handshake_without_credentials(gw: Gateway,
                                                          origin: WsBackend) -> None:
    seen = len(origin.handshakes)
    with pytest.raises(InvalidStatus) as refused:
        open_ws(gw, "/key/chat")
    assert refused.value.response.status_code == 401
    assert len(origin.handshakes) == seen
    admin = Admin(gw)
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    with open_ws(gw, "/key/chat",
                 additional_headers={"Authorization": f"apiKey {key_of(cred)}"}) as ws:
        ws.send("in")
        assert ws.recv(timeout=5) == "in"
    assert origin.handshakes[-1][1]["eg-consumer-id"] == [user["id"]]


def test_rate_limit_refuses_the_second_handshake(gw: Gateway, origin: WsBackend) -> None:
    client = {"X-Client": os.urandom(4).hex()}
    with open_ws(gw, "/limited/a", additional_headers=client) as ws:
        ws.send("one")
        assert ws.recv(timeout=5) == "one"
    seen = len(origin.handshakes)
    with pytest.raises(InvalidStatus) as refused:
        open_ws(gw, "/limited/a", additional_headers=client)
    assert refused.value.response.status_code == 429
    assert len(origin.handshakes) == seen


def test_a_route_without_the_opt_in_serves_plain_http(gw: Gateway,
                                                      origin: WsBackend) -> None:
    after = b"GET /plain/after HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    response, closed = send_raw(gw.port, handshake(b"/plain/chat") + after)
    # The origin got two GETs without Upgrade and answered as websockets does (426);
    # what followed the handshake was the next request, as for any plain request.
    assert response.count(b"HTTP/1.1 426 ") == 2 and closed
    assert [path for path, _ in origin.handshakes[-2:]] == ["/plain/chat", "/plain/after"]
    assert "upgrade" not in origin.handshakes[-2][1]


def test_an_invalid_handshake_is_400_and_another_version_426(gw: Gateway,
                                                             origin: WsBackend) -> None:
    seen = len(origin.handshakes)
    bad_key = handshake().replace(KEY, b"c2hvcnQ=")
    assert status_of(send_raw(gw.port, bad_key)[0]) == 400
    no_version = handshake().replace(b"Sec-WebSocket-Version: 13\r\n", b"")
    assert status_of(send_raw(gw.port, no_version)[0]) == 400
    response, closed = send_raw(gw.port, handshake().replace(b"Version: 13", b"Version: 8"))
    assert status_of(response) == 426 and closed
    assert b"sec-websocket-version: 13" in response.lower()
    assert len(origin.handshakes) == seen


def test_upgrade_with_a_body_is_still_400(gw: Gateway, origin: WsBackend) -> None:
    seen = len(origin.handshakes)
    body = b"GET /admin HTTP/1.1\r\nHost: gw\r\n\r\n"
    response, closed = send_raw(gw.port, handshake(extra=b"Content-Length: %d\r\n" % len(body))
                                + body)
    assert status_of(response) == 400 and closed
    assert len(origin.handshakes) == seen


def test_h2c_on_a_websocket_route_is_served_as_http1(gw: Gateway, origin: WsBackend) -> None:
    response, _ = send_raw(gw.port, b"GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, "
                                    b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk"
                                    b"\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 426          # the origin saw a plain GET: not a handshake
    assert "upgrade" not in origin.handshakes[-1][1]


# -- bytes before the 101 -------------------------------------------------------------------

def test_bytes_sent_with_the_handshake_reach_the_tunnel(gw: Gateway) -> None:
    frame = masked_text_frame(b"early")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(handshake() + frame)
        data = b""
        while b"early" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert header(head + b"\r\n", b"sec-websocket-accept") == accept_for(KEY)
    assert rest == b"\x81\x05early"               # the origin's echo, unmasked


def test_bytes_before_a_refused_upgrade_never_reach_the_upstream(gateway_factory: Any) -> None:
    upstream = RawUpstream(lambda head: b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n")
    try:
        gw = gateway_factory(ws_config(upstream.url))
        smuggled = b"GET /admin/x HTTP/1.1\r\nHost: gw\r\n\r\n"
        response, closed = send_raw(gw.port, handshake() + smuggled)
        assert status_of(response) == 403 and response.endswith(b"no\n") and closed
        assert response.count(b"HTTP/1.1") == 1
        wait_until(upstream.done.is_set, timeout=5)
        assert len(upstream.heads) == 1 and upstream.after == [b""]
    finally:
        upstream.stop()


def test_bytes_before_the_101_go_upstream_after_it(gateway_factory: Any) -> None:
    upstream = RawUpstream(switching)
    try:
        gw = gateway_factory(ws_config(upstream.url))
        frame = masked_text_frame(b"early")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(handshake() + frame)
            assert sock.recv(65536).startswith(b"HTTP/1.1 101 ")
        wait_until(upstream.done.is_set, timeout=5)
        [head] = upstream.heads
        assert head.startswith(b"GET /chat HTTP/1.1\r\n")
        assert header(head, b"upgrade") == b"websocket"
        assert upstream.after == [frame]
    finally:
        upstream.stop()


# -- upstream answers -----------------------------------------------------------------------

def test_an_upstream_refusal_is_relayed_and_the_connection_closes(
        gateway_factory: Any) -> None:
    refusing = WsBackend(reject=403)
    try:
        gw = gateway_factory(ws_config(refusing.url))
        response, closed = send_raw(gw.port, handshake())
        assert status_of(response) == 403 and closed
        assert response.endswith(b"refused by the origin\n")
    finally:
        refusing.stop()


def test_a_wrong_accept_is_502(gateway_factory: Any) -> None:
    upstream = RawUpstream(lambda head: switching(head.replace(KEY, b"x" + KEY[1:])))
    try:
        gw = gateway_factory(ws_config(upstream.url))
        response, closed = send_raw(gw.port, handshake())
        assert status_of(response) == 502 and closed
        assert b"did not accept the WebSocket handshake" in response
    finally:
        upstream.stop()


def test_an_unreachable_upstream_is_502(gateway_factory: Any) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    gw = gateway_factory(ws_config(f"http://127.0.0.1:{port}"))
    assert status_of(send_raw(gw.port, handshake())[0]) == 502


# -- limits, drain, metrics -----------------------------------------------------------------

def test_idle_tunnels_close(gateway_factory: Any, origin: WsBackend) -> None:
    gw = gateway_factory(ws_config(origin.url, idleTimeout=500))
    with open_ws(gw) as ws:
        ws.send("keep")
        assert ws.recv(timeout=5) == "keep"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)                 # nothing moves: closed after about 0.5 s
    wait_until(lambda: counter(gw, "meshgate_websocket_tunnels_closed_total",
                               reason="idle_timeout") == 1, timeout=5)


def test_max_tunnels_answers_503(gateway_factory: Any, origin: WsBackend) -> None:
    gw = gateway_factory(ws_config(origin.url, maxTunnels=1))
    with open_ws(gw) as first:
        with pytest.raises(InvalidStatus) as refused:
            open_ws(gw)
        assert refused.value.response.status_code == 503
        first.send("still")
        assert first.recv(timeout=5) == "still"
    wait_until(lambda: counter(gw, "meshgate_websocket_tunnels_active") == 0, timeout=5)
    with open_ws(gw) as again:                # the slot came back
        again.send("x")
        assert again.recv(timeout=5) == "x"


def test_sigterm_closes_open_tunnels_at_drain_timeout(gateway_factory: Any,
                                                      origin: WsBackend) -> None:
    config = ws_config(origin.url)
    config["server"] = {"drainTimeout": 500}
    gw = gateway_factory(config)
    with open_ws(gw) as ws:
        ws.send("x")
        ws.recv(timeout=5)
        assert gw.process is not None
        gw.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert gw.process.wait(timeout=10) == 0


def test_metrics_count_handshakes_tunnels_and_bytes(gateway_factory: Any,
                                                    origin: WsBackend) -> None:
    gw = gateway_factory(ws_config(origin.url))
    with open_ws(gw, compression=None) as ws:
        ws.send(b"z" * 1000)
        assert ws.recv(timeout=5) == b"z" * 1000
        wait_until(lambda: counter(gw, "meshgate_websocket_tunnels_active") == 1, timeout=5)
    wait_until(lambda: counter(gw, "meshgate_websocket_tunnels_closed_total",
                               service_endpoint="backend", reason="closed") == 1, timeout=5)
    assert counter(gw, "meshgate_requests_total", code="101", service_endpoint="backend") == 1
    assert counter(gw, "meshgate_websocket_tunnels_opened_total", service_endpoint="backend") == 1
    assert counter(gw, "meshgate_websocket_tunnels_active") == 0
    for direction in ("upstream", "downstream"):      # 1000 bytes plus framing and close
        moved = counter(gw, "meshgate_websocket_bytes_total", direction=direction)
        assert 1000 < moved < 1100, (direction, moved)


def test_a_reload_closes_tunnels_after_the_drain_timeout(gateway_factory: Any,
                                                         origin: WsBackend) -> None:
    config = ws_config(origin.url)
    config["server"] = {"drainTimeout": 300}
    gw = gateway_factory(config)
    with open_ws(gw) as ws:
        ws.send("x")
        ws.recv(timeout=5)
        config["serviceEndpoints"]["backend"]["timeout"] = 30000
        gw.write(config)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=8)
    assert counter(gw, "meshgate_websocket_tunnels_closed_total", reason="reload") == 1
    with open_ws(gw) as ws:                    # the new config tunnels too
        ws.send("y")
        assert ws.recv(timeout=5) == "y"


def test_wss_through_the_tls_listener(tmp_path_factory: pytest.TempPathFactory,
                                      gateway_factory: Any, origin: WsBackend) -> None:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    config = ws_config(origin.url)
    config["https"] = {"port": free_port(), "hostname": "127.0.0.1",
                       "tls": {"default": pki.leaf("gw", "gw.example.com")}}
    gateway_factory(config)
    tls = ssl.create_default_context(cafile=str(pki.ca_path))
    sock = socket.create_connection(("127.0.0.1", config["https"]["port"]), timeout=5)
    with connect("wss://gw.example.com/secure", sock=sock, ssl=tls, open_timeout=5,
                 max_size=None, compression=None) as ws:
        big = os.urandom(1 << 20)
        ws.send(big)
        assert ws.recv(timeout=10) == big
        ws.send("small")
        assert ws.recv(timeout=5) == "small"
    assert origin.handshakes[-1][1]["x-forwarded-proto"] == ["https"]


# -- sidecars -------------------------------------------------------------------------------

def test_through_caller_and_callee_sidecars(mesh: dict[str, Any], origin: WsBackend) -> None:
    mesh["sidecar"]("chat", origin.port)
    caller = mesh["sidecar"]("web", 1, "--no-register")
    wait_until(lambda: _instances(mesh["registry"], "chat"), timeout=5)
    sock = socket.create_connection(("127.0.0.1", caller.outbound), timeout=5)
    with connect("ws://chat/room", sock=sock, open_timeout=5, max_size=None) as ws:
        ws.send("through two sidecars")
        assert ws.recv(timeout=5) == "through two sidecars"
    path, headers = origin.handshakes[-1]
    assert path == "/room" and headers["upgrade"] == ["websocket"]

