"""HTTP/2 between sidecars, and gRPC through two of them.

Real processes on loopback, as in ``test_sidecar.py``: ``meshgate
registry``, the callee's app behind its sidecar, and a caller's sidecar whose
outbound port the test calls as the app would. Between the two sidecars the
calls travel as h2c streams over a few connections (the callee registered
``protocol: h2c``); each app speaks its own protocol to its sidecar: HTTP/1.1
to a plain backend, h2c to a gRPC server (``--app-protocol h2c``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from websockets.sync.client import connect

from meshgate.config.loader import ConfigError, load_config
from tests import test_sidecar
from tests.support.gateway import free_port, wait_until
from tests.support.grpc_app import BINARY, GrpcApp, stubs
from tests.support.registry import RegistryProcess
from tests.support.ws_backend import WsBackend
from tests.test_sidecar import Sidecar, _instances

mesh = test_sidecar.mesh        # the fixture: a registry and sidecars
BURST = 200


def gauge(side: Sidecar, name: str) -> float:
    """A sidecar's unlabelled gauge on its /metrics."""
    text = httpx.get(f"http://127.0.0.1:{side.admin}/metrics", timeout=5).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def spoken(side: Sidecar, service: str) -> list[str]:
    """What the caller's worker speaks to each endpoint of ``service`` (/clusters)."""
    clusters = httpx.get(f"http://127.0.0.1:{side.admin}/clusters", timeout=5).json()
    return sorted(ep["protocol"] for ep in clusters[service]["workers"][0])


async def _burst(port: int, service: str, path: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=20, headers={"host": service}) as client:
        return list(await asyncio.gather(*(client.get(f"http://127.0.0.1:{port}{path}")
                                           for _ in range(n))))


def burst(side: Sidecar, service: str, path: str, n: int = BURST) -> list[httpx.Response]:
    """``n`` HTTP/1.1 calls at once from the app to ``service``, each on its own connection."""
    return asyncio.run(_burst(side.outbound, service, path, n))


# -- HTTP/1.1 apps, h2c between the sidecars --------------------------------------------------

def test_a_burst_shares_a_few_h2_connections_between_sidecars(mesh: dict[str, Any]) -> None:
    users = mesh["backend"]("users0")
    callee = mesh["sidecar"]("users", users.port)
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    [instance] = wait_until(lambda: _instances(mesh["registry"], "users"), timeout=5)
    assert instance["metadata"]["protocol"] == "h2c"
    # 200 calls in flight at once: 200 client connections to the caller's sidecar ...
    answers = burst(caller, "users", "/slow/300")
    assert [r.status_code for r in answers] == [200] * BURST
    assert spoken(caller, "users") == ["h2c"]
    # ... but between the sidecars, streams on two connections (100 streams each).
    assert 1 <= gauge(callee, "meshgate_downstream_connections") <= 4
    # The app still sees HTTP/1.1, bodies and framing intact either way.
    with httpx.Client(timeout=10, headers={"host": "users"}) as client:
        out = f"http://127.0.0.1:{caller.outbound}"
        r = client.post(out + "/echo", content=b"x" * 100_000)
        assert r.status_code == 200 and r.json()["length"] == 100_000
        assert r.json()["crc"] == zlib.crc32(b"x" * 100_000)
        chunks = [b"a" * 70_000, b"b" * 70_000]          # chunked from the app
        r = client.post(out + "/upload", content=iter(chunks))
        assert r.json() == {"length": 140_000, "crc": zlib.crc32(b"".join(chunks))}
        r = client.get(out + "/chunked")
        assert (r.status_code, r.content) == (200, b"hello world")


async def _cancel_waves(port: int, waves: int, per_wave: int) -> httpx.Response:
    """One long call, and meanwhile ``waves`` x ``per_wave`` calls the app gives up on."""
    limits = httpx.Limits(max_connections=per_wave + 1, max_keepalive_connections=per_wave + 1)
    out = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(limits=limits, headers={"host": "users"}) as client:
        kept = asyncio.ensure_future(client.get(out + "/slow/1500", timeout=10))
        await asyncio.sleep(0.05)

        async def abandoned() -> None:
            with contextlib.suppress(httpx.TimeoutException):
                await client.get(out + "/slow/3000", timeout=0.1)

        for _ in range(waves):
            await asyncio.gather(*(abandoned() for _ in range(per_wave)))
        return await kept


