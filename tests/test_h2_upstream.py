"""HTTP/2 to serviceEndpoints (``protocol: h2 | h2c | auto``), over real sockets.

Clients speak HTTP/1.1 to a meshgate process; its serviceEndpoint is an
HTTP/2 origin: ``tests.support.h2_origin`` (scriptable, in this process:
GOAWAY, resets, stream limits, trailers) or nginx (h2c by prior knowledge,
h2 over TLS, or TLS without h2 for ``auto``), whose access log names the
connection of every request.
"""

from __future__ import annotations

import concurrent.futures
import getpass
import grp
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from tests.support.gateway import Gateway, free_port, proxy_config, wait_until
from tests.support.h2_origin import H2Origin
from tests.test_tls import Pki

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture
def origin_factory() -> Iterator[Callable[..., H2Origin]]:
    started: list[H2Origin] = []

    def make(**kwargs: Any) -> H2Origin:
        origin = H2Origin(**kwargs)
        started.append(origin)
        return origin

    yield make
    for origin in started:
        origin.stop()


def h2_config(url: str, **service: Any) -> dict[str, Any]:
    return proxy_config(url, service={"protocol": "h2c", **service})


def get(gw: Gateway, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(gw.url + path, timeout=10, **kwargs)


# -- nginx as an HTTP/2 peer ---------------------------------------------------------
class Nginx:
    """nginx with one server block on ``listen`` (``http2``, ``ssl http2`` or ``ssl``)."""

    def __init__(self, directory: Path, listen: str, tls: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = directory / "access.log"
        user = ""
        if os.geteuid() == 0:
            user = f"user {getpass.getuser()} {grp.getgrgid(os.getgid()).gr_name};"
        certs = (f"ssl_certificate {tls['cert']}; ssl_certificate_key {tls['key']};"
                 if tls else "")
        conf = directory / "nginx.conf"
        conf.write_text(f"""
{user}
daemon off; master_process off; worker_processes 1;
pid {directory}/nginx.pid; error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    log_format conns '$connection $server_protocol $request_uri';
    access_log {self.log} conns;
    client_body_temp_path {directory}/body; proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fcgi; uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen 127.0.0.1:{self.port} {listen}; {certs}
        location / {{ default_type text/plain; return 200 "nginx says hi\\n"; }}
    }}
}}
""")
        self.process = subprocess.Popen([NGINX, "-e", "stderr", "-p", f"{directory}/",
                                         "-c", str(conf)], stderr=subprocess.PIPE)
        wait_until(self._listening, timeout=5)

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def requests(self) -> list[tuple[str, str, str]]:
        if not self.log.exists():
            return []
        return [tuple(line.split()) for line in self.log.read_text().splitlines()]  # type: ignore[misc]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (.ci/run installs it)")
    started: list[Nginx] = []

    def make(listen: str, tls: dict[str, str] | None = None) -> Nginx:
        directory = tmp_path / f"nginx{len(started)}"
        directory.mkdir()
        server = Nginx(directory, listen, tls)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def leaf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return Pki(tmp_path_factory.mktemp("pki")).leaf("origin", "localhost")


def tls_server_context(leaf: dict[str, str], alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf["cert"], leaf["key"])
    ctx.set_alpn_protocols(alpn)
    return ctx


# -- basics ---------------------------------------------------------------------------
def test_get_and_post_over_h2c(origin_factory, gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}"))
    r = get(gw, "/plain")
    assert (r.status_code, r.text) == (200, "hello from h2")
    r = httpx.post(gw.url + "/echo", content=b"ping", timeout=10)
    assert (r.status_code, r.content) == (200, b"ping")
    head = origin.seen.requests[-1]
    assert head[b":method"] == b"POST" and head[b":scheme"] == b"http"
    assert head[b":authority"] == f"127.0.0.1:{gw.port}".encode()
    assert head[b"content-length"] == b"4"
    assert not {b"connection", b"host", b"transfer-encoding", b"keep-alive"} & set(head)
    assert b"eg-request-id" in head and b"x-forwarded-for" in head


def test_one_mib_bodies_both_ways_exact(origin_factory, gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}"))
    body = os.urandom(1 << 20)
    r = httpx.post(gw.url + "/echo", content=body, timeout=20)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(body).digest()
    # chunked upload (no length): streamed, framed by HTTP/2 itself

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 100_000):
            yield body[i:i + 100_000]
    r = httpx.post(gw.url + "/echo", content=chunks(), timeout=20)
    assert r.content == body
    assert b"content-length" not in origin.seen.requests[-1]
    r = get(gw, f"/big/{1 << 20}")
    assert r.content == bytes(i % 251 for i in range(1 << 20))


# -- pooling ----------------------------------------------------------------------------
def test_200_concurrent_requests_share_few_connections(nginx_factory, gateway_factory) -> None:
    nginx = nginx_factory("http2")
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{nginx.port}"))
    with httpx.Client(timeout=20, limits=httpx.Limits(max_connections=200)) as client, \
            concurrent.futures.ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda i: client.get(f"{gw.url}/r{i}"), range(200)))
    assert [r.status_code for r in results] == [200] * 200
    assert all(r.text == "nginx says hi\n" for r in results)
    seen = wait_until(lambda: len(nginx.requests()) >= 200 and nginx.requests())
    assert {proto for _, proto, _ in seen} == {"HTTP/2.0"}
    # 100 streams per connection (ours and nginx's default): at most 4 connections
    assert len({conn for conn, _, _ in seen}) <= 4


