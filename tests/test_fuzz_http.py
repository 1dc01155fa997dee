"""The differential property over generated and mutated requests, through a real gateway.

Hypothesis writes conversations (one to three requests on a connection):
methods, paths with dot segments and percent-escapes under ``/public`` and
``/admin``, ordinary and framing headers (Content-Length, chunked with
extensions and trailers, Connection nominations, Expect, Upgrade), bodies
that hold requests, then perhaps mutates the bytes (a byte inserted or
deleted, CRLF made LF, a line doubled). Whatever it writes, the invariant of
``tests/support/recorder_client.py`` holds: the origin (h11) parsed exactly
the requests meshgate admitted, with the bodies and paths a strict parser
reads in the client's bytes; nothing reached ``/admin``; every client got
proper responses and a refusal closed its connection.

The same conversations also go through the codec in-process
(``tests/fuzz/inprocess.py``), cut into reads of several sizes: no sockets, so
many more of them per second.

``make test`` runs a fast slice (see ``tests/fuzz``); ``make fuzz`` the long
profile.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz import profile
from tests.fuzz.inprocess import check, run
from tests.support.recorder_client import Rig, describe

SMUGGLED = b"GET /admin/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"

METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
SEGMENTS = st.sampled_from([b"a", b"b", b"x1", b".", b"..", b"%2e", b"%2E%2e", b".%2E", b"%41",
                            b"%7e", b"~", b"", b"admin", b"public", b"%20", b";x", b"%2F",
                            b"%5C", b"..%2f", b"ADMIN", b"%61dmin"])
PREFIXES = st.sampled_from([b"/public/", b"/admin/", b"/", b"/PUBLIC/", b"/public"])
TOKENS = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=10)
VALUES = st.text(string.ascii_letters + string.digits + " -_.,;=/\"", max_size=24)
FRAMING_HEADERS = st.sampled_from([
    (b"Connection", b"content-length"), (b"Connection", b"transfer-encoding"),
    (b"Connection", b"close"), (b"Connection", b"keep-alive"), (b"Connection", b"host"),
    (b"Content-Length", b"5"), (b"Content-Length", b"0"), (b"Transfer-Encoding", b"chunked"),
    (b"Transfer-Encoding", b"xchunked"), (b"Transfer-Encoding", b"chunked, identity"),
    (b"Expect", b"100-continue"), (b"Upgrade", b"websocket"), (b"Host", b"evil"),
    (b"eg-consumer-id", b"admin"), (b"X-Meshgate-Route", b"admin"), (b"TE", b"trailers"),
    (b"Keep-Alive", b"timeout=5"), (b"Proxy-Connection", b"keep-alive")])
BODIES = st.one_of(st.binary(max_size=200), st.just(SMUGGLED), st.just(b"0\r\n\r\n" + SMUGGLED),
                   st.builds(lambda a, b: a + SMUGGLED + b, st.binary(max_size=20),
                             st.binary(max_size=20)))
INTERESTING = b"\r\n\t \x00:;,\"\x0b\x7f\x80%/."


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` as chunks, perhaps with extensions and trailers."""
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = b""
    for piece in pieces:
        if not piece:
            continue
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b';a="q;r"', b"; a = b"]))
        size = b"%x" % len(piece)
        if draw(st.booleans()):
            size = size.upper()
        out += size + ext + b"\r\n" + piece + b"\r\n"
    trailers = draw(st.lists(st.one_of(
        st.tuples(TOKENS.map(str.encode), VALUES.map(str.encode)),
        st.sampled_from([(b"Host", b"evil"), (b"Content-Length", b"50"),
                         (b"Transfer-Encoding", b"chunked"), (b"eg-consumer-id", b"admin")])),
        max_size=2))
    return out + b"0\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in trailers) + b"\r\n"


@st.composite
def request(draw: st.DrawFn) -> bytes:
    method = draw(METHODS)
    path = draw(PREFIXES) + b"/".join(draw(st.lists(SEGMENTS, min_size=1, max_size=5)))
    if draw(st.booleans()):
        path += b"?" + draw(VALUES.map(lambda v: v.replace(" ", "+").encode()))
    headers = [(b"Host", b"gw")]
    headers += draw(st.lists(st.one_of(
        st.tuples(TOKENS.map(str.encode), VALUES.map(str.encode)), FRAMING_HEADERS), max_size=4))
    body = draw(BODIES)
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked(body))
    elif draw(st.booleans()):
        body = b""                      # usually no stray bytes after a bodiless request
    headers = draw(st.permutations(headers))
    head = method + b" " + path + b" HTTP/1.1\r\n"
    head += b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return head + b"\r\n" + body


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with up to three small edits, the kind that turn framing ambiguous."""
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["insert", "delete", "lf", "double"]))
        if op == "insert":
            data = data[:pos] + bytes([draw(st.sampled_from(INTERESTING))]) + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + 1:]
        elif op == "lf":
            at = data.find(b"\r\n", pos)
            if at >= 0:
                data = data[:at] + data[at + 1:]
        else:
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos) + 1 or len(data)
            data = data[:end] + data[start:end] + data[end:]
    return data


@st.composite
def conversation(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(request(), min_size=1, max_size=3)))
    return draw(mutated(data)) if draw(st.booleans()) else data


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("fuzz-http"))
    yield r
    r.close()


@profile(fast_examples=50, long_examples=5000)
@given(data=conversation())
@example(data=b"POST /public/x HTTP/1.1\r\nHost: gw\r\nConnection: content-length\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED))
@example(data=b"GET /public/%2e%2e/admin/x HTTP/1.1\r\nHost: gw\r\n\r\n")
def test_the_backend_parses_exactly_what_meshgate_admitted(rig: Rig, data: bytes) -> None:
    bad, answers, log = rig.check(data)
    assert not bad, f"sent {data!r}\n" + "\n".join(bad) + "\n" + describe(answers, log)


@profile(fast_examples=200, long_examples=50000)
@given(data=conversation(), read_size=st.sampled_from([0, 1, 2, 5, 64]))
def test_the_codec_in_process_agrees_with_a_strict_parser(data: bytes, read_size: int) -> None:
    """The same conversations through the codec alone (``tests/fuzz/inprocess.py``), with
    the bytes cut into reads of ``read_size`` (0: one read)."""
    reads = [data] if not read_size else [data[i:i + read_size]
                                          for i in range(0, len(data), read_size)]
    loop = asyncio.new_event_loop()
    try:
        bad = check(data, run(reads, loop))
    finally:
        loop.close()
    assert not bad, f"sent {data!r}\n" + "\n".join(bad)
