"""Request integrity through a real gateway: what the backend parses is what we admitted.

Each test sends raw bytes to a real meshgate process and asks a backend that
parses HTTP/1.1 by the rules (Content-Length or chunked framing, requests one
after another on a connection) what it received. The gateway routes
``/public/*`` without authentication and ``/admin/*`` behind key-auth: a
request reaching the backend as ``/admin/...`` without credentials is a walk
around the gateway.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.gateway import Gateway, wait_until
from tests.test_bad_input import connect, read_response, read_until_close, send_raw, status_of


class Parsed:
    """One request as the backend parsed it."""

    def __init__(self, line: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                 trailers: list[tuple[bytes, bytes]]) -> None:
        self.line = line
        self.headers = headers
        self.body = body
        self.trailers = trailers

    @property
    def target(self) -> bytes:
        return self.line.split(b" ")[1]

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


class StrictBackend:
    """A threaded HTTP/1.1 origin that frames requests as RFC 9112 says and records them.

    Each request is answered ``200`` with its target as the body. A target
    ending in ``/double`` gets two responses (a desynchronised origin), one
    ending in ``/conn-framing`` a response whose Connection header nominates
    Content-Length.
    """

    def __init__(self) -> None:
        self.requests: list[Parsed] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while self._one(reader, conn):
                pass
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _one(self, reader: Any, conn: socket.socket) -> bool:
        line = reader.readline(65536)
        if not line:
            return False
        headers: list[tuple[bytes, bytes]] = []
        while True:
            h = reader.readline(65536)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        names = [k for k, _ in headers]
        body, trailers = b"", []
        if b"transfer-encoding" in names:
            while True:
                size = int(reader.readline().split(b";")[0], 16)
                if size == 0:
                    break
                body += reader.read(size)
                reader.readline()
            while True:
                t = reader.readline()
                if t in (b"\r\n", b""):
                    break
                name, _, value = t.partition(b":")
                trailers.append((name.strip().lower(), value.strip()))
        elif b"content-length" in names:
            body = reader.read(int(dict(headers)[b"content-length"]))
        parsed = Parsed(line.rstrip(b"\r\n"), headers, body, trailers)
        with self.lock:
            self.requests.append(parsed)
        target = parsed.target
        answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(target), target)
        if target.endswith(b"/double"):
            answer += b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstolen"
        elif target.endswith(b"/conn-framing"):
            answer = (b"HTTP/1.1 200 OK\r\nconnection: content-length\r\n"
                      b"content-length: 5\r\n\r\nhello")
        conn.sendall(answer)
        return True

    def targets(self) -> list[bytes]:
        with self.lock:
            return [r.target for r in self.requests]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def origin() -> Iterator[StrictBackend]:
    b = StrictBackend()
    yield b
    b.close()


def gateway_config(url: str, service: dict[str, Any] | None = None,
                   server: dict[str, Any] | None = None) -> dict[str, Any]:
    proxy = {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}
    config: dict[str, Any] = {
        "apiEndpoints": {"public": {"host": "*", "paths": ["/public/*"]},
                         "admin": {"host": "*", "paths": ["/admin/*"]}},
        "serviceEndpoints": {"backend": {"url": url, **(service or {})}},
        "policies": ["key-auth", "proxy"],
        "pipelines": {"public": {"apiEndpoints": ["public"], "policies": [proxy]},
                      "admin": {"apiEndpoints": ["admin"],
                                "policies": [{"key-auth": [{"action": {}}]}, proxy]}},
    }
    if server:
        config["server"] = server
    return config


@pytest.fixture
def gw(origin: StrictBackend, gateway_factory: Any) -> Gateway:
    return gateway_factory(gateway_config(origin.url))


def smuggling_post(body: bytes, connection: bytes = b"content-length") -> bytes:
    return (b"POST /public/x HTTP/1.1\r\nHost: gw\r\nConnection: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (connection, len(body), body))


# -- row 1: Connection cannot remove framing ----------------------------------------
@pytest.mark.parametrize("connection", [b"content-length", b"Content-Length, close",
                                        b"transfer-encoding", b"host"])
def test_connection_cannot_nominate_the_framing_away(gw: Gateway, origin: StrictBackend,
                                                     connection: bytes) -> None:
    smuggled = b"GET /admin/delete-everything HTTP/1.1\r\nHost: gw\r\n\r\n"
    response, _ = send_raw(gw.port, smuggling_post(smuggled, connection), timeout=3)
    assert status_of(response) == 200
    wait_until(lambda: origin.requests)
    time.sleep(0.2)          # let a smuggled second request arrive, if there were one
    assert origin.targets() == [b"/public/x"]
    (post,) = origin.requests
    assert post.header(b"content-length") == [b"%d" % len(smuggled)]
    assert post.body == smuggled


def test_nominated_ordinary_headers_are_dropped_before_policies(gw: Gateway,
                                                                origin: StrictBackend) -> None:
    response, _ = send_raw(gw.port, b"GET /public/a HTTP/1.1\r\nHost: gw\r\n"
                                     b"Connection: x-secret, close\r\nX-Secret: 1\r\n"
                                     b"X-Kept: 2\r\n\r\n")
    assert status_of(response) == 200
    (req,) = origin.requests
    assert req.header(b"x-secret") == [] and req.header(b"x-kept") == [b"2"]


# -- row 2: a connection with bytes after its response is never reused --------------
def test_bytes_after_a_response_never_reach_the_next_request(
        origin: StrictBackend, gateway_factory: Any) -> None:
    gw = gateway_factory(gateway_config(origin.url, {"pool": {"maxConnections": 1}}))
    with connect(gw.port) as c:
        c.sendall(b"GET /public/double HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert read_response(c)[2] == b"/public/double"
        for i in range(3):
            c.sendall(b"GET /public/next%d HTTP/1.1\r\nHost: gw\r\n\r\n" % i)
            assert read_response(c)[2] == b"/public/next%d" % i
    assert origin.connections >= 2       # the desynchronised connection was closed


def test_a_queued_victim_gets_its_own_response(origin: StrictBackend,
                                               gateway_factory: Any) -> None:
    gw = gateway_factory(gateway_config(origin.url, {"pool": {"maxConnections": 1}}))
    attack = smuggling_post(b"GET /admin/secret-report HTTP/1.1\r\nX-Ignore: ")
    results: dict[str, bytes] = {}

    def victim(i: int) -> None:
        with connect(gw.port) as c:
            c.sendall(b"GET /public/victim%d HTTP/1.1\r\nHost: gw\r\n"
                      b"Authorization: apiKey secret\r\n\r\n" % i)
            results[f"v{i}"] = read_response(c)[2]

    with connect(gw.port) as a:
        a.sendall(attack)
        threads = [threading.Thread(target=victim, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        status, _, _ = read_response(a)
    assert status == 200
    assert results == {f"v{i}": b"/public/victim%d" % i for i in range(4)}
    assert not [t for t in origin.targets() if t.startswith(b"/admin")]


def test_upstream_connection_header_cannot_unframe_the_response(gw: Gateway) -> None:
    with connect(gw.port) as c:
        c.sendall(b"GET /public/conn-framing HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, headers, body = read_response(c)
        assert (status, body) == (200, b"hello")
        assert headers[b"content-length"] == b"5"
        c.sendall(b"GET /public/after HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert read_response(c)[2] == b"/public/after"


# -- row 3: one path, normalised before routing ------------------------------------
@pytest.mark.parametrize("path", [
    b"/public/../admin/x", b"/public/%2e%2e/admin/x", b"/public/%2E%2E/admin/x",
    b"/public/./../admin/x", b"/public/x/../../admin/x", b"/public/.%2E/admin/x",
    b"http://gw/public/../admin/x",
])
def test_dot_segments_are_resolved_before_routing(gw: Gateway, origin: StrictBackend,
                                                  path: bytes) -> None:
    response, _ = send_raw(gw.port, b"GET %s HTTP/1.1\r\nHost: gw\r\n"
                                     b"Connection: close\r\n\r\n" % path)
    assert status_of(response) == 401            # the /admin/* pipeline's key-auth
    assert origin.requests == []


@pytest.mark.parametrize("path", [b"/public/..%2fadmin/x", b"/public/..%2Fadmin/x",
                                  b"/public/..%5cadmin/x", b"/public/..\\admin/x",
                                  b"/public/%zz", b"/public/%2", b"/public/..;/admin/x",
                                  b"/public/..;jsessionid=1/admin/x", b"/public/.;/x",
                                  b"/public/..%3b/admin/x", b"/public/%2e%2e;/admin/x"])
def test_encoded_slashes_and_bad_escapes_are_400(gw: Gateway, origin: StrictBackend,
                                                 path: bytes) -> None:
    response, closed = send_raw(gw.port, b"GET %s HTTP/1.1\r\nHost: gw\r\n\r\n" % path)
    assert status_of(response) == 400 and closed
    assert origin.requests == []


def test_the_upstream_gets_the_normalised_path(gw: Gateway, origin: StrictBackend) -> None:
    response, _ = send_raw(gw.port, b"GET /public//a/./b/../%7Euser%2a?q=/../%2e HTTP/1.1\r\n"
                                     b"Host: gw\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    assert origin.targets() == [b"/public//a/~user%2A?q=/../%2e"]


def test_path_normalization_settings(origin: StrictBackend, gateway_factory: Any) -> None:
    gw = gateway_factory(gateway_config(origin.url, server={
        "pathNormalization": {"encodedSlashes": "unescape", "mergeSlashes": True}}))
    for path, status in [(b"/public//x%2Fy", 200), (b"/public/..%2Fadmin/x", 401),
                         (b"/public/..\\admin/y", 401)]:
        response, _ = send_raw(gw.port, b"GET %s HTTP/1.1\r\nHost: gw\r\n"
                                         b"Connection: close\r\n\r\n" % path)
        assert status_of(response) == status
    assert origin.targets() == [b"/public/x/y"]


# -- rows 6, 12: limits --------------------------------------------------------------
@pytest.mark.parametrize("length, sent, upstream", [
    (10_000, 1, 0),              # buffered: a stalled small upload holds no upstream connection
    (10_000_000, 70_000, 4),     # streaming: at most maxConnections / 2 uploads at once
])
def test_stalled_uploads_do_not_starve_the_pool(origin: StrictBackend, gateway_factory: Any,
                                               length: int, sent: int, upstream: int) -> None:
    gw = gateway_factory(gateway_config(origin.url, {"pool": {"maxConnections": 8}}))
    stalled = []
    try:
        for _ in range(40):
            s = connect(gw.port)
            s.sendall(b"POST /public/upload HTTP/1.1\r\nHost: gw\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (length, b"x" * sent))
            stalled.append(s)
        wait_until(lambda: origin.connections >= upstream)
        started = time.monotonic()
        response, _ = send_raw(gw.port, b"GET /public/normal HTTP/1.1\r\nHost: gw\r\n"
                                         b"Connection: close\r\n\r\n")
        elapsed = time.monotonic() - started
        assert status_of(response) == 200
        assert elapsed < 1.0, elapsed              # 100 ms when the machine is quiet
        assert origin.connections == upstream + 1
    finally:
        for s in stalled:
            s.close()


def test_a_body_that_stops_arriving_is_408(origin: StrictBackend,
                                           gateway_factory: Any) -> None:
    gw = gateway_factory(gateway_config(origin.url, server={"bodyTimeout": 300,
                                                            "bufferRequestBody": 0}))
    with connect(gw.port) as c:
        c.sendall(b"POST /public/upload HTTP/1.1\r\nHost: gw\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
        response, closed = read_until_close(c, timeout=5)
    assert status_of(response) == 408 and closed


@pytest.mark.parametrize("count, status", [(99, 200), (101, 431)])
def test_header_count_limit(gw: Gateway, count: int, status: int) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(count - 1))
    response, _ = send_raw(gw.port, b"GET /public/h HTTP/1.1\r\nHost: gw\r\n%s"
                                     b"Connection: close\r\n\r\n" % headers)
    assert status_of(response) == status


# -- row 7: Upgrade with a body -----------------------------------------------------
@pytest.mark.parametrize("upgrade", [b"websocket", b"h2c"])
def test_upgrade_with_a_body_is_400(gw: Gateway, origin: StrictBackend,
                                    upgrade: bytes) -> None:
    body = b"GET /admin/x HTTP/1.1\r\nHost: gw\r\n\r\n"
    response, closed = send_raw(gw.port, b"POST /public/x HTTP/1.1\r\nHost: gw\r\n"
                                         b"Connection: Upgrade\r\nUpgrade: %s\r\n"
                                         b"Content-Length: %d\r\n\r\n%s"
                                         % (upgrade, len(body), body), timeout=3)
    assert status_of(response) == 400 and closed
    assert response.count(b"HTTP/1.1") == 1
    assert origin.requests == []


def test_h2c_upgrade_without_a_body_is_served_as_http1(gw: Gateway,
                                                       origin: StrictBackend) -> None:
    response, _ = send_raw(gw.port, b"GET /public/x HTTP/1.1\r\nHost: gw\r\n"
                                     b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                     b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
                                     b"GET /public/y HTTP/1.1\r\nHost: gw\r\n"
                                     b"Connection: close\r\n\r\n", timeout=3)
    assert response.count(b"HTTP/1.1 200") == 2
    assert origin.targets() == [b"/public/x", b"/public/y"]
    assert origin.requests[0].header(b"upgrade") == []
    assert origin.requests[0].header(b"http2-settings") == []


# -- row 10: nothing after the last request -------------------------------------------
@pytest.mark.parametrize("first", [
    b"GET /public/1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    b"GET /public/1 HTTP/1.0\r\nHost: gw\r\n\r\n",
])
def test_the_request_before_a_close_is_answered_the_rest_discarded(
        gw: Gateway, origin: StrictBackend, first: bytes) -> None:
    second = b"GET /admin/2 HTTP/1.1\r\nHost: gw\r\n\r\n"
    response, closed = send_raw(gw.port, first + second, timeout=3)
    assert closed and status_of(response) == 200
    assert response.count(b"HTTP/1.1 ") == 1
    assert origin.targets() == [b"/public/1"]


def test_http10_keep_alive_is_acknowledged(gw: Gateway) -> None:
    with connect(gw.port) as c:
        c.sendall(b"GET /public/1 HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = read_response(c)
        assert status == 200 and headers[b"connection"] == b"keep-alive"
        c.sendall(b"GET /public/2 HTTP/1.0\r\nHost: gw\r\n\r\n")
        assert read_response(c)[2] == b"/public/2"


# -- rows 11, 12: what a client may not say ---------------------------------------------
def test_gateway_headers_from_a_client_are_dropped(gw: Gateway, origin: StrictBackend) -> None:
    response, _ = send_raw(gw.port, b"GET /public/x HTTP/1.1\r\nHost: gw\r\n"
                                     b"eg-consumer-id: admin\r\nX-Meshgate-Fault: 1\r\n"
                                     b"X-MESHGATE-anything: 1\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    (req,) = origin.requests
    assert [k for k, _ in req.headers if k.startswith((b"eg-consumer", b"x-meshgate"))] == []


def test_request_trailers_are_filtered(gw: Gateway, origin: StrictBackend) -> None:
    response, _ = send_raw(gw.port, b"POST /public/t HTTP/1.1\r\nHost: gw\r\n"
                                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                     b"3\r\nabc\r\n0\r\nHost: evil\r\nAuthorization: x\r\n"
                                     b"X-Meshgate-Id: 1\r\nX-Checksum: 1\r\n\r\n")
    assert status_of(response) == 200
    (req,) = origin.requests
    assert req.body == b"abc"
    assert req.trailers == [(b"x-checksum", b"1")]


@pytest.mark.parametrize("raw", [
    pytest.param(b"GET /public/x#frag HTTP/1.1\r\nHost: gw\r\n\r\n", id="fragment"),
    pytest.param(b"GET /public/x\r\n\r\n", id="http09"),
    pytest.param(b"GET /public/x HTTP/0.9\r\n\r\n", id="http09-version"),
    pytest.param(b"GET */../admin/x HTTP/1.1\r\nHost: gw\r\n\r\n", id="asterisk-prefix"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: gw\r\n\r\n", id="asterisk-not-options"),
    pytest.param(b"GET public/../admin/x HTTP/1.1\r\nHost: gw\r\n\r\n", id="relative"),
    pytest.param(b"GET ftp://gw/public/x HTTP/1.1\r\nHost: gw\r\n\r\n", id="other-scheme"),
    pytest.param(b"GET http://u@gw/public/x HTTP/1.1\r\nHost: gw\r\n\r\n", id="userinfo"),
    pytest.param(b"GET http://gw/public/x HTTP/1.1\r\n\r\n", id="absolute-no-host-header"),
    pytest.param(b"GET /public/x HTTP/1.1\r\nHost:\r\nHost: gw\r\n\r\n", id="host-twice"),
])
def test_odd_targets_are_400(gw: Gateway, origin: StrictBackend, raw: bytes) -> None:
    response, closed = send_raw(gw.port, raw)
    assert status_of(response) == 400 and closed
    assert origin.requests == []


@pytest.mark.parametrize("te, status", [
    (b"Transfer-Encoding: gzip, chunked\r\n", 501),
    (b"Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n", 501),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
])
def test_transfer_codings_other_than_one_chunked_are_refused(
        gw: Gateway, origin: StrictBackend, te: bytes, status: int) -> None:
    response, closed = send_raw(gw.port, b"POST /public/x HTTP/1.1\r\nHost: gw\r\n" + te
                                + b"\r\n3\r\nabc\r\n0\r\n\r\n")
    assert status_of(response) == status and closed
    assert origin.requests == []


def test_absolute_form_authority_replaces_host(gw: Gateway, origin: StrictBackend) -> None:
    response, _ = send_raw(gw.port, b"GET http://[::1]:8080/public/../public/v6 HTTP/1.1\r\n"
                                     b"Host: gw\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    (req,) = origin.requests
    assert req.target == b"/public/v6"
    assert (b"host", b"[::1]:8080") in req.headers


@pytest.mark.parametrize("junk", [b"\x00", b"XYZ\r\n\r\n", b"GET /x#f HTTP/1.1\r\n\r\n"])
def test_answers_owed_before_a_bad_request_are_sent_first(
        gw: Gateway, origin: StrictBackend, junk: bytes) -> None:
    """A request already proxied when the next bytes turn out bad is answered,
    then the 400, then the close; nothing after the bad bytes is read."""
    first = b"GET /public/a HTTP/1.1\r\nHost: gw\r\n\r\n"
    second = b"GET /public/b HTTP/1.1\r\nHost: gw\r\n\r\n"
    response, closed = send_raw(gw.port, first + second + junk
                                + b"GET /admin/z HTTP/1.1\r\nHost: gw\r\n\r\n", timeout=3)
    assert closed, response
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", response) == [b"200", b"200", b"400"]
    assert origin.targets() == [b"/public/a", b"/public/b"]


def test_an_upload_waiting_for_a_slot_goes_when_one_ends(origin: StrictBackend,
                                                         gateway_factory: Any) -> None:
    gw = gateway_factory(gateway_config(origin.url, {"pool": {"maxConnections": 8,
                                                              "maxUploads": 1}}))
    head = b"POST /public/up%d HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n"
    with connect(gw.port) as a, connect(gw.port) as b:
        a.sendall(head % 1 + b"a" * 70_000)
        wait_until(lambda: origin.connections == 1)
        b.sendall(head % 2 + b"b" * 100_000)       # complete, but it arrived as an upload
        a.sendall(b"a" * 30_000)
        assert read_response(a)[2] == b"/public/up1"
        assert read_response(b)[2] == b"/public/up2"
    assert [len(r.body) for r in origin.requests] == [100_000, 100_000]


def test_a_header_value_that_never_ends_is_431_without_waiting_for_it(gw: Gateway) -> None:
    with connect(gw.port) as c:
        c.sendall(b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-Long: ")
        sent = 0
        c.settimeout(0.01)
        while sent < 8 << 20:                  # 8 MiB, far past maxHeaderBytes (64 KiB)
            try:
                c.sendall(b"a" * 65536)
            except OSError:
                break                          # answered and closed
            sent += 65536
            try:
                if c.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                pass
        response, _ = read_until_close(c, timeout=3)
    assert status_of(response) == 431
    assert sent < 1 << 20                      # refused within a few reads


def test_a_decoded_query_parameter_cannot_add_header_lines(origin: StrictBackend,
                                                           gateway_factory: Any) -> None:
    config = gateway_config(origin.url)
    config["policies"].append("headers")
    config["pipelines"]["public"]["policies"].insert(
        0, {"headers": [{"action": {"forwardHeaders": {"x-tag": "${req.query.tag}"}}}]})
    gw = gateway_factory(config)
    injected = b"a%0d%0aContent-Length:%200%0d%0a%0d%0aGET%20/admin/x%20HTTP/1.1%0d%0aX:%20b"
    response, _ = send_raw(gw.port, b"POST /public/q?tag=%s HTTP/1.1\r\nHost: gw\r\n"
                                     b"Content-Length: 3\r\nConnection: close\r\n\r\nabc"
                                     % injected)
    assert status_of(response) == 200
    wait_until(lambda: origin.requests)
    time.sleep(0.2)
    assert origin.targets() == [b"/public/q?tag=" + injected]
    (req,) = origin.requests
    assert req.header(b"x-tag") == [b"aContent-Length: 0GET /admin/x HTTP/1.1X: b"]
    assert req.body == b"abc"