def test_stream_limit_opens_connections_up_to_the_cap_then_queues(
        origin_factory, gateway_factory) -> None:
    origin = origin_factory(max_streams=1)
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}",
                                   http2={"maxConnections": 3}))
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        results = list(pool.map(lambda i: get(gw, "/wait/300"), range(9)))
    assert [r.status_code for r in results] == [200] * 9
    assert origin.seen.connections == 3           # the cap, then requests waited
    assert origin.seen.peak_streams == 1


def test_pending_overflow_is_503_with_the_overload_header(origin_factory, gateway_factory) -> None:
    origin = origin_factory(max_streams=1)
    gw = gateway_factory(h2_config(
        f"http://127.0.0.1:{origin.port}", http2={"maxConnections": 1},
        circuitBreakers={"maxPendingRequests": 1}))
    assert get(gw, "/plain").status_code == 200       # the connection is up: 1 stream, 1 waiter
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: get(gw, "/wait/500"), range(4)))
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) == 2 and statuses.count(503) == 2
    assert all(r.headers["x-meshgate-overloaded"] == "true"
               for r in results if r.status_code == 503)


@pytest.mark.parametrize("service", [{}, {"retry": {"retryOn": ["5xx"], "numRetries": 1}}],
                         ids=["plain", "with-a-call"])
def test_goaway_streams_above_last_stream_id_are_sent_again(origin_factory, gateway_factory,
                                                           service) -> None:
    origin = origin_factory(goaway_after=4)
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}", **service))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: httpx.post(gw.url + "/wait/200", content=b"b%d" % i,
                                                     timeout=10), range(4)))
    assert sorted(r.content for r in results) == [b"b0", b"b1", b"b2", b"b3"]
    assert origin.seen.connections == 2
    # the three unprocessed streams came again on the second connection
    assert len(origin.seen.requests) == 7


# -- failures --------------------------------------------------------------------------
def test_rst_stream_is_502_or_retried(origin_factory, gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}"))
    assert get(gw, "/reset").status_code == 502
    assert get(gw, "/plain").status_code == 200          # the connection lives on
    assert origin.seen.connections == 1
    retried = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}",
                                        retry={"retryOn": ["reset"], "numRetries": 2}))
    before = len(origin.seen.paths)
    assert get(retried, "/reset").status_code == 502
    assert origin.seen.paths[before:] == [b"/reset"] * 3


def test_a_malformed_response_head_is_502_for_its_stream_only(origin_factory,
                                                             gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}"))
    r = get(gw, "/malformed")                            # connection: close in HTTP/2
    assert r.status_code == 502 and "reset" in r.text
    assert get(gw, "/plain").status_code == 200          # the connection lives on
    assert origin.seen.connections == 1


def test_an_answer_before_the_request_body_ends_closes_our_side(origin_factory,
                                                              gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}"))
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"),
                            (b":authority", b"x"), (b":path", b"/early"),
                            (b"content-type", b"application/grpc")])   # not buffered
    client.send_data(1, b"a" * 10)                       # the request goes on
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(client.data_to_send())
        ended = False
        while not ended:
            chunk = sock.recv(65536)
            assert chunk
            events = client.receive_data(chunk)
            ended = any(isinstance(e, h2.events.StreamEnded) for e in events)
            sock.sendall(client.data_to_send())
        # The stream's request side upstream is ended, not left holding a slot.
        wait_until(lambda: origin.seen.ended_early == 1)
    assert get(gw, "/plain").status_code == 200


