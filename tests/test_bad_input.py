"""Malformed HTTP from clients: a clear 4xx, a closed connection, and nothing else.

Every test talks to a real meshgate over raw sockets, because the inputs are
ones no well-behaved client library would send. Where the question is "did
anything reach the upstream" the upstream is a ``Recorder``: a tiny threaded
HTTP server in the test process that logs every request head it receives.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
import zlib
from collections.abc import Iterator

import pytest

from tests.support.gateway import proxy_config

TRACEBACK_MARKERS = (b"Traceback", b'File "', b"Error:")


# -- raw client helpers --------------------------------------------------------
def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_close(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes: (bytes, closed-by-server)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def send_raw(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """One connection: send ``data``, read until the server closes it."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        return read_until_close(sock, timeout)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), f"not an HTTP response: {response[:200]!r}"
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def read_response(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """One Content-Length response from a keep-alive connection."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, v in (ln.split(b":", 1) for ln in lines[1:])}
    length = int(headers.get(b"content-length", b"0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    assert len(rest) == length, "more bytes than Content-Length"
    return int(lines[0].split(b" ", 2)[1]), headers, rest


# -- an upstream that records what reaches it ----------------------------------
class Recorder:
    """A threaded HTTP/1.1 server that records each request head it receives."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                # the gateway may give up on a connection mid-request
                with contextlib.suppress(ConnectionError, ValueError):
                    self.serve()

            def serve(self) -> None:
                while True:
                    head = b""
                    while True:
                        line = self.rfile.readline(1 << 20)
                        if not line:
                            return
                        head += line
                        if line in (b"\r\n", b"\n"):
                            break
                    with recorder.lock:
                        recorder.heads.append(head)
                    lower = head.lower()
                    if b"transfer-encoding: chunked" in lower:
                        while True:
                            size = int(self.rfile.readline().split(b";")[0], 16)
                            self.rfile.read(size + 2)
                            if size == 0:
                                break
                    else:
                        for line in lower.split(b"\r\n"):
                            if line.startswith(b"content-length:"):
                                self.rfile.read(int(line.split(b":")[1]))
                    self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nrecorded\n")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request_lines(self) -> list[bytes]:
        with self.lock:
            return [h.split(b"\r\n", 1)[0] for h in self.heads]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


@pytest.fixture
def gw(backend, gateway_factory):
    """A gateway in front of the scriptable backend, with a short headersTimeout."""
    config = proxy_config(backend.url)
    config["server"] = {"headersTimeout": 500}
    return gateway_factory(config)


def assert_rejected(response: bytes, closed: bool, status: int) -> None:
    assert closed, f"the connection stayed open after {response[:100]!r}"
    assert status_of(response) == status, response[:300]
    head = response.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nconnection: close" in head
    for marker in TRACEBACK_MARKERS:
        assert marker not in body_of(response)


# -- malformed heads -------------------------------------------------------------
@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"G@T /echo HTTP/1.1\r\nHost: x\r\n\r\n", id="bad-method"),
    pytest.param(b"GET /echo HTTP/1.1 trailing\r\nHost: x\r\n\r\n", id="extra-token"),
    pytest.param(b"GET /echo HTTP/7.3\r\nHost: x\r\n\r\n", id="bad-version"),
    pytest.param(b"\x00\x01\x02\xff garbage\r\n\r\n", id="binary"),
    pytest.param(b"GET\r\n\r\n", id="no-target"),
])
def test_malformed_request_line_is_400_and_closes(gw, recorder, request_bytes) -> None:
    response, closed = send_raw(gw.port, request_bytes + b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected(response, closed, 400)
    # exactly one response: the pipelined follow-up was not answered
    assert response.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("header", [
    pytest.param(b"Bad Header: y", id="space-in-name"),
    pytest.param(b"NoColonHere", id="no-colon"),
    pytest.param(b"X-Ctl: a\x00b", id="nul-in-value"),
    pytest.param(b": empty-name", id="empty-name"),
])
def test_malformed_header_is_400(gw, header) -> None:
    response, closed = send_raw(
        gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
    assert_rejected(response, closed, 400)


def _head_with_headers(total: int) -> bytes:
    """A GET whose header section carries about ``total`` bytes in 1000-byte values."""
    lines = []
    size = 0
    i = 0
    while size < total:
        value = b"v" * min(1000, total - size)
        line = b"X-Filler-%04d: %s\r\n" % (i, value)
        lines.append(line)
        size += len(line)
        i += 1
    return b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"".join(lines) + b"\r\n"


def test_header_section_over_64k_is_431(gw) -> None:
    response, closed = send_raw(gw.port, _head_with_headers(65 * 1024))
    assert_rejected(response, closed, 431)


def test_single_huge_header_is_431(gw) -> None:
    response, closed = send_raw(
        gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (70 * 1024) + b"\r\n\r\n")
    assert_rejected(response, closed, 431)


def test_header_section_of_60k_passes(gw) -> None:
    request = _head_with_headers(60 * 1024)
    with connect(gw.port) as sock:
        sock.sendall(request)
        status, _, body = read_response(sock)
    assert status == 200, body[:300]
    sent = [tuple(ln.decode().lower().split(": ", 1)) for ln in request.split(b"\r\n")
            if ln.startswith(b"X-Filler-")]
    echoed = [tuple(h) for h in json.loads(body)["headers"] if h[0].startswith("x-filler-")]
    assert echoed == sent
    assert sum(len(k) + len(v) + 4 for k, v in sent) >= 60 * 1024


def test_max_header_bytes_is_configurable(backend, gateway_factory) -> None:
    config = proxy_config(backend.url)
    config["server"] = {"maxHeaderBytes": 8192}
    gw = gateway_factory(config)
    ok, _ = send_raw(gw.port, _head_with_headers(6 * 1024).replace(
        b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"))
    assert status_of(ok) == 200
    response, closed = send_raw(gw.port, _head_with_headers(10 * 1024))
    assert_rejected(response, closed, 431)


# -- framing: the request smuggling family ---------------------------------------
def test_content_length_with_transfer_encoding_is_rejected_unproxied(
        recorder, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(recorder.url))
    smuggle = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\n"
               b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    response, closed = send_raw(gw.port, smuggle)
    assert_rejected(response, closed, 400)
    assert response.count(b"HTTP/1.1 ") == 1
    # A later honest request is the only thing the upstream ever sees.
    ok, _ = send_raw(gw.port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200 and body_of(ok) == b"recorded\n"
    assert recorder.request_lines() == [b"GET /after HTTP/1.1"]


def test_transfer_encoding_then_content_length_is_rejected_unproxied(
        recorder, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(recorder.url))
    smuggle = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Length: 4\r\n\r\n"
               b"2c\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n0123456\r\n0\r\n\r\n")
    response, closed = send_raw(gw.port, smuggle)
    assert_rejected(response, closed, 400)
    ok, _ = send_raw(gw.port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200
    assert recorder.request_lines() == [b"GET /after HTTP/1.1"]


def test_differing_duplicate_content_length_is_400(recorder, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(recorder.url))
    response, closed = send_raw(
        gw.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Content-Length: 30\r\n\r\nhelloGET /smuggled HTTP/1.1\r\n\r\n")
    assert_rejected(response, closed, 400)
    ok, _ = send_raw(gw.port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200
    assert recorder.request_lines() == [b"GET /after HTTP/1.1"]


@pytest.mark.parametrize("body", [
    pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="not-hex"),
    pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="no-crlf-after-data"),
    pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="negative"),
])
def test_bad_chunk_is_400(gw, body) -> None:
    response, closed = send_raw(
        gw.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert_rejected(response, closed, 400)


def test_upgrade_request_is_served_as_plain_http(recorder, gateway_factory) -> None:
    # Upgrade is hop-by-hop and this listener does not tunnel: the request is
    # answered as an ordinary HTTP/1.1 request (RFC 9110 7.8 lets a server
    # ignore Upgrade), the upstream never sees Upgrade or Connection, and a
    # request pipelined right behind it is parsed as HTTP, not as tunnel bytes.
    gw = gateway_factory(proxy_config(recorder.url))
    response, _ = send_raw(
        gw.port, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\n\r\n"
                 b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.count(b"HTTP/1.1 200") == 2
    assert recorder.request_lines() == [b"GET /ws HTTP/1.1", b"GET /after HTTP/1.1"]
    first = recorder.heads[0].lower()
    assert b"upgrade:" not in first and b"connection: upgrade" not in first


def test_connect_is_refused_with_400(recorder, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(recorder.url))
    response, closed = send_raw(gw.port, b"CONNECT example.com:443 HTTP/1.1\r\n"
                                         b"Host: example.com:443\r\n\r\n")
    assert_rejected(response, closed, 400)
    assert recorder.request_lines() == []


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"GET /echo HTTP/1.1\r\n\r\n", id="missing"),
    pytest.param(b"GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
                 id="repeated"),
])
def test_host_missing_or_repeated_is_400(recorder, gateway_factory, request_bytes) -> None:
    # RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request
    # without Host or with more than one; a proxy that routes on one Host and
    # forwards another is a routing-confusion vector.
    gw = gateway_factory(proxy_config(recorder.url))
    response, closed = send_raw(gw.port, request_bytes)
    assert_rejected(response, closed, 400)
    assert recorder.request_lines() == []


@pytest.mark.parametrize("target", [
    pytest.param(b"http://[::1", id="unclosed-ipv6"),
    pytest.param(b"http://host:99999999/", id="port-out-of-range"),
])
def test_invalid_absolute_form_target_is_400(gw, target) -> None:
    response, closed = send_raw(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected(response, closed, 400)
    assert "Traceback" not in gw.log()


# -- slow heads ------------------------------------------------------------------
def test_incomplete_head_times_out_with_408(gw) -> None:
    with connect(gw.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        response, closed = read_until_close(sock, timeout=5)
        waited = time.monotonic() - started
    assert_rejected(response, closed, 408)
    assert 0.45 <= waited < 2.5, f"408 after {waited:.2f}s with headersTimeout 500 ms"


def test_dribbled_head_still_times_out(gw) -> None:
    # A client that keeps sending a byte at a time never finishes its head:
    # the deadline runs from the start of the head, not from the last byte.
    with connect(gw.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /echo HTTP/1.1\r\n")
        closed = False
        response = b""
        while time.monotonic() - started < 5:
            try:
                sock.sendall(b"X-A: b\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            response, closed = read_until_close(sock, timeout=0.1)
            if closed:
                break
        if not closed:
            response, closed = read_until_close(sock, timeout=1)
        waited = time.monotonic() - started
    assert closed, "a dribbling client kept its connection for 5 s"
    assert waited < 2.5, f"closed only after {waited:.2f}s with headersTimeout 500 ms"
    assert response == b"" or status_of(response) == 408


def test_silent_connection_is_closed_after_headers_timeout(gw) -> None:
    with connect(gw.port) as sock:
        started = time.monotonic()
        response, closed = read_until_close(sock, timeout=5)
        waited = time.monotonic() - started
    assert closed, "a connection that never sent a byte was kept for 5 s"
    assert 0.45 <= waited < 2.5, waited
    assert response == b"" or status_of(response) == 408


def test_idle_keep_alive_connection_outlives_headers_timeout(gw) -> None:
    # Between requests the keep-alive timeout applies, not headersTimeout.
    with connect(gw.port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        time.sleep(1.0)                   # idle for twice headersTimeout (the input, not a sync)
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(sock)
    assert status == 200
    assert headers.get(b"connection") != b"close"


# -- isolation -------------------------------------------------------------------
def test_bad_connections_do_not_disturb_good_ones(gw) -> None:
    size = 4 * 1024 * 1024
    block = bytes(range(256)) * 256                   # 64 KiB
    payload_crc = 0
    slow_result: dict[str, bytes] = {}

    def slow_request() -> None:
        with connect(gw.port, timeout=10) as s:
            s.sendall(b"GET /slow/800 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            slow_result["response"], _ = read_until_close(s, timeout=10)

    slow = threading.Thread(target=slow_request)
    slow.start()
    with connect(gw.port, timeout=10) as upload:
        upload.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sent = 0
        bad = [b"G@T / HTTP/1.1\r\n\r\n",
               b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
               _head_with_headers(70 * 1024),
               b"\xff" * 100]
        rejected = []
        while sent < size:
            upload.sendall(block)
            payload_crc = zlib.crc32(block, payload_crc)
            sent += len(block)
            if sent % (1024 * 1024) == 0:
                for junk in bad:
                    response, closed = send_raw(gw.port, junk)
                    assert closed
                    rejected.append(status_of(response))
        status, _, body = read_response(upload)
    slow.join(10)
    assert rejected == [400, 400, 431, 400] * 4
    assert status == 200
    assert json.loads(body) == {"length": size, "crc": payload_crc}
    assert status_of(slow_result["response"]) == 200
    assert json.loads(body_of(slow_result["response"]))["path"] == "/slow/800"


JUNK = [
    b"G@T / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, identity\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",    # not the preface (which is HTTP/2: test_http2)
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64,     # a TLS hello
    b"GET / HTTP/1.1\rHost: x\r\r",
    b"GET / HTTP/1.1\r\n Host: folded\r\n\r\n",
]


def test_no_traceback_and_no_crash_on_junk(gw) -> None:
    pids = gw.pids()
    for junk in JUNK:
        response, closed = send_raw(gw.port, junk)
        assert closed or response, f"no answer and no close for {junk[:40]!r}"
        for marker in TRACEBACK_MARKERS:
            assert marker not in response, (junk[:40], response)
        if response:
            assert 400 <= status_of(response) < 500, (junk[:40], response[:200])
    # the same processes still serve, and nothing was logged as a crash
    assert gw.pids() == pids
    ok, _ = send_raw(gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200
    assert "Traceback" not in gw.log()
