"""End to end: the proxy policy and the HTTP/1.1 codecs, over real sockets.

One gateway serves most tests: each proxy variant (changeOrigin, xfwd: false,
stripPath, ...) sits behind its own host name, so a test picks the variant by
the Host header it sends. Backends are ``tests.support.backend`` processes;
``/echo`` and ``/mirror/...`` report what the upstream received.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import Backend
from tests.support.gateway import Gateway, free_port, proxy_config, wait_until

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "upgrade", "trailer",
              "transfer-encoding"}


# -- a raw HTTP/1.1 client: what httpx would hide -----------------------------
@dataclass
class Response:
    version: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def names(self) -> set[str]:
        return {k for k, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def read_until(self, marker: bytes) -> bytes:
        while (i := self.buf.find(marker)) < 0:
            if not self._more():
                raise EOFError(f"connection closed; got {bytes(self.buf)!r}")
        end = i + len(marker)
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self) -> bytes:
        while self._more():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def peer_closed(self) -> bool:
        """True when the server closed the connection (nothing more to read)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def read_head(self) -> Response:
        lines = self.read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        pairs = [(k.strip().lower(), v.strip())
                 for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)]
        return Response(version, int(status), pairs)

    def read_response(self, method: str = "GET") -> Response:
        resp = self.read_head()
        if method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
            return resp
        length = resp.header("content-length")
        if (resp.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    break
                parts.append(self.read_exact(size))
                assert self.read_exact(2) == b"\r\n", "chunk not followed by CRLF"
            while (line := self.read_until(b"\r\n")) != b"\r\n":
                k, v = line.decode("latin-1").split(":", 1)
                resp.trailers.append((k.strip().lower(), v.strip()))
            resp.body = b"".join(parts)
        elif length is not None:
            resp.body = self.read_exact(int(length))
        else:
            resp.body = self.read_to_eof()
        return resp


def request(method: str, path: str, host: str, headers: str = "", body: bytes = b"",
            version: str = "1.1") -> bytes:
    """One request as bytes; ``headers`` are extra raw lines ending in CRLF."""
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return (f"{method} {path} HTTP/{version}\r\nHost: {host}\r\n{headers}{length}\r\n"
            .encode() + body)


def echoed_headers(resp: Response | httpx.Response) -> list[tuple[str, str]]:
    data = resp.json()
    return [(k.lower(), v) for k, v in data["headers"]]


def values(pairs: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in pairs if k == name]


# -- the shared gateway -----------------------------------------------------
def _proxy(service: str, **options: Any) -> dict[str, Any]:
    return {"proxy": [{"action": {"serviceEndpoint": service, **options}}]}


def build_config(a: str, b: str, dead_port: int) -> dict[str, Any]:
    hosts: dict[str, tuple[list[str], list[dict[str, Any]]]] = {
        "plain.test": (["/*"], [_proxy("main")]),
        "origin.test": (["/*"], [_proxy("main", changeOrigin=True)]),
        "noxfwd.test": (["/*"], [_proxy("main", xfwd=False)]),
        "strip.test": (["/api/*", "/users/:id", "/exact"], [_proxy("mirror", stripPath=True)]),
        "prefix.test": (["/*"], [_proxy("based")]),
        "noprefix.test": (["/*"], [_proxy("based", prependPath=False)]),
        "ignore.test": (["/*"], [_proxy("based", ignorePath=True)]),
        "rr.test": (["/*"], [_proxy("pair")]),
        "hdr.test": (["/*"], [
            {"log": [{"action": {"message": "logged ${req.method} ${req.originalUrl}"}}]},
            {"headers": [{"action": {"headersPrefix": "x-gw-", "forwardHeaders": {
                "client-ip": "${req.ip}", "method": "${req.method}", "static": "fixed"}}}]},
            _proxy("main"),
        ]),
        "term.test": (["/*"], [
            {"terminate": [{"action": {"statusCode": 418, "message": "teapot says no\n"}}]},
            _proxy("main"),
        ]),
        "timeout.test": (["/*"], [_proxy("slowsvc")]),
        "refused.test": (["/*"], [_proxy("dead")]),
    }
    api = {}
    pipelines = {}
    for host, (paths, steps) in hosts.items():
        name = host.split(".")[0]
        api[name] = {"host": host, "paths": paths}
        pipelines[name] = {"apiEndpoints": [name], "policies": steps}
    return {
        "apiEndpoints": api,
        "serviceEndpoints": {
            "main": {"url": a},
            "mirror": {"url": a + "/mirror"},
            "based": {"url": a + "/mirror/base"},
            "pair": {"urls": [a, b]},
            "slowsvc": {"url": a, "timeout": 300},
            "dead": {"url": f"http://127.0.0.1:{dead_port}"},
        },
        "policies": ["log", "headers", "terminate", "proxy"],
        "pipelines": pipelines,
    }


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[Backend, Backend]]:
    alpha, beta = Backend("alpha"), Backend("beta")
    yield alpha, beta
    alpha.stop()
    beta.stop()