def test_no_response_in_time_is_504(origin_factory, gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}", timeout=300))
    assert get(gw, "/hang").status_code == 504
    assert get(gw, "/plain").status_code == 200
    assert origin.seen.connections == 1


def test_5xx_retried_on_another_stream(origin_factory, gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}",
                                   retry={"retryOn": ["5xx"], "numRetries": 1}))
    assert get(gw, "/status/503").status_code == 503
    assert origin.seen.paths == [b"/status/503"] * 2
    assert origin.seen.connections == 1


def test_a_larger_initial_window_from_the_peer_sends_a_waiting_body(origin_factory,
                                                                    gateway_factory) -> None:
    # The origin opens with no stream window at all: the body waits until its
    # SETTINGS raise the window of the streams already open.
    origin = origin_factory(window=(0, 65535))
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}"))
    r = httpx.post(gw.url + "/echo", content=b"x" * 5000, timeout=10)
    assert (r.status_code, r.content) == (200, b"x" * 5000)


def test_a_slow_client_stops_the_upstream_stream(origin_factory, gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}"))
    size = 64 << 20
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /big/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        # unread, the response stops at the stream window plus socket buffers
        last = [-1]

        def settled() -> bool:
            now, last[0] = last[0], origin.seen.sent
            return origin.seen.blocked >= 1 and now == origin.seen.sent

        wait_until(settled, timeout=10, interval=0.3)
        assert origin.seen.sent < size // 4
        received = 0
        while received < size:
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
    assert received > size      # the whole body (and the head) came once read


def test_request_trailers_are_sent_upstream(origin_factory, gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}"))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n4\r\nbody\r\n0\r\nx-checksum: 7\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"body")
    assert origin.seen.trailers == [[(b"x-checksum", b"7")]]


# -- trailers --------------------------------------------------------------------------
def raw_get(port: int, path: str, extra: str = "") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_trailers_reach_a_client_that_asked_for_them(origin_factory, gateway_factory) -> None:
    origin = origin_factory()
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{origin.port}"))
    with_te = raw_get(gw.port, "/trailers", "TE: trailers\r\n")
    head, _, body = with_te.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body.endswith(b"0\r\ngrpc-status: 0\r\nx-sum: 42\r\n\r\n")
    assert origin.seen.requests[-1][b"te"] == b"trailers"
    plain = raw_get(gw.port, "/trailers")
    head, _, body = plain.partition(b"\r\n\r\n")
    assert b"content-length: 13" in head.lower() and body == b"with trailers"
    assert b"te" not in origin.seen.requests[-1]


# -- TLS and ALPN ------------------------------------------------------------------------
def test_h2_over_tls_with_alpn(origin_factory, gateway_factory, leaf) -> None:
    origin = origin_factory(tls=tls_server_context(leaf, ["h2"]))
    gw = gateway_factory(proxy_config(f"https://127.0.0.1:{origin.port}", service={
        "protocol": "h2", "proxyOptions": {"secure": False}}))
    r = httpx.post(gw.url + "/echo", content=b"over tls", timeout=10)
    assert (r.status_code, r.content) == (200, b"over tls")
    assert origin.seen.requests[-1][b":scheme"] == b"https"


def test_h2_required_but_not_offered_is_502(nginx_factory, gateway_factory, leaf) -> None:
    nginx = nginx_factory("ssl", leaf)
    gw = gateway_factory(proxy_config(f"https://127.0.0.1:{nginx.port}", service={
        "protocol": "h2", "proxyOptions": {"secure": False}}))
    assert get(gw, "/").status_code == 502
    assert nginx.requests() == []


@pytest.mark.parametrize(("listen", "protocol"), [("ssl http2", "HTTP/2.0"),
                                                  ("ssl", "HTTP/1.1")])