def test_calls_the_app_cancels_cost_no_other_call(mesh: dict[str, Any]) -> None:
    """400 cancellations within a second are 400 resets on the shared connections; past
    its budget a connection defers them, so the callee never takes it for a rapid-reset
    attack (GOAWAY ENHANCE_YOUR_CALM) and the call still in flight on it survives."""
    users = mesh["backend"]("users0")
    callee = mesh["sidecar"]("users", users.port)
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    wait_until(lambda: _instances(mesh["registry"], "users"), timeout=5)
    kept = asyncio.run(_cancel_waves(caller.outbound, 4, 99))
    assert kept.status_code == 200 and kept.json()["path"] == "/slow/1500"
    assert "ENHANCE_YOUR_CALM" not in callee.log_path.read_text()
    assert spoken(caller, "users") == ["h2c"]


def test_an_app_that_stops_reading_holds_up_no_other_call(mesh: dict[str, Any]) -> None:
    """A 50 MB answer its caller does not read shares the connection between the sidecars
    with the other calls: only its own stream stops (its window is not credited)."""
    users = mesh["backend"]("users0")
    mesh["sidecar"]("users", users.port)
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    wait_until(lambda: _instances(mesh["registry"], "users"), timeout=5)
    out = f"http://127.0.0.1:{caller.outbound}"
    with httpx.Client(timeout=10, headers={"host": "users"}) as client:
        assert client.get(out + "/name").text == "users0"       # the connection is up
        stalled = socket.create_connection(("127.0.0.1", caller.outbound), timeout=5)
        try:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.sendall(b"GET /bytes/50000000 HTTP/1.1\r\nhost: users\r\n\r\n")
            assert stalled.recv(64).startswith(b"HTTP/1.1 200")   # answering, then unread
            for _ in range(20):
                r = client.get(out + "/echo", timeout=3)
                assert r.status_code == 200 and r.json()["path"] == "/echo"
            r = client.get(out + "/bytes/3000000", timeout=5)
            assert r.status_code == 200 and len(r.content) == 3_000_000
        finally:
            stalled.close()
    assert spoken(caller, "users") == ["h2c"]


def test_the_off_switch_speaks_http1_between_sidecars(mesh: dict[str, Any]) -> None:
    users = mesh["backend"]("users0")
    callee = mesh["sidecar"]("users", users.port)
    caller = mesh["sidecar"]("web", free_port(), "--no-register", "--mesh-protocol", "http1")
    wait_until(lambda: _instances(mesh["registry"], "users"), timeout=5)
    answers = burst(caller, "users", "/slow/300")
    assert [r.status_code for r in answers] == [200] * BURST
    assert spoken(caller, "users") == ["http1"]
    # One connection per call in flight; the caller keeps up to 64 of them idle.
    assert gauge(callee, "meshgate_downstream_connections") > 20


def test_an_instance_registered_without_the_hint_gets_http1(mesh: dict[str, Any]) -> None:
    """Registered by hand (no sidecar in front): nothing says it takes h2c."""
    users = mesh["backend"]("users0")
    mesh["registry"].put("users", "by-hand", address="127.0.0.1", port=users.port)
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    with httpx.Client(timeout=10, headers={"host": "users"}) as client:
        r = client.get(f"http://127.0.0.1:{caller.outbound}/name")
    assert (r.status_code, r.text) == (200, "users0")
    assert spoken(caller, "users") == ["http1"]


def test_the_hint_follows_the_inbound_ports_http2(mesh: dict[str, Any],
                                                  tmp_path: Path) -> None:
    """With HTTP/2 off on its inbound port a sidecar registers no hint and is called over
    HTTP/1.1; a reload turning it on registers the hint, and callers switch to h2c."""
    folder = tmp_path / "callee"
    folder.mkdir()
    config = folder / "gateway.config.yml"
    config.write_text("server:\n  http2: {enabled: false}\n")
    users = mesh["backend"]("users0")
    mesh["sidecar"]("users", users.port, "--config", str(folder))
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    [instance] = wait_until(lambda: _instances(mesh["registry"], "users"), timeout=5)
    assert "protocol" not in instance["metadata"]
    out = f"http://127.0.0.1:{caller.outbound}/name"
    assert httpx.get(out, headers={"host": "users"}, timeout=10).text == "users0"
    assert spoken(caller, "users") == ["http1"]
    config.write_text("server:\n  http2: {enabled: true}\n")
    wait_until(lambda: _instances(mesh["registry"], "users")[0]["metadata"].get("protocol")
               == "h2c", timeout=10)
    wait_until(lambda: spoken(caller, "users") == ["h2c"], timeout=5)
    assert httpx.get(out, headers={"host": "users"}, timeout=10).text == "users0"


