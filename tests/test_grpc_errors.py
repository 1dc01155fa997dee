"""meshgate's own answers to gRPC calls are gRPC failures (``protocol/grpc.py``).

grpcio clients call through a real meshgate to ``tests.support.grpc_app``
(or to nothing), in each situation where meshgate answers itself: no route,
the app down, no endpoints, a timeout, a circuit breaker over its limit, a
rate limit, key-auth / jwt refusals, fault aborts. The client must see the
gRPC status meshgate meant, with its text. ``H2Client`` checks the wire: HTTP
200, one HEADERS frame ending the stream (Trailers-Only), ``content-type:
application/grpc``, ``grpc-message`` percent-encoded, the policy's headers
kept. Requests that are not gRPC keep their HTTP answers, and an upstream's
own non-gRPC error is relayed as it is.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import h2.events
import httpx
import jwt
import pytest

from meshgate.protocol import grpc as g
from tests.conftest import Backend
from tests.support.gateway import Gateway, free_port, proxy_config, wait_until
from tests.support.grpc_app import GrpcApp, channel, stubs
from tests.support.h2_origin import H2Origin
from tests.support.h2client import H2Client, Stream
from tests.test_auth_key import Admin

pb2, pb2_grpc = stubs()
METHOD = "/meshgate.test.Echo/Unary"
SECRET = "a-shared-secret-of-at-least-32-bytes!"
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def app() -> Iterator[GrpcApp]:
    with GrpcApp(name="grpc-errors") as a:
        yield a


def grpc_config(url: str, *, policies: list[Any] | None = None,
                service: dict[str, Any] | None = None,
                proxy_action: dict[str, Any] | None = None) -> dict[str, Any]:
    return proxy_config(url, policies=policies, proxy_action=proxy_action,
                        service={"protocol": "h2c", **(service or {})})


def unary(gw: Gateway, metadata: list[tuple[str, str]] | None = None,
          timeout: float = 5) -> Any:
    """The reply of one Unary call, or the ``grpc.RpcError`` it ended with."""
    with channel(f"127.0.0.1:{gw.port}") as ch:
        stub = pb2_grpc.EchoStub(ch)
        try:
            return stub.Unary(pb2.Msg(text="hi"), metadata=metadata or (), timeout=timeout)
        except grpc.RpcError as exc:
            return exc


def failed(result: Any, code: grpc.StatusCode, details: str | None = None) -> grpc.RpcError:
    assert isinstance(result, grpc.RpcError), f"the call succeeded: {result!r}"
    assert result.code() == code, (result.code(), result.details())
    if details is not None:
        assert result.details() == details
    return result


def message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message."""
    return struct.pack(">BI", 0, len(payload)) + payload