def test_auto_follows_alpn(nginx_factory, gateway_factory, leaf, listen, protocol) -> None:
    nginx = nginx_factory(listen, leaf)
    gw = gateway_factory(proxy_config(f"https://127.0.0.1:{nginx.port}", service={
        "protocol": "auto", "proxyOptions": {"secure": False}}))
    for _ in range(3):
        r = get(gw, "/x")
        assert (r.status_code, r.text) == (200, "nginx says hi\n")
    seen = wait_until(lambda: len(nginx.requests()) >= 3 and nginx.requests())
    assert {proto for _, proto, _ in seen} == {protocol}
    assert len({conn for conn, _, _ in seen}) == 1


def test_h2c_against_nginx(nginx_factory, gateway_factory) -> None:
    nginx = nginx_factory("http2")
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{nginx.port}"))
    assert get(gw, "/").text == "nginx says hi\n"
    assert wait_until(nginx.requests)[0][1] == "HTTP/2.0"


# -- config ------------------------------------------------------------------------------
@pytest.mark.parametrize(("service", "message"), [
    ({"url": "http://127.0.0.1:1", "protocol": "h2"}, "expects https:// urls"),
    ({"url": "https://127.0.0.1:1", "protocol": "h2c"}, "expects http:// urls"),
    ({"url": "http://127.0.0.1:1", "protocol": "h3"}, "protocol"),
    ({"url": "http://127.0.0.1:1", "http2": {"maxConcurrentStream": 5}},
     "maxConcurrentStream"),
    ({"url": "http://127.0.0.1:1", "http2": {"initialStreamWindowSize": 10}},
     "initialStreamWindowSize"),
])
def test_invalid_protocol_settings_are_refused(service: dict[str, Any], message: str) -> None:
    from meshgate.config.model import GatewayConfig
    with pytest.raises(Exception, match=message):
        GatewayConfig.model_validate({"serviceEndpoints": {"s": service}})


# -- health checks -----------------------------------------------------------------------
def test_health_check_over_h2c(origin_factory, gateway_factory) -> None:
    good, bad = origin_factory(), origin_factory()
    check = {"type": "http", "path": "/health", "interval": 200, "timeout": 500}
    gw = gateway_factory(h2_config(f"http://127.0.0.1:{good.port}", healthCheck=check))
    wait_until(lambda: get(gw, "/plain").status_code == 200)
    health = [h for h in good.seen.requests if h[b":path"] == b"/health"]
    assert health and health[0][b"user-agent"] == b"meshgate-health"
    failing = {**check, "path": "/status/500"}
    down = gateway_factory(h2_config(f"http://127.0.0.1:{bad.port}", healthCheck=failing))
    def healthy() -> Any:
        return httpx.get(down.admin_url + "/clusters", timeout=5).json()

    wait_until(lambda: b"/status/500" in bad.seen.paths)
    assert "'healthy': False" in str(healthy()) and "'healthy': True" not in str(healthy())


# -- the resilience layer on HTTP/2 clusters ----------------------------------------------
def test_split_and_mirror_mix_http1_and_h2c_clusters(origin_factory, backend_factory,
                                                     gateway_factory) -> None:
    v2, shadow = origin_factory(), origin_factory()
    v1 = backend_factory("v1")
    # v2 takes only what its match sends it (weight 0): the draw never picks it.
    split = [{"serviceEndpoint": "v1", "weight": 1},
             {"serviceEndpoint": "v2", "weight": 0, "match": {"headers": {"x-v": "2"}}}]
    gw = gateway_factory({
        "apiEndpoints": {"api": {"host": "*", "paths": ["/*"]}},
        "serviceEndpoints": {
            "v1": {"url": v1.url},
            "v2": {"url": f"http://127.0.0.1:{v2.port}", "protocol": "h2c",
                   "loadBalancer": {"type": "least-request"}},
            "shadow": {"url": f"http://127.0.0.1:{shadow.port}", "protocol": "h2c"}},
        "policies": ["proxy"],
        "pipelines": {"main": {"apiEndpoints": ["api"], "policies": [{"proxy": [{"action": {
            "split": split, "mirror": {"serviceEndpoint": "shadow"}}}]}]}},
    })
    assert get(gw, "/name").text == "v1"
    r = httpx.post(gw.url + "/echo", content=b"to v2", headers={"x-v": "2"}, timeout=10)
    assert (r.status_code, r.content) == (200, b"to v2")
    wait_until(lambda: shadow.seen.paths == [b"/name", b"/echo"])
    assert v2.seen.paths == [b"/echo"]
