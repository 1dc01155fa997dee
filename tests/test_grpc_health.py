"""gRPC health checks (``healthCheck.type: grpc``) against real gRPC servers on loopback.

``GrpcApp`` serves the standard ``grpc.health.v1.Health`` service (grpcio's
own servicer), so a check asks what any gRPC client's health probe would.
The checker runs either on the test's event loop (its verdicts and reasons)
or inside a meshgate process, observed through ``/clusters`` and the
traffic the apps record.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from meshgate.config.mesh import HealthCheck
from meshgate.discovery import EndpointSpec
from meshgate.upstream import grpc_health
from meshgate.upstream.health import HealthChecker
from tests.support.aio import eventually as until
from tests.support.gateway import Gateway, proxy_config, wait_until
from tests.support.grpc_app import GrpcApp, channel, stubs
from tests.support.h2_origin import H2Origin

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def apps() -> Iterator[list[GrpcApp]]:
    started = [GrpcApp("a"), GrpcApp("b")]
    yield started
    for app in started:
        app.stop()


def checker(config: dict[str, Any], port: int) -> HealthChecker:
    check = HealthChecker("svc", HealthCheck.model_validate(
        {"type": "grpc", "interval": 50, "timeout": 1000, "healthyThreshold": 1,
         "unhealthyThreshold": 1, **config}), lambda: None, protocol="h2c")
    check.set_targets([EndpointSpec(host="127.0.0.1", port=port)])
    return check


def key(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# -- the message codec ----------------------------------------------------------------
def test_request_encoding_matches_protobuf() -> None:
    from grpc_health.v1 import health_pb2
    for name in ("", "echo.Echo", "x" * 300):
        wire = health_pb2.HealthCheckRequest(service=name).SerializeToString()
        assert grpc_health.request_body(name) == b"\x00" + len(wire).to_bytes(4, "big") + wire


def test_response_decoding_matches_protobuf() -> None:
    from grpc_health.v1 import health_pb2
    for status in (0, 1, 2, 3, 300):
        wire = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        assert grpc_health.serving_status(wire + b"\x12\x02hi\x1d\x00\x00\x00\x00") == status
    with pytest.raises(ValueError):
        grpc_health.serving_status(b"\x08\xff")


# -- verdicts, from the checker itself ----------------------------------------------------
def test_serving_passes_not_serving_fails_and_recovers(apps: list[GrpcApp]) -> None:
    app = apps[0]

    async def scenario() -> None:
        check = checker({}, app.port)
        await check.start()
        try:
            await until(lambda: check.is_healthy(key(app.port)))
            app.set_serving(False)
            await until(lambda: not check.is_healthy(key(app.port)))
            assert check.status(key(app.port))["lastError"] == "NOT_SERVING"
            app.set_serving(True)
            await until(lambda: check.is_healthy(key(app.port)))
        finally:
            await check.stop()

    asyncio.run(scenario())


def test_the_named_service_is_asked_about(apps: list[GrpcApp]) -> None:
    app = apps[0]

    async def scenario() -> None:
        check = checker({"service": "echo.Echo"}, app.port)
        await check.start()
        try:
            # grpcio answers NOT_FOUND for a service it was never told about.
            await until(lambda: check.status(key(app.port))["lastCheck"] is not None)
            assert not check.is_healthy(key(app.port))
            assert "grpc-status 5 not-found" in check.status(key(app.port))["lastError"]
            app.set_serving(True, "echo.Echo")
            await until(lambda: check.is_healthy(key(app.port)))
            app.set_serving(False, "echo.Echo")      # the server as a whole still serves
            await until(lambda: not check.is_healthy(key(app.port)))
        finally:
            await check.stop()

    asyncio.run(scenario())


def test_a_server_without_grpc_fails() -> None:
    origin = H2Origin()        # answers the health path with a plain 200

    async def scenario() -> None:
        check = checker({}, origin.port)
        await check.start()
        try:
            await until(lambda: check.status(key(origin.port))["lastCheck"] is not None)
            assert not check.is_healthy(key(origin.port))
            error = check.status(key(origin.port))["lastError"]
            assert error == "not a gRPC response (content-type)"
            request = next(h for h in origin.seen.requests
                           if h[b":path"] == b"/grpc.health.v1.Health/Check")
            assert request[b"content-type"] == b"application/grpc"
            assert request[b"te"] == b"trailers" and request[b":method"] == b"POST"
            assert request[b"grpc-timeout"] == b"1000m"
        finally:
            await check.stop()

    try:
        asyncio.run(scenario())
    finally:
        origin.stop()


def test_unit_verdicts() -> None:
    def answer(head: dict[bytes, bytes], body: bytes = b"",
               trailers: dict[bytes, bytes] | None = None) -> str | None:
        out = grpc_health.GrpcAnswer()
        out.on_head(list(head.items()))
        out.on_data(body)
        if trailers is not None:
            out.on_trailers(list(trailers.items()))
        return out.verdict()

    ok = {b":status": b"200", b"content-type": b"application/grpc"}
    serving = b"\x00\x00\x00\x00\x02\x08\x01"
    assert answer(ok, serving, {b"grpc-status": b"0"}) is None
    assert answer(ok, b"\x00\x00\x00\x00\x02\x08\x03", {b"grpc-status": b"0"}) \
        == "SERVICE_UNKNOWN"
    assert answer(ok, serving, {b"grpc-status": b"14", b"grpc-message": b"down"}) \
        == "grpc-status 14 unavailable: down"
    assert answer({**ok, b"grpc-status": b"0"}) == "no response message"   # trailers-only
    assert answer({**ok, b"grpc-status": b"12"}) == "grpc-status 12 unimplemented"
    assert answer(ok, serving) == "no grpc-status"
    assert answer(ok, serving + serving, {b"grpc-status": b"0"}) \
        == "not exactly one response message"
    assert answer(ok, b"\x01" + serving[1:], {b"grpc-status": b"0"}) \
        == "compressed response message"
    assert answer({**ok, b":status": b"503"}) == "status 503"


def test_timeout_fails_the_check() -> None:
    import socket
    with socket.socket() as silent:       # accepts (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]

        async def scenario() -> None:
            check = checker({"timeout": 100}, port)
            await check.start()
            try:
                await until(lambda: check.status(key(port))["lastCheck"] is not None)
                assert check.status(key(port))["lastError"] == "timeout after 100 ms"
            finally:
                await check.stop()

        asyncio.run(scenario())


# -- inside meshgate: /clusters and traffic -------------------------------------------------
def test_not_serving_endpoint_is_avoided_then_used_again(apps: list[GrpcApp],
                                                         gateway_factory) -> None:
    a, b = apps
    check = {"type": "grpc", "interval": 100, "timeout": 1000, "healthyThreshold": 1,
             "unhealthyThreshold": 1}
    gw: Gateway = gateway_factory(proxy_config([a.url, b.url], service={
        "protocol": "h2c", "healthCheck": check, "loadBalancer": {"panicThreshold": 0}}))

    def healthy() -> dict[str, bool]:
        view = httpx.get(gw.admin_url + "/clusters", timeout=5).json()["backend"]
        return {e["key"]: e["healthy"] for e in view["controlPlane"]["endpoints"]}

    wait_until(lambda: healthy() == {a.url: True, b.url: True})
    pb2, pb2_grpc = stubs()
    stub = pb2_grpc.EchoStub(channel(f"127.0.0.1:{gw.port}"))

    def unary_calls(app: GrpcApp) -> int:
        return sum(1 for method, _ in app.calls if method == "Unary")

    a.set_serving(False)
    wait_until(lambda: healthy() == {a.url: False, b.url: True})
    before = unary_calls(a)
    for i in range(20):
        assert stub.Unary(pb2.Msg(text=str(i)), timeout=5).text == str(i)
    assert unary_calls(a) == before and unary_calls(b) >= 20
    a.set_serving(True)
    wait_until(lambda: healthy() == {a.url: True, b.url: True})

    def a_gets_traffic() -> bool:
        stub.Unary(pb2.Msg(text="again"), timeout=5)
        return unary_calls(a) > before

    wait_until(a_gets_traffic)


# -- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("service", "message"), [
    ({"url": "http://127.0.0.1:1", "healthCheck": {"type": "grpc"}},
     "healthCheck type 'grpc' needs protocol 'h2' or 'h2c'"),
    ({"url": "https://127.0.0.1:1", "protocol": "auto", "healthCheck": {"type": "grpc"}},
     "got protocol 'auto'"),
    ({"url": "http://127.0.0.1:1", "protocol": "h2c",
      "healthCheck": {"type": "grpc", "path": "/health"}}, "path do not apply to a grpc check"),
    ({"url": "http://127.0.0.1:1", "healthCheck": {"type": "http", "service": "x"}},
     "service applies only to type: grpc"),
])
def test_invalid_grpc_checks_are_refused(service: dict[str, Any], message: str) -> None:
    from meshgate.config.model import GatewayConfig
    with pytest.raises(Exception, match=message):
        GatewayConfig.model_validate({"serviceEndpoints": {"s": service}})


def test_grpc_check_on_http1_fails_validate_with_exit_2(tmp_path: Path) -> None:
    config = proxy_config("http://127.0.0.1:1", service={"healthCheck": {"type": "grpc"}})
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "meshgate", "validate", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "gateway.config.yml:" in done.stderr and "needs protocol 'h2' or 'h2c'" in done.stderr