def test_a_wrong_hint_is_a_prompt_502(mesh: dict[str, Any]) -> None:
    """Registered by hand as h2c in front of an HTTP/1.1-only server: the preface gets an
    HTTP/1.1 answer, which ends the connection before any SETTINGS -- a 502, not a hang."""
    users = mesh["backend"]("users0")
    mesh["registry"].put("users", "by-hand", address="127.0.0.1", port=users.port,
                         metadata={"protocol": "h2c"})
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    with httpx.Client(timeout=10, headers={"host": "users"}) as client:
        r = client.get(f"http://127.0.0.1:{caller.outbound}/name")
        assert r.status_code == 502 and r.elapsed.total_seconds() < 2
    assert spoken(caller, "users") == ["h2c"]


def test_an_h2c_app_call_reaches_an_http1_app(mesh: dict[str, Any]) -> None:
    """The app speaks h2c to its sidecar, the callee's app HTTP/1.1: each hop its own."""
    from tests.support.h2client import H2Client

    users = mesh["backend"]("users0")
    mesh["sidecar"]("users", users.port)
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    wait_until(lambda: _instances(mesh["registry"], "users"), timeout=5)
    with H2Client(caller.outbound) as c:
        r = c.get("/echo", authority="users")
    assert r.status == 200
    assert b'"method": "GET"' in bytes(r.body) and b'"path": "/echo"' in bytes(r.body)
    assert spoken(caller, "users") == ["h2c"]


def test_websocket_takes_http1_beside_the_h2_streams(mesh: dict[str, Any]) -> None:
    origin = WsBackend()
    try:
        mesh["sidecar"]("chat", origin.port)
        caller = mesh["sidecar"]("web", free_port(), "--no-register")
        wait_until(lambda: _instances(mesh["registry"], "chat"), timeout=5)
        # A plain call first: the endpoint's pool is h2c ...
        r = httpx.get(f"http://127.0.0.1:{caller.outbound}/", headers={"host": "chat"},
                      timeout=10)
        assert r.status_code == 426          # the origin's answer to a plain GET
        assert spoken(caller, "chat") == ["h2c"]
        # ... and a handshake to the same endpoint takes an HTTP/1.1 connection of its own.
        sock = socket.create_connection(("127.0.0.1", caller.outbound), timeout=5)
        with connect("ws://chat/room", sock=sock, open_timeout=5, max_size=None) as ws:
            ws.send(b"\x00binary\xff")
            assert ws.recv(timeout=5) == b"\x00binary\xff"
        assert origin.handshakes[-1][0] == "/room"
    finally:
        origin.stop()