def raw_call(gw: Gateway, headers: list[tuple[str, str]] | None = None,
             path: str = METHOD, ctype: str = "application/grpc") -> Stream:
    """A gRPC call by hand over HTTP/2; its answer must be Trailers-Only."""
    with H2Client(gw.port) as client:
        sid = client.request(path, method="POST", body=message(b"\x0a\x02hi"), headers=[
            ("content-type", ctype), ("te", "trailers"), *(headers or [])])
        stream = client.response(sid)
        assert stream.reset is None
        heads = [e for e in client.events
                 if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
        data = [e for e in client.events
                if isinstance(e, h2.events.DataReceived) and e.stream_id == sid]
        assert len(heads) == 1 and heads[0].stream_ended is not None   # one frame, END_STREAM
        assert not data and not stream.body and not stream.trailers
    assert stream.status == 200
    assert stream.header(b"content-type") == b"application/grpc"
    assert stream.header(b"content-length") is None
    return stream


def grpc_status(stream: Stream) -> tuple[int, bytes | None]:
    status = stream.header(b"grpc-status")
    assert status is not None
    return int(status), stream.header(b"grpc-message")


# -- the vocabulary ----------------------------------------------------------------------
def test_local_status_table_and_answer_fields() -> None:
    assert g.local_status(404, b"Not Found\n") == g.UNIMPLEMENTED
    assert g.local_status(502, b"Bad Gateway: upstream unreachable\n") == g.UNAVAILABLE
    assert g.local_status(503, b"Service Unavailable: no healthy upstream\n") == g.UNAVAILABLE
    assert g.local_status(503, b"Service Unavailable: upstream overflow\n",
                          [(b"x-meshgate-overloaded", b"true")]) == g.RESOURCE_EXHAUSTED
    assert g.local_status(504, b"Gateway Timeout\n") == g.DEADLINE_EXCEEDED
    assert g.local_status(504, b"Gateway Timeout: upstream connect timeout\n") == g.UNAVAILABLE
    assert g.local_status(429, b"Too many") == g.RESOURCE_EXHAUSTED
    assert g.local_status(401, b"Unauthorized") == g.UNAUTHENTICATED
    assert g.local_status(403, b"Forbidden") == g.PERMISSION_DENIED
    assert g.local_status(413, b"Payload Too Large\n") == g.RESOURCE_EXHAUSTED
    assert g.local_status(400, b"Bad Request\n") == g.INTERNAL
    assert g.local_status(418, b"teapot") == g.UNKNOWN
    assert g.local_status(302, b"") == g.UNKNOWN
    fields = g.local_answer(429, "100% — slow down\n".encode(), [
        (b"retry-after", b"7"), (b"content-type", b"application/json"),
        (b"content-length", b"12")])
    assert fields == [(b"content-type", b"application/grpc"), (b"grpc-status", b"8"),
                      (b"grpc-message", b"100%25 %E2%80%94 slow down"), (b"retry-after", b"7")]
    assert g.local_answer(404, b"", None, b"application/grpc-web+proto") == [
        (b"content-type", b"application/grpc-web+proto"), (b"grpc-status", b"12")]
    already = g.trailers_only(9, b"fault filter abort")
    assert g.local_answer(200, b"", already) is already
    assert len(g.local_answer(500, b"x" * 5000)[2][1]) == g.MAX_MESSAGE
    assert g.is_grpc_request([(b"content-type", b"Application/GRPC+proto")])
    assert not g.is_grpc_request([(b"content-type", b"application/grpc-web")])
    assert not g.is_grpc_request([(b"accept", b"application/grpc")])


# -- routing and upstream failures -------------------------------------------------------
def test_no_route_is_unimplemented_and_plain_requests_keep_their_404(
        app: GrpcApp, gateway_factory: Callable[..., Gateway]) -> None:
    config = grpc_config(app.url)
    config["apiEndpoints"]["api"]["paths"] = ["/other/*"]
    gw = gateway_factory(config)
    failed(unary(gw), Code.UNIMPLEMENTED, "Not Found")
    assert grpc_status(raw_call(gw)) == (12, b"Not Found")
    assert grpc_status(raw_call(gw, ctype="application/grpc+proto"))[0] == 12
    # not gRPC: the same miss is the usual text 404, over HTTP/2 and HTTP/1.1
    with H2Client(gw.port) as client:
        for method, ctype in (("GET", "application/grpc"), ("POST", "application/json"),
                              ("POST", "application/grpc-web+proto")):
            stream = client.get(METHOD, method=method, headers=[("content-type", ctype)])
            assert stream.status == 404 and bytes(stream.body) == b"Not Found\n"
            assert stream.header(b"grpc-status") is None
    r = httpx.post(gw.url + METHOD, content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 404 and r.text == "Not Found\n"
    # a head refused before routing: 400 for others, INTERNAL for a gRPC call
    code, text = grpc_status(raw_call(gw, path="/other/a%2Fb"))
    assert code == 13 and text is not None and text.startswith(b"Bad Request")


def test_app_down_is_unavailable_with_the_reason(gateway_factory: Callable[..., Gateway]
                                                 ) -> None:
    gw = gateway_factory(grpc_config(f"http://127.0.0.1:{free_port()}"))
    failed(unary(gw), Code.UNAVAILABLE, "Bad Gateway: upstream unreachable")
    assert grpc_status(raw_call(gw)) == (14, b"Bad Gateway: upstream unreachable")
    # metrics still count the answer under the status it has for other clients
    assert 'code="502"' in gw.metrics() and 'code="200"' not in gw.metrics()
    r = httpx.get(gw.url + "/x", timeout=5)
    assert r.status_code == 502 and r.text == "Bad Gateway: upstream unreachable\n"


@pytest.fixture
def origin() -> Iterator[H2Origin]:
    """Stopped after the gateways (set up before them)."""
    o = H2Origin()
    yield o
    o.stop()


def test_upstream_reset_is_unavailable(origin: H2Origin,
                                       gateway_factory: Callable[..., Gateway]) -> None:
    # the origin's /reset answers RST_STREAM (INTERNAL_ERROR) before any head
    gw = gateway_factory(grpc_config(f"http://127.0.0.1:{origin.port}"))
    failed(_call_path(gw, "/reset"), Code.UNAVAILABLE, "Bad Gateway: upstream stream reset")
    assert grpc_status(raw_call(gw, path="/reset")) == (14, b"Bad Gateway: upstream stream reset")


def test_no_healthy_upstream_is_unavailable(gateway_factory: Callable[..., Gateway]) -> None:
    # an endpoint failing its checks, no panic routing: "no healthy upstream", 503
    gw = gateway_factory(grpc_config(f"http://127.0.0.1:{free_port()}", service={
        "healthCheck": {"type": "tcp", "interval": 100, "unhealthyThreshold": 1},
        "loadBalancer": {"panicThreshold": 0}}))
    err = wait_until(lambda: _no_healthy(unary(gw)), 5)
    failed(err, Code.UNAVAILABLE, "Service Unavailable: no healthy upstream")
    assert grpc_status(raw_call(gw)) == (14, b"Service Unavailable: no healthy upstream")
    r = httpx.get(gw.url + "/x", timeout=5)
    assert r.status_code == 503 and r.text == "Service Unavailable: no healthy upstream\n"


def _no_healthy(result: Any) -> Any:
    return result if "no healthy" in getattr(result, "details", lambda: "")() else None


def test_upstream_timeout_is_deadline_exceeded(app: GrpcApp,
                                              gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(grpc_config(app.url, service={"timeout": 300}))
    started = time.monotonic()
    failed(unary(gw, [("x-echo-delay-ms", "2000")], timeout=10), Code.DEADLINE_EXCEEDED,
           "Gateway Timeout")
    assert time.monotonic() - started < 1.8     # meshgate's timeout, not the app's 2 s
    assert grpc_status(raw_call(gw, [("x-echo-delay-ms", "2000")])) == (4, b"Gateway Timeout")
    assert unary(gw).text == "hi"


def test_request_timeout_is_deadline_exceeded(app: GrpcApp,
                                             gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(grpc_config(app.url, service={"requestTimeout": 300}))
    failed(unary(gw, [("x-echo-delay-ms", "2000")], timeout=10), Code.DEADLINE_EXCEEDED)


def test_circuit_breaker_overflow_is_resource_exhausted(
        app: GrpcApp, gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(grpc_config(app.url, service={
        "circuitBreakers": {"maxRequests": 1}}))
    slow: list[Any] = []
    caller = threading.Thread(target=lambda: slow.append(
        unary(gw, [("x-echo-delay-ms", "1500"), ("x-echo-key", "held")])))
    caller.start()
    wait_until(lambda: any(meta.get("x-echo-key") == "held" for _, meta in app.calls), 5)
    err = failed(unary(gw), Code.RESOURCE_EXHAUSTED, "Service Unavailable: upstream overflow")
    assert ("x-meshgate-overloaded", "true") in tuple(err.trailing_metadata())
    stream = raw_call(gw)
    assert grpc_status(stream)[0] == 8
    assert stream.header(b"x-meshgate-overloaded") == b"true"
    r = httpx.post(gw.url + METHOD, content=b"{}", timeout=5)     # not gRPC: the usual 503
    assert r.status_code == 503 and r.text == "Service Unavailable: upstream overflow\n"
    caller.join(10)
    assert slow[0].text == "hi"


def test_upstream_non_grpc_error_is_relayed_as_it_is(backend: Backend,
                                                    gateway_factory: Callable[..., Gateway]
                                                    ) -> None:
    # An HTTP/1.1 upstream answering the call 503 with text (as nginx would): not
    # meshgate's answer, so it passes unchanged; the client maps the status itself.
    gw = gateway_factory(proxy_config(backend.url))
    with H2Client(gw.port) as client:
        stream = client.get("/status/503", method="POST", body=message(b""),
                            headers=[("content-type", "application/grpc")])
    assert stream.status == 503 and stream.header(b"grpc-status") is None
    failed(_call_path(gw, "/status/503"), Code.UNAVAILABLE)


def _call_path(gw: Gateway, path: str) -> Any:
    with channel(f"127.0.0.1:{gw.port}") as ch:
        call = ch.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=pb2.Msg.FromString)
        try:
            return call(pb2.Msg(text="hi"), timeout=5)
        except grpc.RpcError as exc:
            return exc


def test_a_stalled_request_stream_is_deadline_exceeded(
        app: GrpcApp, gateway_factory: Callable[..., Gateway]) -> None:
    config = grpc_config(app.url)
    config["server"] = {"bodyTimeout": 500}
    gw = gateway_factory(config)
    with H2Client(gw.port) as client:
        sid = client.request(METHOD, method="POST", body=message(b"\x0a\x02hi")[:4], end=False,
                             headers=[("content-type", "application/grpc"), ("te", "trailers")])
        started = time.monotonic()
        stream = client.response(sid)
        assert 0.2 < time.monotonic() - started < 2.5    # bodyTimeout, swept every 250 ms
        heads = [e for e in client.events if isinstance(e, h2.events.ResponseReceived)]
        assert heads[0].stream_ended is not None and not stream.body
    assert stream.status == 200 and grpc_status(stream) == (
        4, b"Request Timeout: request body too slow")


# -- policies ----------------------------------------------------------------------------
def test_rate_limit_passes_then_resource_exhausted_with_its_headers(
        app: GrpcApp, gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(grpc_config(app.url, policies=[{"rate-limit": [{"action": {
        "max": 2, "windowMs": 60000, "message": "100% used — wait"}}]}]))
    with channel(f"127.0.0.1:{gw.port}") as ch:
        stub = pb2_grpc.EchoStub(ch)
        for remaining in ("1", "0"):
            reply, call = stub.Unary.with_call(pb2.Msg(text="hi"), timeout=5)
            assert reply.text == "hi"
            assert ("ratelimit-remaining", remaining) in tuple(call.initial_metadata())
    err = failed(unary(gw), Code.RESOURCE_EXHAUSTED, "100% used — wait")
    assert ("ratelimit-remaining", "0") in tuple(err.trailing_metadata())
    stream = raw_call(gw)
    assert grpc_status(stream) == (8, b"100%25 used %E2%80%94 wait")
    assert stream.header(b"ratelimit-limit") == b"2"
    assert stream.header(b"retry-after") is not None
    r = httpx.get(gw.url + "/x", timeout=5)
    assert r.status_code == 429 and r.text == "100% used — wait"


@pytest.fixture(scope="module")
def auth_gw(tmp_path_factory: pytest.TempPathFactory, app: GrpcApp) -> Iterator[Gateway]:
    """key-auth (key in ``x-api-key`` metadata) on /meshgate.test.Echo/*; jwt on
    /jwt/*, key-auth with a scope on /scoped/* (both prefixes stripped on the way
    to the app); CORS before all of them."""
    cors = {"cors": [{"action": {"origin": "https://app.example"}}]}
    proxy = {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}
    strip = {"proxy": [{"action": {"serviceEndpoint": "backend", "stripPath": True}}]}
    key = {"key-auth": [{"action": {"apiKeyHeader": "x-api-key",
                                    "disableHeadersScheme": True}}]}
    config: dict[str, Any] = {
        "apiEndpoints": {
            "keyed": {"host": "*", "paths": ["/meshgate.test.Echo/*"]},
            "scoped": {"host": "*", "paths": ["/scoped/*"], "scopes": ["echo-write"]},
            "jwt": {"host": "*", "paths": ["/jwt/*"]},
        },
        "serviceEndpoints": {"backend": {"url": app.url, "protocol": "h2c"}},
        "policies": ["cors", "jwt", "key-auth", "proxy"],
        "pipelines": {
            "keyed": {"apiEndpoints": ["keyed"], "policies": [cors, key, proxy]},
            "scoped": {"apiEndpoints": ["scoped"], "policies": [cors, key, strip]},
            "jwt": {"apiEndpoints": ["jwt"], "policies": [cors, {"jwt": [{"action": {
                "secretOrPublicKey": SECRET, "checkCredentialExistence": False}}]}, strip]},
        },
    }
    gw = Gateway(tmp_path_factory.mktemp("grpc-auth"), config)
    yield gw
    gw.stop()


def test_key_auth_in_metadata_passes_or_is_unauthenticated(auth_gw: Gateway,
                                                           app: GrpcApp) -> None:
    admin = Admin(auth_gw)
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    key = f"{cred['keyId']}:{cred['keySecret']}"
    failed(unary(auth_gw), Code.UNAUTHENTICATED, "Unauthorized")
    failed(unary(auth_gw, [("x-api-key", f"{cred['keyId']}:wrong")]), Code.UNAUTHENTICATED)
    marker = uuid.uuid4().hex
    reply = unary(auth_gw, [("x-api-key", key), ("x-echo-key", marker)])
    assert reply.text == "hi"
    seen = [meta for _, meta in app.calls if meta.get("x-echo-key") == marker]
    assert seen and seen[0]["eg-consumer-id"] == user["id"]
    # the wire: the challenge and the CORS headers stay with the gRPC status
    stream = raw_call(auth_gw, [("origin", "https://app.example")])
    assert grpc_status(stream) == (16, b"Unauthorized")
    assert stream.header(b"www-authenticate") is not None
    assert stream.header(b"access-control-allow-origin") == b"https://app.example"
    r = httpx.post(auth_gw.url + METHOD, content=b"{}")
    assert r.status_code == 401 and r.text == "Unauthorized"


def test_a_refused_client_stream_ends_at_once(auth_gw: Gateway) -> None:
    # the refusal comes before the request stream ends: the client stops sending
    sent: list[int] = []

    def messages() -> Iterator[Any]:
        for i in range(50):
            sent.append(i)
            yield pb2.Msg(text="x" * 1000, seq=i)
            time.sleep(0.02)

    with channel(f"127.0.0.1:{auth_gw.port}") as ch:
        stub = pb2_grpc.EchoStub(ch)
        try:
            stub.ClientStream(messages(), timeout=10)
            raise AssertionError("the call succeeded")
        except grpc.RpcError as exc:
            failed(exc, Code.UNAUTHENTICATED, "Unauthorized")
    assert len(sent) < 50                       # grpcio stopped reading the iterator


def test_key_auth_missing_scope_is_permission_denied(auth_gw: Gateway) -> None:
    admin = Admin(auth_gw)
    admin.scopes("echo-write")
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    key = f"{cred['keyId']}:{cred['keySecret']}"
    path = "/scoped" + METHOD
    failed(_call_path_meta(auth_gw, path, [("x-api-key", key)]), Code.PERMISSION_DENIED,
           "Forbidden")
    both = admin.credential(user["id"], "key-auth", scopes=["echo-write"])
    reply = _call_path_meta(auth_gw, path, [("x-api-key", f"{both['keyId']}:{both['keySecret']}")])
    assert reply.text == "hi"


def _call_path_meta(gw: Gateway, path: str, metadata: list[tuple[str, str]]) -> Any:
    with channel(f"127.0.0.1:{gw.port}") as ch:
        call = ch.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=pb2.Msg.FromString)
        try:
            return call(pb2.Msg(text="hi"), metadata=metadata, timeout=5)
        except grpc.RpcError as exc:
            return exc


def test_jwt_in_authorization_metadata_passes_or_is_unauthenticated(
        auth_gw: Gateway, app: GrpcApp) -> None:
    path = "/jwt" + METHOD
    good = jwt.encode({"sub": "grpc-client", "exp": int(time.time()) + 60}, SECRET,
                      algorithm="HS256")
    forged = jwt.encode({"sub": "grpc-client"}, "another-secret-of-at-least-32-bytes!",
                        algorithm="HS256")
    failed(_call_path_meta(auth_gw, path, []), Code.UNAUTHENTICATED, "Unauthorized")
    failed(_call_path_meta(auth_gw, path, [("authorization", f"Bearer {forged}")]),
           Code.UNAUTHENTICATED)
    marker = uuid.uuid4().hex
    reply = _call_path_meta(auth_gw, path, [("authorization", f"Bearer {good}"),
                                            ("x-echo-key", marker)])
    assert reply.text == "hi"
    assert any(meta.get("x-echo-key") == marker for _, meta in app.calls)
    stream = raw_call(auth_gw, [("authorization", f"Bearer {forged}")], path=path)
    assert grpc_status(stream) == (16, b"Unauthorized")


# -- faults ------------------------------------------------------------------------------
def test_fault_aborts(app: GrpcApp, gateway_factory: Callable[..., Gateway]) -> None:
    aborts = {"http": {"httpStatus": 503}, "coded": {"grpcStatus": 9},
              "header": {"headerControlled": True}}
    config = grpc_config(app.url)
    config["policies"] = ["fault", "proxy"]
    config["apiEndpoints"], config["pipelines"] = {}, {}
    for name, abort in aborts.items():
        config["apiEndpoints"][name] = {"host": "*", "paths": [f"/{name}/*"]}
        config["pipelines"][name] = {"apiEndpoints": [name], "policies": [
            {"fault": [{"action": {"abort": abort}}]},
            {"proxy": [{"action": {"serviceEndpoint": "backend", "stripPath": True}}]}]}
    gw = gateway_factory(config)

    def call(name: str, metadata: list[tuple[str, str]] | None = None) -> Any:
        return _call_path_meta(gw, f"/{name}{METHOD}", metadata or [])

    # httpStatus: mapped as any answer of meshgate's
    failed(call("http"), Code.UNAVAILABLE, "fault filter abort")
    assert grpc_status(raw_call(gw, path="/http" + METHOD)) == (14, b"fault filter abort")
    r = httpx.get(gw.url + "/http/x", timeout=5)
    assert r.status_code == 503 and r.text == "fault filter abort"
    # grpcStatus: that status, as Envoy's abort.grpc_status
    failed(call("coded"), Code.FAILED_PRECONDITION, "fault filter abort")
    assert grpc_status(raw_call(gw, path="/coded" + METHOD)) == (9, b"fault filter abort")
    # header-controlled, either header
    failed(call("header", [("x-envoy-fault-abort-grpc-request", "10")]), Code.ABORTED)
    failed(call("header", [("x-envoy-fault-abort-request", "429")]), Code.RESOURCE_EXHAUSTED)
    assert call("header").text == "hi"


# -- gRPC over HTTP/1.1 ------------------------------------------------------------------
def test_grpc_over_http1_gets_the_status_in_the_head(gateway_factory: Callable[..., Gateway]
                                                    ) -> None:
    gw = gateway_factory(grpc_config(f"http://127.0.0.1:{free_port()}"))
    body = message(b"")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /meshgate.test.Echo/Unary HTTP/1.1\r\nHost: gw\r\n"
                     b"Content-Type: application/grpc\r\nContent-Length: %d\r\n\r\n%s"
                     b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n" % (len(body), body))
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"unreachable\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    first, _, second = data.partition(b"\r\n\r\n")
    lines = first.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"grpc-status: 14" in lines and b"content-type: application/grpc" in lines
    assert b"content-length: 0" in lines
    assert second.startswith(b"HTTP/1.1 502 ")        # the next request: plain, same connection
