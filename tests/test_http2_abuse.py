"""HTTP/2 defences, each against a real gateway with hand-made frames.

Every test ends in the answer RFC 9113 (and what nginx and Envoy learned
from CVE-2023-44487 and CVE-2024-27316) asks for -- GOAWAY
ENHANCE_YOUR_CALM, REFUSED_STREAM, a reset -- and checks the cost stayed
bounded: requests the backend saw, memory the worker holds.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import hpack
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.conftest import Backend
from tests.support.gateway import Gateway, proxy_config
from tests.support.h2client import H2Client
from tests.test_request_integrity import StrictBackend, gateway_config

CALM = ErrorCodes.ENHANCE_YOUR_CALM
MIB = 1 << 20


@pytest.fixture
def origin() -> Any:
    b = StrictBackend()
    yield b
    b.close()


def _gateway(factory: Any, upstream: str, **http2: Any) -> Gateway:
    config = proxy_config(upstream)
    config["server"] = {"http2": http2} if http2 else {}
    return factory(config)


def _ended_with(c: H2Client, code: int, timeout: float = 5.0) -> None:
    """The server sent GOAWAY with ``code`` and closed."""
    with contextlib.suppress(ConnectionError, OSError):
        c.until(lambda: c.closed, timeout)
    goaway = c.server_goaway()
    assert goaway is not None, "no GOAWAY"
    assert goaway.error_code == code


def _send(c: H2Client, data: bytes) -> None:
    with contextlib.suppress(OSError):    # the server closed first: what the test wants
        c.send_raw(data)


def _request_block(encoder: hpack.Encoder, path: bytes = b"/echo") -> bytes:
    return bytes(encoder.encode([(b":method", b"GET"), (b":path", path), (b":scheme", b"http"),
                                 (b":authority", b"gw")]))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- CVE-2023-44487: rapid reset ------------------------------------------------------
def test_rapid_reset_gets_goaway_and_spares_the_backend(origin: StrictBackend,
                                                        gateway_factory: Any) -> None:
    config = gateway_config(origin.url)
    config["server"] = {"http2": {"maxResetsPerSecond": 50}}
    gw = gateway_factory(config)
    with H2Client(gw.port, answer=False) as c:
        encoder = hpack.Encoder()
        for sid in range(1, 2001, 2):
            headers = HeadersFrame(sid, _request_block(encoder, b"/public/flood"))
            headers.flags.add("END_HEADERS")
            headers.flags.add("END_STREAM")
            reset = RstStreamFrame(sid)
            reset.error_code = ErrorCodes.CANCEL
            _send(c, headers.serialize() + reset.serialize())
        _ended_with(c, CALM)
    time.sleep(0.3)                    # let any request the gateway did send arrive
    assert len(origin.requests) <= 50


# -- CVE-2024-27316: CONTINUATION flood -----------------------------------------------
def test_continuation_flood_is_cut_at_the_header_list_limit(backend: Backend,
                                                            gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, backend.url)
    with H2Client(gw.port, answer=False) as c:
        headers = HeadersFrame(1, _request_block(hpack.Encoder()))   # no END_HEADERS
        _send(c, headers.serialize())
        sent = 0
        for _ in range(200):           # 3 MiB if nobody stopped it
            _send(c, ContinuationFrame(1, b"\x00" * 16384).serialize())
            sent += 1
            if not c.receive(0.001) or c.server_goaway() is not None:
                break
        _ended_with(c, CALM)
    assert sent < 20                   # cut near maxHeaderListSize (64 KiB), not at h2's 64 frames


def test_header_block_that_never_ends_times_out(backend: Backend,
                                                gateway_factory: Any) -> None:
    config = proxy_config(backend.url)
    config["server"] = {"headersTimeout": 500}
    gw = gateway_factory(config)
    with H2Client(gw.port, answer=False) as c:
        _send(c, HeadersFrame(1, _request_block(hpack.Encoder())).serialize())
        _ended_with(c, CALM)


# -- HPACK bomb, oversized header lists --------------------------------------------
def test_hpack_bomb_stops_at_max_header_list_size(backend: Backend,
                                                  gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, backend.url)
    encoder = hpack.Encoder()
    block = bytes(encoder.encode([(b":method", b"GET"), (b":path", b"/echo"),
                                  (b":scheme", b"http"), (b":authority", b"gw"),
                                  (b"x-bomb", b"a" * 4000)]))
    block += b"\xbe" * 2000            # 2000 references to it: 8 MB decoded, 2 KB sent
    with H2Client(gw.port, answer=False) as c:
        frame = HeadersFrame(1, block)
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        _send(c, frame.serialize())
        _ended_with(c, CALM)
    with H2Client(gw.port) as c:       # the worker is fine
        assert c.get("/echo").status == 200


def test_oversized_header_list_is_refused(backend: Backend, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, backend.url, maxHeaderListSize=8192)
    with H2Client(gw.port) as c:
        c.request("/echo", headers=[("x-big", "v" * 10000)])
        _ended_with(c, CALM)


# -- SETTINGS and PING floods -------------------------------------------------------
@pytest.mark.parametrize("frame", [SettingsFrame(0), PingFrame(0, b"12345678")],
                         ids=["settings", "ping"])
def test_frames_to_acknowledge_are_capped(backend: Backend, gateway_factory: Any,
                                          frame: Any) -> None:
    gw = _gateway(gateway_factory, backend.url, maxControlFramesPerSecond=50)
    with H2Client(gw.port, answer=False) as c:
        _send(c, frame.serialize() * 1000)
        _ended_with(c, CALM)


def test_a_few_pings_are_answered(backend: Backend, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, backend.url, maxControlFramesPerSecond=50)
    with H2Client(gw.port) as c:
        for i in range(10):
            c.conn.ping(b"%08d" % i)
        c.flush()
        c.until(lambda: sum(type(e).__name__ == "PingAckReceived" for e in c.events) == 10)
        assert c.get("/echo").status == 200


# -- too many streams ------------------------------------------------------------------
def test_streams_beyond_the_limit_are_refused(backend: Backend,
                                              gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, backend.url, maxConcurrentStreams=4)
    with H2Client(gw.port) as c:      # sent before our SETTINGS are read: nothing holds it back
        sids = [c.request("/slow/500") for _ in range(6)]
        results = [c.response(sid) for sid in sids]
    assert [r.status for r in results[:4]] == [200] * 4
    assert [r.reset for r in results[4:]] == [ErrorCodes.REFUSED_STREAM] * 2


# -- a peer that does not read, or gives no window -----------------------------------------
def test_a_window_never_opened_holds_little_and_resets(backend: Backend,
                                                       gateway_factory: Any) -> None:
    config = proxy_config(backend.url)
    config["server"] = {"bodyTimeout": 1000}
    gw = gateway_factory(config)
    worker = gw.pids()[1]
    before = _rss_kib(worker)
    with H2Client(gw.port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as c:
        sid = c.request(f"/bytes/{200 * MIB}")
        r = c.response(sid, 6)
        assert r.status == 200 and not r.body
        assert r.reset == ErrorCodes.CANCEL
    assert _rss_kib(worker) - before < 30 * 1024


def test_a_client_that_stops_reading_pauses_the_upstream(backend: Backend,
                                                         gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, backend.url)
    worker = gw.pids()[1]
    before = _rss_kib(worker)
    size = 40 * MIB
    window = 2**31 - 1
    with H2Client(gw.port, settings={SettingCodes.INITIAL_WINDOW_SIZE: window},
                  window=window) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sid = c.request(f"/bytes/{size}")
        time.sleep(1.5)                # not reading: the gateway must stop, not buffer
        assert _rss_kib(worker) - before < 30 * 1024
        stream = c.streams[sid]
        c.until(lambda: len(stream.body) == size or stream.reset is not None, 30)
        assert len(stream.body) == size


def test_garbage_after_the_preface_ends_only_that_connection(backend: Backend,
                                                            gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, backend.url)
    with H2Client(gw.port, answer=False) as c:
        _send(c, b"\xff" * 64)        # a frame of 16 MiB announced: not waited for
        _ended_with(c, ErrorCodes.FRAME_SIZE_ERROR)
    with H2Client(gw.port) as c:
        assert c.get("/echo").status == 200


# -- frames that carry nothing (CVE-2019-9518, CVE-2019-9513) ------------------------
@pytest.mark.parametrize("flood", ["data", "priority"])
def test_frames_that_carry_nothing_are_cut(backend: Backend, gateway_factory: Any,
                                           flood: str) -> None:
    gw = _gateway(gateway_factory, backend.url)
    with H2Client(gw.port, answer=False) as c:
        headers = HeadersFrame(1, _request_block(hpack.Encoder(), b"/slow/2000"))
        headers.flags.add("END_HEADERS")
        frame = DataFrame(1, b"") if flood == "data" else PriorityFrame(1, depends_on=0)
        _send(c, headers.serialize() + frame.serialize() * 1000)
        _ended_with(c, CALM)
    with H2Client(gw.port) as c:       # the worker is fine
        assert c.get("/echo").status == 200