def test_the_folders_sidecar_section_sets_both_protocols(mesh: dict[str, Any],
                                                         tmp_path: Path) -> None:
    pb2, pb2_grpc = stubs()
    for name, text in (("grpc", "sidecar:\n  appProtocol: h2c\n"),
                       ("http1", "sidecar:\n  meshProtocol: http1\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "gateway.config.yml").write_text(text)
    users = mesh["backend"]("users0")
    mesh["sidecar"]("users", users.port)
    with GrpcApp(name="echo-1") as app:
        echo = mesh["sidecar"]("echo", app.port, "--config", str(tmp_path / "grpc"))
        caller = mesh["sidecar"]("web", free_port(), "--no-register", "--config",
                                 str(tmp_path / "http1"))
        wait_until(lambda: _instances(mesh["registry"], "users"), timeout=5)
        r = httpx.get(f"http://127.0.0.1:{caller.outbound}/name", headers={"host": "users"},
                      timeout=10)
        assert r.text == "users0" and spoken(caller, "users") == ["http1"]
        # The echo sidecar speaks h2c to its app: gRPC works through its inbound port.
        with grpc.insecure_channel(f"127.0.0.1:{echo.inbound}") as channel:
            reply = pb2_grpc.EchoStub(channel).Unary(pb2.Msg(text="via folder"), timeout=10)
        assert reply.text == "via folder"


def test_a_gateway_with_protocol_auto_speaks_h2c_to_sidecars(mesh: dict[str, Any],
                                                             gateway_factory: Any) -> None:
    """Registry discovery and ``protocol: auto``: the gateway reads the same hint, so
    gRPC reaches an app behind its sidecar, and HTTP/1.1 an HTTP/1.1 app behind its own."""
    pb2, pb2_grpc = stubs()
    users = mesh["backend"]("users0")
    mesh["sidecar"]("users", users.port)
    with GrpcApp(name="echo-1") as app:
        mesh["sidecar"]("echo", app.port, "--app-protocol", "h2c")
        url = mesh["registry"].url
        gw = gateway_factory({
            "apiEndpoints": {"echo": {"host": "*", "paths": ["/meshgate.test.Echo/*"]},
                             "users": {"host": "*", "paths": ["/*"]}},
            "serviceEndpoints": {
                name: {"protocol": "auto", "discovery": {"type": "registry", "url": url}}
                for name in ("users", "echo")},
            "policies": ["proxy"],
            "pipelines": {name: {"apiEndpoints": [name], "policies": [
                {"proxy": [{"action": {"serviceEndpoint": name}}]}]}
                for name in ("echo", "users")}})
        wait_until(lambda: httpx.get(gw.url + "/name", timeout=5).text == "users0", timeout=5)
        with grpc.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            reply, call = pb2_grpc.EchoStub(channel).Unary.with_call(
                pb2.Msg(text="through the gateway"), timeout=10)
        assert reply.text == "through the gateway"
        assert dict(call.trailing_metadata())["trace-bin"] == BINARY
    clusters = httpx.get(gw.admin_url + "/clusters", timeout=5).json()
    assert [ep["protocol"] for ep in clusters["users"]["workers"][0]] == ["h2c"]
    assert [ep["protocol"] for ep in clusters["echo"]["workers"][0]] == ["h2c"]


def test_the_sidecar_settings_are_checked(tmp_path: Path) -> None:
    (tmp_path / "gateway.config.yml").write_text(
        "sidecar:\n  appProtocol: h2c\n  meshProtocol: grpc\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    message = str(caught.value)
    assert "gateway.config.yml:3" in message and "meshProtocol" in message
    assert "'h2c'" in message and "'http1'" in message


# -- gRPC through two sidecars --------------------------------------------------------------

@pytest.fixture(scope="module")
def grpc_mesh(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[Any, Any, GrpcApp, Sidecar]]:
    """(stub through the caller's sidecar, pb2, the app, the caller's sidecar), the echo
    app behind a sidecar of its own; shared by the gRPC tests, which only make calls."""
    directory = tmp_path_factory.mktemp("grpc-mesh")
    pb2, pb2_grpc = stubs()
    registry = RegistryProcess(directory)
    app = GrpcApp(name="echo-1")
    started: list[Sidecar] = []
    try:
        for service, port, args in (("echo", app.port, ("--app-protocol", "h2c")),
                                    ("web", free_port(), ("--no-register",))):
            token = directory / f"{service}.token"
            token.write_text(registry.join_token(service))
            started.append(Sidecar(directory, registry.url, service, port,
                                   "--token-file", str(token), *args))
        caller = started[-1]
        wait_until(lambda: _instances(registry, "echo"), timeout=5)
        # The app names the service in :authority, as it would in Host over HTTP/1.1.
        with grpc.insecure_channel(f"127.0.0.1:{caller.outbound}",
                                   options=[("grpc.default_authority", "echo")]) as channel:
            yield pb2_grpc.EchoStub(channel), pb2, app, caller
    finally:
        for side in started:
            side.stop()
        app.stop()
        registry.stop()


def test_grpc_unary_with_binary_metadata(grpc_mesh: tuple[Any, Any, GrpcApp, Sidecar]) -> None:
    stub, pb2, app, caller = grpc_mesh
    blob = bytes(range(256))
    reply, call = stub.Unary.with_call(
        pb2.Msg(text="hello", seq=7, blob=blob), timeout=10,
        metadata=[("x-echo-meta-tag", "plain"), ("x-echo-meta-raw-bin", b"\x00\xff\r\n")])
    assert (reply.text, reply.seq, reply.blob) == ("hello", 7, blob)
    initial = dict(call.initial_metadata())
    trailing = dict(call.trailing_metadata())
    assert initial["x-echo-meta-raw-bin"] == b"\x00\xff\r\n"
    assert trailing["x-echo-meta-raw-bin"] == b"\x00\xff\r\n"
    assert trailing["trace-bin"] == BINARY and trailing["server-name"] == "echo-1"
    method, seen = app.calls[-1]
    assert method == "Unary" and seen["x-echo-meta-raw-bin"] == b"\x00\xff\r\n"
    assert spoken(caller, "echo") == ["h2c"]


def test_grpc_streams_every_way(grpc_mesh: tuple[Any, Any, GrpcApp, Sidecar]) -> None:
    stub, pb2, _, _ = grpc_mesh
    replies = list(stub.ServerStream(pb2.Count(text="s", times=5), timeout=10))
    assert [(m.text, m.seq) for m in replies] == [("s", i) for i in range(5)]
    reply = stub.ClientStream(iter([pb2.Msg(text=t) for t in "abcd"]), timeout=10)
    assert (reply.text, reply.seq) == ("abcd", 4)
    big = b"z" * 300_000             # past every flow-control window on the way
    out = list(stub.Bidi(iter([pb2.Msg(text=str(i), seq=i, blob=big) for i in range(3)]),
                         timeout=10))
    assert [(m.text, m.seq, len(m.blob)) for m in out] == [(str(i), i, len(big))
                                                           for i in range(3)]


@pytest.mark.parametrize("trailers_only", [False, True])
def test_grpc_errors_keep_their_status_and_trailers(
        grpc_mesh: tuple[Any, Any, GrpcApp, Sidecar], trailers_only: bool) -> None:
    stub, pb2, _, _ = grpc_mesh
    metadata = [("x-echo-code", "5"), ("x-echo-message", "no such thing: 100%"),
                ("x-echo-meta-why-bin", b"\x01\x02")]
    if trailers_only:
        metadata.append(("x-echo-trailers-only", "1"))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Unary(pb2.Msg(text="x"), timeout=10, metadata=metadata)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such thing: 100%"
    trailing = dict(error.trailing_metadata())
    assert trailing["server-name"] == "echo-1" and trailing["trace-bin"] == BINARY
    assert trailing["x-echo-meta-why-bin"] == b"\x01\x02"


def test_grpc_calls_share_the_connections_between_sidecars(mesh: dict[str, Any]) -> None:
    pb2, pb2_grpc = stubs()
    with GrpcApp(name="echo-1", workers=64) as app:
        callee = mesh["sidecar"]("echo", app.port, "--app-protocol", "h2c")
        caller = mesh["sidecar"]("web", free_port(), "--no-register")
        wait_until(lambda: _instances(mesh["registry"], "echo"), timeout=5)
        channels = [grpc.insecure_channel(f"127.0.0.1:{caller.outbound}",
                                          options=[("grpc.default_authority", "echo"),
                                                   ("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(8)]
        try:
            calls = [pb2_grpc.EchoStub(channels[i % 8]).Unary.future(
                pb2.Msg(text=str(i), seq=i), timeout=20,
                metadata=[("x-echo-delay-ms", "200")]) for i in range(64)]
            assert sorted(c.result().seq for c in calls) == list(range(64))
            # Eight app connections to the caller's sidecar, one between the sidecars.
            assert gauge(caller, "meshgate_downstream_connections") >= 8
            assert gauge(callee, "meshgate_downstream_connections") == 1
        finally:
            for ch in channels:
                ch.close()


def test_a_service_nobody_serves_is_a_grpc_status(grpc_mesh: tuple[Any, Any, GrpcApp, Sidecar]
                                                  ) -> None:
    """The caller's sidecar answers itself (no instance after the wait for the first
    endpoint set) -- as a gRPC failure the app can read, not a bare 503."""
    _, pb2, _, caller = grpc_mesh
    _, pb2_grpc = stubs()
    options = [("grpc.default_authority", "nobody")]
    with grpc.insecure_channel(f"127.0.0.1:{caller.outbound}", options=options) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        pb2_grpc.EchoStub(channel).Unary(pb2.Msg(text="x"), timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "upstream" in error.details()
