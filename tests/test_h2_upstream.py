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