@pytest.fixture(scope="module")
def gw(backends: tuple[Backend, Backend], tmp_path_factory: pytest.TempPathFactory,
       ) -> Iterator[Gateway]:
    alpha, beta = backends
    gateway = Gateway(tmp_path_factory.mktemp("proxy-gw"),
                      build_config(alpha.url, beta.url, free_port()))
    yield gateway
    gateway.stop()


@pytest.fixture
def alpha(backends: tuple[Backend, Backend]) -> Backend:
    return backends[0]


def get(gw: Gateway, host: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Host": host, **kwargs.pop("headers", {})}
    return httpx.request(kwargs.pop("method", "GET"), gw.url + path, headers=headers,
                         timeout=10, **kwargs)


def held(backend: Backend, key: str) -> str:
    return httpx.get(f"{backend.url}/held/{key}", timeout=5).text


# -- headers ------------------------------------------------------------------
def test_hop_by_hop_request_headers_are_not_forwarded(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(request("GET", "/echo", "plain.test",
                       "Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
                       "TE: trailers\r\nUpgrade: foo/1\r\nProxy-Connection: keep-alive\r\n"
                       "Trailer: X-Late\r\n"
                       "X-Secret: s3cret\r\nX-Visible: yes\r\n"))
        resp = c.read_response()
    assert resp.status == 200
    got = echoed_headers(resp)
    names = {k for k, _ in got}
    assert not names & (HOP_BY_HOP - {"connection"}), got
    assert "x-secret" not in names, got
    # The upstream hop carries meshgate's own connection management only.
    assert all("x-secret" not in v.lower() for v in values(got, "connection")), got
    assert values(got, "x-visible") == ["yes"]


def test_headers_named_in_every_connection_header_are_not_forwarded(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(request("GET", "/echo", "plain.test",
                       "Connection: X-One\r\nConnection: X-Two, keep-alive\r\n"
                       "X-One: 1\r\nX-Two: 2\r\nX-Three: 3\r\n"))
        got = echoed_headers(c.read_response())
    names = {k for k, _ in got}
    assert not names & {"x-one", "x-two"}, got
    assert values(got, "x-three") == ["3"]


def test_hop_by_hop_response_headers_are_not_returned(gw: Gateway) -> None:
    r = get(gw, "plain.test", "/hop")
    assert r.status_code == 200
    assert r.text == "hop\n"
    names = {k.lower() for k in r.headers}
    assert not names & {"keep-alive", "x-secret", "proxy-connection", "upgrade", "te"}, names
    assert "x-secret" not in r.headers.get("connection", "").lower()
    assert r.headers["x-kept"] == "yes"


def test_x_forwarded_headers_are_added(gw: Gateway) -> None:
    got = echoed_headers(get(gw, "plain.test:8080", "/echo"))
    assert values(got, "x-forwarded-for") == ["127.0.0.1"]
    assert values(got, "x-forwarded-proto") == ["http"]
    assert values(got, "x-forwarded-host") == ["plain.test:8080"]


def test_x_forwarded_for_is_appended_to(gw: Gateway) -> None:
    got = echoed_headers(get(gw, "plain.test", "/echo",
                             headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}))
    assert values(got, "x-forwarded-for") == ["203.0.113.7, 10.0.0.1, 127.0.0.1"]


def test_every_x_forwarded_for_header_is_kept_in_order(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(request("GET", "/echo", "plain.test",
                       "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.0.0.1\r\n"))
        got = echoed_headers(c.read_response())
    assert values(got, "x-forwarded-for") == ["203.0.113.7, 10.0.0.1, 127.0.0.1"]


def test_xfwd_false_adds_no_forwarded_headers(gw: Gateway) -> None:
    got = echoed_headers(get(gw, "noxfwd.test", "/echo"))
    assert not [k for k, _ in got if k.startswith("x-forwarded-")], got
    got = echoed_headers(get(gw, "noxfwd.test", "/echo", headers={"X-Forwarded-For": "1.2.3.4"}))
    assert values(got, "x-forwarded-for") == ["1.2.3.4"]


def test_host_is_kept_by_default(gw: Gateway) -> None:
    got = echoed_headers(get(gw, "plain.test:8080", "/echo"))
    assert values(got, "host") == ["plain.test:8080"]


def test_change_origin_rewrites_host(gw: Gateway, alpha: Backend) -> None:
    got = echoed_headers(get(gw, "origin.test", "/echo"))
    assert values(got, "host") == [f"127.0.0.1:{alpha.port}"]


def test_request_id_reaches_the_upstream(gw: Gateway) -> None:
    ids = []
    for _ in range(3):
        got = echoed_headers(get(gw, "plain.test", "/echo",
                                 headers={"eg-request-id": "client-chosen"}))
        found = values(got, "eg-request-id")
        assert len(found) == 1 and found[0] and found[0] != "client-chosen", got
        ids.append(found[0])
    assert len(set(ids)) == 3, ids


def test_headers_policy_adds_templated_headers(gw: Gateway) -> None:
    r = get(gw, "hdr.test", "/echo", method="POST", content=b"x",
            headers={"X-Gw-Static": "spoofed"})
    got = echoed_headers(r)
    assert values(got, "x-gw-client-ip") == ["127.0.0.1"]
    assert values(got, "x-gw-method") == ["POST"]
    assert values(got, "x-gw-static") == ["fixed"]


def test_log_policy_logs_and_lets_the_request_through(gw: Gateway) -> None:
    marker = f"/mirror/log-{uuid.uuid4().hex}"
    r = get(gw, "hdr.test", marker + "?a=1", method="PUT", content=b"abc")
    assert r.status_code == 200
    assert r.json()["path"] == marker + "?a=1"
    assert r.json()["length"] == 3
    wait_until(lambda: f"logged PUT {marker}?a=1" in gw.log(), timeout=5)


def test_terminate_policy_answers_its_status_and_message(gw: Gateway) -> None:
    r = get(gw, "term.test", "/echo")
    assert r.status_code == 418
    assert r.text == "teapot says no\n"
    assert r.headers["content-length"] == str(len("teapot says no\n"))


def test_terminate_with_expect_continue_does_not_invite_the_body(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(request("POST", "/upload", "term.test",
                       "Content-Length: 100000\r\nExpect: 100-continue\r\n"))
        resp = c.read_response()
        assert resp.status == 418
        assert resp.body == b"teapot says no\n"
        # The body was never read: the connection cannot carry another request.
        assert resp.header("connection") == "close"
        assert c.peer_closed()


def test_client_connection_close_does_not_close_the_upstream_connection(gw: Gateway) -> None:
    before = get(gw, "plain.test", "/conn").json()["port"]
    with RawClient(gw.port) as c:
        c.send(request("GET", "/echo", "plain.test", "Connection: close\r\n"))
        resp = c.read_response()
        assert resp.header("connection") == "close"
        assert "close" not in [v.lower() for v in values(echoed_headers(resp), "connection")]
        assert c.peer_closed()
    assert get(gw, "plain.test", "/conn").json()["port"] == before


# -- paths --------------------------------------------------------------------
@pytest.mark.parametrize(("sent", "received"), [
    ("/api/x?q=1", "/mirror/x?q=1"),
    ("/api/a/b", "/mirror/a/b"),
    ("/API/a", "/mirror/a"),
    ("/users/42?z=1", "/mirror/42?z=1"),
    ("/exact?a=b", "/mirror/?a=b"),
    ("/exact", "/mirror"),
])
def test_strip_path(gw: Gateway, sent: str, received: str) -> None:
    r = get(gw, "strip.test", sent)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == received


def test_request_target_is_passed_byte_for_byte(gw: Gateway) -> None:
    # Already normal: reserved characters stay encoded; the query is never touched.
    target = "/mirror/a%20b/%3B/c;p=1?x=%2F&y=1&y=2&empty=%2e%2e"
    with RawClient(gw.port) as c:
        c.send(request("GET", target, "plain.test"))
        assert c.read_response().json()["path"] == target


def test_absolute_form_target_routes_and_forwards_by_its_authority(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(b"GET http://plain.test/mirror/abs?q=1 HTTP/1.1\r\nHost: term.test\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 200      # term.test would have answered 418
    assert resp.json()["path"] == "/mirror/abs?q=1"
    assert values(echoed_headers(resp), "host") == ["plain.test"]


def test_prepend_path_is_the_default(gw: Gateway) -> None:
    assert get(gw, "prefix.test", "/sub/x?q=1").json()["path"] == "/mirror/base/sub/x?q=1"


def test_prepend_path_false_sends_the_request_path(gw: Gateway) -> None:
    assert get(gw, "noprefix.test", "/mirror/x?q=1").json()["path"] == "/mirror/x?q=1"


def test_ignore_path_sends_the_target_path(gw: Gateway) -> None:
    assert get(gw, "ignore.test", "/whatever/else?q=1").json()["path"] == "/mirror/base"


def test_urls_are_used_round_robin(gw: Gateway) -> None:
    names = [get(gw, "rr.test", "/name").text for _ in range(10)]
    assert sorted(set(names)) == ["alpha", "beta"]
    assert all(x != y for x, y in itertools.pairwise(names)), names


# -- upstream connections ---------------------------------------------------------
def test_upstream_connections_are_reused(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url, headers={"Host": "plain.test"}, timeout=5) as client:
        ports = [client.get("/conn").json()["port"] for _ in range(30)]
    # New client connections take the same pooled upstream connection too.
    ports += [get(gw, "plain.test", "/conn").json()["port"] for _ in range(10)]
    assert len(set(ports)) <= 2, ports


def test_upstream_connection_closed_by_the_upstream_is_not_reused(gw: Gateway) -> None:
    first = get(gw, "plain.test", "/conn").json()["port"]
    assert get(gw, "plain.test", "/conn").json()["port"] == first
    r = get(gw, "plain.test", "/close")
    assert (r.status_code, r.text) == (200, "bye\n")
    after = get(gw, "plain.test", "/conn")
    assert after.status_code == 200
    assert after.json()["port"] != first


def test_refused_port_is_502_with_a_short_body(gw: Gateway) -> None:
    r = get(gw, "refused.test", "/echo")
    assert r.status_code == 502
    assert 0 < len(r.content) < 200


def test_upstream_reset_is_502(gw: Gateway) -> None:
    r = get(gw, "plain.test", "/reset")
    assert r.status_code == 502
    assert 0 < len(r.content) < 200
    assert get(gw, "plain.test", "/echo").status_code == 200


def test_slow_upstream_is_504(gw: Gateway) -> None:
    started = time.monotonic()
    r = get(gw, "timeout.test", "/slow/2000")
    assert r.status_code == 504
    assert time.monotonic() - started < 1.5
    assert 0 < len(r.content) < 200


def test_client_connection_stays_usable_after_a_504(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(request("GET", "/slow/2000", "timeout.test"))
        assert c.read_response().status == 504
        c.send(request("GET", "/name", "timeout.test"))
        assert c.read_response().body == b"alpha"


def test_timed_out_upstream_connection_is_closed(gw: Gateway, alpha: Backend) -> None:
    key = uuid.uuid4().hex
    assert get(gw, "timeout.test", f"/hold/{key}").status_code == 504
    wait_until(lambda: held(alpha, key) == "gone", timeout=5)


@pytest.mark.parametrize("path", ["/truncate", "/truncate-chunked"])
def test_truncated_upstream_response_is_not_passed_off_as_complete(
        gw: Gateway, path: str) -> None:
    with RawClient(gw.port) as c:
        c.send(request("GET", path, "plain.test"))
        head = c.read_head()
        assert head.status == 200
        # The client must see the response break off: a close before the end of the
        # declared length, or before the last chunk -- never a clean end.
        with pytest.raises(EOFError):
            if head.header("content-length") is not None:
                assert head.header("content-length") == "1000"
                c.read_exact(1000)
            else:
                assert head.header("transfer-encoding") == "chunked"
                while c.read_until(b"\r\n") != b"0\r\n":
                    pass
    assert get(gw, "plain.test", "/name").text == "alpha"


def test_client_disconnect_cancels_the_upstream_request(gw: Gateway, alpha: Backend) -> None:
    key = uuid.uuid4().hex
    c = RawClient(gw.port)
    c.send(request("GET", f"/hold/{key}", "plain.test"))
    wait_until(lambda: held(alpha, key) == "waiting", timeout=5)
    c.sock.close()
    wait_until(lambda: held(alpha, key) == "gone", timeout=5)


def test_client_disconnect_mid_upload_cancels_the_upstream_request(
        gw: Gateway, alpha: Backend) -> None:
    key = uuid.uuid4().hex
    c = RawClient(gw.port)
    # More than server.bufferRequestBody (64 KiB): the upload streams upstream.
    c.send(request("POST", f"/hold/{key}", "plain.test", "Content-Length: 1000000\r\n")
           + b"x" * 70000)
    wait_until(lambda: held(alpha, key) == "waiting", timeout=5)
    c.sock.close()
    wait_until(lambda: held(alpha, key) == "gone", timeout=5)


def test_connect_timeout_is_504(gateway_factory: Any) -> None:
    # A listener that never accepts, its backlog full: further SYNs are dropped,
    # so a connect hangs until the caller gives up.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", port))
            pytest.skip("cannot make a connect hang on this system")
        except TimeoutError:
            pass
        finally:
            probe.close()
        gw = gateway_factory(proxy_config(f"http://127.0.0.1:{port}",
                                          service={"connectTimeout": 300}))
        started = time.monotonic()
        r = httpx.get(gw.url + "/echo", timeout=10)
        assert r.status_code == 504
        assert time.monotonic() - started < 2
        assert 0 < len(r.content) < 200
    finally:
        for s in fillers:
            s.close()
        listener.close()


# -- bodies ---------------------------------------------------------------------
def test_chunked_upload_arrives_intact(gw: Gateway) -> None:
    blocks = [os.urandom(n) for n in (1, 100, 65536, 7, 300000, 1 << 20, 13)]

    def body() -> Iterator[bytes]:
        yield from blocks

    r = get(gw, "plain.test", "/upload", method="POST", content=body())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    data = b"".join(blocks)
    assert r.json() == {"length": len(data), "crc": zlib.crc32(data)}


def test_chunked_upload_over_a_raw_socket_with_trailers(gw: Gateway) -> None:
    data = os.urandom(50000)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 9999]), data[i:i + 9999])
                      for i in range(0, len(data), 9999))
    with RawClient(gw.port) as c:
        c.send(request("POST", "/upload", "plain.test", "Transfer-Encoding: chunked\r\n")
               + chunks + b"0\r\nx-checksum: 1\r\n\r\n")
        resp = c.read_response()
        assert resp.json() == {"length": len(data), "crc": zlib.crc32(data)}
        c.send(request("GET", "/name", "plain.test"))
        assert c.read_response().body == b"alpha"


def test_content_length_upload_arrives_intact(gw: Gateway) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    r = get(gw, "plain.test", "/upload", method="POST", content=data)
    assert r.request.headers["content-length"] == str(len(data))
    assert r.json() == {"length": len(data), "crc": zlib.crc32(data)}


def test_expect_100_continue(gw: Gateway) -> None:
    data = os.urandom(20000)
    with RawClient(gw.port) as c:
        c.send(request("POST", "/upload", "plain.test",
                       f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n"))
        interim = c.read_head()
        assert (interim.version, interim.status) == ("HTTP/1.1", 100)
        c.send(data)
        resp = c.read_response()
        assert resp.status == 200
        assert resp.json() == {"length": len(data), "crc": zlib.crc32(data)}


def test_head_has_a_length_but_no_body_and_the_connection_stays_usable(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(request("HEAD", "/bytes/1000", "plain.test"))
        head = c.read_response("HEAD")
        assert head.status == 200
        assert head.header("content-length") == "1000"
        c.send(request("GET", "/name", "plain.test"))
        # Were a body sent after the HEAD response, it would be read here instead.
        resp = c.read_response()
        assert (resp.status, resp.body) == (200, b"alpha")
        # And the upstream connection that answered the HEAD is still good.
        for _ in range(2):
            c.send(request("GET", "/bytes/5", "plain.test"))
            assert c.read_response().body == b"xxxxx"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(gw: Gateway, status: int) -> None:
    with RawClient(gw.port) as c:
        c.send(request("GET", f"/status/{status}", "plain.test"))
        resp = c.read_head()
        assert resp.status == status
        assert resp.header("transfer-encoding") is None
        assert resp.header("content-length") in (None, "0")
        c.send(request("GET", "/name", "plain.test"))
        nxt = c.read_response()
        assert (nxt.status, nxt.body) == (200, b"alpha")


def test_chunked_response_is_rechunked(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        for _ in range(2):          # the second proves the first ended cleanly
            c.send(request("GET", "/chunked", "plain.test"))
            resp = c.read_response()
            assert resp.status == 200
            assert resp.header("transfer-encoding") == "chunked"
            assert resp.header("content-length") is None
            assert resp.body == b"hello world"


def test_close_delimited_upstream_response_is_framed_for_the_client(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(request("GET", "/eof", "plain.test"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.body == b"until the end"
        assert resp.header("transfer-encoding") == "chunked" or resp.header("connection") == "close"
        if resp.header("transfer-encoding") == "chunked":
            c.send(request("GET", "/name", "plain.test"))
            assert c.read_response().body == b"alpha"


def test_http10_client_gets_a_close_delimited_or_sized_response(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(request("GET", "/chunked", "plain.test", version="1.0"))
        resp = c.read_head()
        assert resp.status == 200
        assert resp.header("transfer-encoding") is None
        length = resp.header("content-length")
        if length is None:          # close-delimited
            assert c.read_to_eof() == b"hello world"
        else:
            assert c.read_exact(int(length)) == b"hello world"
            assert c.peer_closed()
    with RawClient(gw.port) as c:
        c.send(request("GET", "/bytes/10", "plain.test", version="1.0"))
        resp = c.read_response()
        assert resp.header("content-length") == "10"
        assert resp.body == b"x" * 10
        assert c.peer_closed()


def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    with RawClient(gw.port) as c:
        c.send(request("GET", "/slow/300?n=1", "plain.test")
               + request("POST", "/mirror/2", "plain.test", body=b"two")
               + request("GET", "/mirror/3", "plain.test")
               + request("HEAD", "/bytes/7", "plain.test")
               + request("GET", "/name", "plain.test"))
        assert c.read_response().json()["path"] == "/slow/300?n=1"
        second = c.read_response().json()
        assert (second["path"], second["length"]) == ("/mirror/2", 3)
        assert c.read_response().json()["path"] == "/mirror/3"
        assert c.read_response("HEAD").header("content-length") == "7"
        assert c.read_response().body == b"alpha"
