"""End to end: 1 GiB bodies stream through a worker whose memory stays flat.

The test produces and consumes the data block by block (nothing holds the
whole body), while a thread samples the worker's VmRSS from /proc. A proxy
that buffered either body, or ignored backpressure, would grow by hundreds
of megabytes; the limit is the resident size before the transfer + 40 MB.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import zlib
from collections.abc import Iterator

import pytest

from tests.conftest import Backend
from tests.support.gateway import Gateway, proxy_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GIB = 1 << 30
MIB = 1 << 20
SLACK = 40 * MIB


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler(threading.Thread):
    """The largest VmRSS of ``pid`` seen while running."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_bytes(pid)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int]]:
    backend = Backend("stream")
    gw = Gateway(tmp_path_factory.mktemp("stream-gw"), proxy_config(backend.url))
    try:
        pids = gw.pids()
        assert len(pids) == 2, f"expected the master and one worker: {pids}"
        yield gw, pids[1]
    finally:
        gw.stop()
        backend.stop()


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and whatever body bytes came with the head."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"connection closed before the response head: {buf!r}"
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def warm_up(gw: Gateway) -> None:
    """One small upload and download, so pools and buffers exist before the baseline."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /bytes/100000 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, rest = read_head(sock)
        assert status == 200
        body = rest
        while len(body) < int(headers["content-length"]):
            body += sock.recv(65536)
        assert json.loads(body[:int(headers["content-length"])])["length"] == 3


def test_one_gib_upload_streams_with_flat_rss(setup: tuple[Gateway, int]) -> None:
    gw, worker = setup
    warm_up(gw)
    base = rss_bytes(worker)
    block = os.urandom(MIB)
    ring = memoryview(block * 2)
    crc = 0
    with RssSampler(worker) as sampler, \
            socket.create_connection(("127.0.0.1", gw.port), timeout=60) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GIB)
        for i in range(GIB // MIB):
            piece = ring[(i * 7919) % MIB:][:MIB]      # every MiB differs from the last
            sock.sendall(piece)
            crc = zlib.crc32(piece, crc)
        status, headers, rest = read_head(sock)
        while len(rest) < int(headers["content-length"]):
            rest += sock.recv(65536)
    assert status == 200
    assert json.loads(rest) == {"length": GIB, "crc": crc}
    grown = sampler.peak - base
    assert grown < SLACK, f"worker RSS grew by {grown / MIB:.1f} MiB during a 1 GiB upload"


def test_one_gib_download_streams_with_flat_rss(setup: tuple[Gateway, int]) -> None:
    gw, worker = setup
    warm_up(gw)
    base = rss_bytes(worker)
    buf = bytearray(MIB)
    view = memoryview(buf)
    received = 0
    paused = False
    with RssSampler(worker) as sampler, \
            socket.create_connection(("127.0.0.1", gw.port), timeout=60) as sock:
        sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % GIB)
        status, headers, rest = read_head(sock)
        assert status == 200
        assert headers.get("content-length") == str(GIB)
        assert rest.count(b"x") == len(rest)
        received = len(rest)
        while received < GIB:
            if not paused and received >= GIB // 4:
                # Stop reading for a while: only backpressure keeps the worker from
                # taking in everything the backend can send meanwhile.
                paused = True
                threading.Event().wait(1.0)
            n = sock.recv_into(view, min(MIB, GIB - received))
            assert n, f"connection closed after {received} bytes"
            assert buf.count(b"x", 0, n) == n
            received += n
    assert received == GIB
    grown = sampler.peak - base
    assert grown < SLACK, f"worker RSS grew by {grown / MIB:.1f} MiB during a 1 GiB download"
