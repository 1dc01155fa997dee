"""A regression corpus of public request-smuggling vectors, against a real gateway.

Each vector is raw bytes a client sends on one connection (a probe request
follows it, see ``tests/support/recorder_client.py``). The gateway proxies
``/admin/*`` behind key-auth and every other path without authentication to an
origin that parses with h11 and records every request. For every vector the
same invariant holds: the origin parsed exactly the requests meshgate
admitted and answered, with the bodies and paths the client sent (as a
strict parser reads them); nothing reached ``/admin``; the client got proper
responses, a refusal being the last one on a closed connection. Each vector
is also fed to the codec in-process (``tests/fuzz/inprocess.py``), whole and
byte by byte.

The vectors come from the public literature on desynchronisation (CL.TE,
TE.CL, TE.TE obfuscations, Connection-nominated framing, obs-fold, bare CR
and LF, chunk-extension and chunk-size tricks), plus the path tricks that
walk from ``/public`` to ``/admin``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.fuzz.inprocess import check, run
from tests.support.recorder_client import Answers, Response, Rig, describe, violations

SMUGGLED = b"GET /admin/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
PARTIAL = b"GET /admin/report HTTP/1.1\r\nX-Ignore: "


def req(head: bytes, body: bytes = b"", line: bytes = b"POST /public/x HTTP/1.1") -> bytes:
    """A request: ``line``, Host, the extra header lines in ``head`` (CRLF-ended), body."""
    return line + b"\r\nHost: gw\r\n" + head + b"\r\n" + body


def cl(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n" % len(body)


def te_with_cl(te_line: bytes) -> bytes:
    """CL.TE shape: a front end reading chunked stops at the last chunk; one reading
    Content-Length (or another TE) sees the smuggled request as the next one."""
    body = b"0\r\n\r\n" + SMUGGLED
    return req(te_line + cl(body), body)


def te_only(te_line: bytes) -> bytes:
    """An obfuscated TE alone: a reader that ignores it sees no body, the rest is a request."""
    return req(te_line, b"0\r\n\r\n" + SMUGGLED)


CHUNKED = b"Transfer-Encoding: chunked\r\n"
TE_CL_BODY = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)

VECTORS: dict[str, bytes] = {
    # -- CL.TE / TE.CL ------------------------------------------------------------------
    "cl-te": te_with_cl(CHUNKED),
    "te-cl": req(CHUNKED + b"Content-Length: 4\r\n", TE_CL_BODY),
    "cl-te-zero": req(b"Content-Length: 0\r\n" + CHUNKED, TE_CL_BODY),
    # -- TE.TE: obfuscated Transfer-Encoding -----------------------------------------------
    "te-xchunked": te_with_cl(b"Transfer-Encoding: xchunked\r\n"),
    "te-xchunked-alone": te_only(b"Transfer-Encoding: xchunked\r\n"),
    "te-leading-space-value": te_with_cl(b"Transfer-Encoding:  chunked\r\n"),
    "te-line-folded": te_with_cl(b"X-Pad: a\r\n Transfer-Encoding: chunked\r\n"),
    "te-value-folded": te_with_cl(b"Transfer-Encoding:\r\n chunked\r\n"),
    "te-chunked-identity": te_with_cl(b"Transfer-Encoding: chunked, identity\r\n"),
    "te-identity-chunked": te_with_cl(b"Transfer-Encoding: identity, chunked\r\n"),
    "te-chunked-not-last": te_only(b"Transfer-Encoding: chunked, gzip\r\n"),
    "te-tab": te_with_cl(b"Transfer-Encoding:\tchunked\r\n"),
    "te-duplicate": te_with_cl(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"),
    "te-duplicate-alone": te_only(b"Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n"),
    "te-space-before-colon": te_with_cl(b"Transfer-Encoding : chunked\r\n"),
    "te-upper-case": te_with_cl(b"TRANSFER-ENCODING: CHUNKED\r\n"),
    "te-quoted": te_with_cl(b'Transfer-Encoding: "chunked"\r\n'),
    "te-vertical-tab": te_with_cl(b"Transfer-Encoding:\x0bchunked\r\n"),
    "te-http10": req(CHUNKED, b"0\r\n\r\n" + SMUGGLED, line=b"POST /public/x HTTP/1.0"),
    # -- Content-Length duplicates and oddities ---------------------------------------------
    "cl-cl-differing": req(b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(SMUGGLED),
                           SMUGGLED),
    "cl-cl-same": req(cl(SMUGGLED) + cl(SMUGGLED), SMUGGLED),
    "cl-list": req(b"Content-Length: %d, %d\r\n" % (len(SMUGGLED), len(SMUGGLED)), SMUGGLED),
    "cl-plus": req(b"Content-Length: +%d\r\n" % len(SMUGGLED), SMUGGLED),
    "cl-hex": req(b"Content-Length: 0x%x\r\n" % len(SMUGGLED), SMUGGLED),
    "cl-negative": req(b"Content-Length: -1\r\n", SMUGGLED),
    "cl-inner-space": req(b"Content-Length: 1 0\r\n", SMUGGLED),
    "cl-space-before-colon": req(b"Content-Length : %d\r\n" % len(SMUGGLED), SMUGGLED),
    "cl-huge": req(b"Content-Length: 99999999999999999999999\r\n", SMUGGLED),
    "get-with-body": req(cl(SMUGGLED), SMUGGLED, line=b"GET /public/x HTTP/1.1"),
    # -- Connection-nominated framing ---------------------------------------------------------
    "connection-content-length": req(b"Connection: content-length\r\n" + cl(SMUGGLED), SMUGGLED),
    "connection-content-length-partial": req(
        b"Connection: Content-Length, close\r\n" + cl(PARTIAL), PARTIAL),
    "connection-transfer-encoding": req(b"Connection: transfer-encoding\r\n" + CHUNKED,
                                        TE_CL_BODY),
    "connection-host": req(b"Connection: host\r\n" + cl(SMUGGLED), SMUGGLED),
    # -- line endings --------------------------------------------------------------------------
    "bare-lf": (b"POST /public/x HTTP/1.1\nHost: gw\nContent-Length: %d\n\n%s"
                % (len(SMUGGLED), SMUGGLED)),
    "bare-lf-te": req(b"Transfer-Encoding: chunked\n" + cl(b"0\r\n\r\n" + SMUGGLED),
                      b"0\r\n\r\n" + SMUGGLED),
    "bare-cr": req(b"X-Pad: a\rTransfer-Encoding: chunked\r\n" + cl(b"0\r\n\r\n" + SMUGGLED),
                   b"0\r\n\r\n" + SMUGGLED),
    "bare-cr-request-line": b"GET /public/x\rHTTP/1.1\r\nHost: gw\r\n\r\n",
    # -- chunk-extension and chunk-size tricks --------------------------------------------------
    "chunk-ext-quoted-crlf": req(CHUNKED, b'5;a="x\r\n0\r\n\r\n' + SMUGGLED + b'"\r\nhello\r\n'
                                 b"0\r\n\r\n"),
    "chunk-ext-long": req(CHUNKED, b"5;" + b"a" * 20000 + b"\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-bare-lf": req(CHUNKED, b"5;\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-ext-bare-lf-size": req(CHUNKED, b"5\nhello\r\n0\r\n\r\n"),
    "chunk-size-overflow": req(CHUNKED, b"FFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-size-leading-zeros": req(CHUNKED, b"0000000005\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-0x": req(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-size-space": req(CHUNKED, b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunk-size-negative": req(CHUNKED, b"-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-data-too-long": req(CHUNKED, b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-last-without-crlf": req(CHUNKED, b"5\r\nhello\r\n0\r\n" + SMUGGLED),
    # -- header oddities -----------------------------------------------------------------------
    "nul-in-value": req(b"X-Pad: a\x00b\r\n" + cl(SMUGGLED), SMUGGLED),
    "nul-in-name": req(b"X-P\x00ad: a\r\n" + cl(SMUGGLED), SMUGGLED),
    "space-before-colon-host": b"GET /public/x HTTP/1.1\r\nHost : gw\r\n\r\n",
    "header-without-colon": req(b"X-Pad\r\n" + cl(SMUGGLED), SMUGGLED),
    "header-count-flood": req(b"X-Pad: a\r\n" * 6000, line=b"GET /public/x HTTP/1.1"),
    "header-count-over-limit": req(b"X-Pad: a\r\n" * 101, line=b"GET /public/x HTTP/1.1"),
    "host-duplicate": b"GET /public/x HTTP/1.1\r\nHost: gw\r\nHost: evil\r\n\r\n",
    "host-missing": b"GET /public/x HTTP/1.1\r\n\r\n",
    "host-duplicate-first-empty": b"GET /public/x HTTP/1.1\r\nHost: \r\nHost: gw\r\n\r\n",
    "host-empty": b"GET /public/x HTTP/1.1\r\nHost: \r\n\r\n",
    "gateway-header-from-client": req(b"eg-consumer-id: admin\r\n",
                                      line=b"GET /public/x HTTP/1.1"),
    # -- request line and target ---------------------------------------------------------------
    "http09": b"GET /public/x\r\n\r\n",
    "http09-admin": b"GET /admin/x\r\n",
    "fragment": b"GET /public/x#frag HTTP/1.1\r\nHost: gw\r\n\r\n",
    "absolute-form-other-host": b"GET http://evil.example/public/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "absolute-form-admin": b"GET http://gw/admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "absolute-form-dots": b"GET http://gw/public/../admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "dots": b"GET /public/../admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "dots-encoded": b"GET /public/%2e%2e/admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "dots-encoded-upper": b"GET /public/%2E%2E/admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "dots-encoded-slash": b"GET /public/..%2fadmin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "dot-then-dots": b"GET /public/./../admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "double-slash-dots": b"GET /public//../admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "dots-twice": b"GET /public/x/../../admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "backslash-dots": b"GET /public/..\\admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "encoded-backslash-dots": b"GET /public/..%5cadmin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "connect": b"CONNECT gw:80 HTTP/1.1\r\nHost: gw:80\r\n\r\n",
    "absolute-form-no-host": b"GET http://gw/public/x HTTP/1.1\r\n\r\n",
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n",
    "asterisk-prefix-dots": b"GET */../admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "asterisk-prefix-bad-escape": b"GET */p%zzublic/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "relative-target-dots": b"GET public/../admin/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    # -- Upgrade and Expect --------------------------------------------------------------------
    "upgrade-websocket-body": req(b"Connection: Upgrade\r\nUpgrade: websocket\r\n" + cl(SMUGGLED),
                                  SMUGGLED),
    "upgrade-h2c-body": req(b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n" + cl(SMUGGLED), SMUGGLED),
    "upgrade-chunked-body": req(b"Connection: Upgrade\r\nUpgrade: websocket\r\n" + CHUNKED,
                                TE_CL_BODY),
    "expect-continue-body-sent": req(b"Expect: 100-continue\r\n" + cl(SMUGGLED), SMUGGLED),
    "expect-continue-no-body": req(b"Expect: 100-continue\r\nContent-Length: 0\r\n",
                                   line=b"GET /public/x HTTP/1.1"),
    "expect-unknown": req(b"Expect: x-unknown\r\n" + cl(SMUGGLED), SMUGGLED),
    # -- trailers ------------------------------------------------------------------------------
    "trailer-host": req(CHUNKED, b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n"),
    "trailer-framing": req(CHUNKED, b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n"),
    "trailer-smuggled-request": req(CHUNKED, b"0\r\n" + SMUGGLED),
    # -- pipelining and connection ends ---------------------------------------------------------
    "pipelined-after-close": (req(b"Connection: close\r\n", line=b"GET /public/x HTTP/1.1")
                              + SMUGGLED),
    "pipelined-after-http10": b"GET /public/x HTTP/1.0\r\nHost: gw\r\n\r\n" + SMUGGLED,
    "pipelined-three": (req(b"", line=b"GET /public/a HTTP/1.1") + req(cl(b"abc"), b"abc")
                        + req(b"", line=b"GET /public/c HTTP/1.1")),
    "pipelined-admin-between": (req(b"", line=b"GET /public/a HTTP/1.1") + SMUGGLED
                                + req(b"", line=b"GET /public/c HTTP/1.1")),
    # a proxied request, then (in the same read) bytes that are refused: the first is
    # still answered, then the refusal
    "proxied-then-junk": req(b"", line=b"GET /public/a HTTP/1.1") + b"\x00",
    "proxied-then-bad-line": req(b"", line=b"GET /public/a HTTP/1.1") + b"XYZ\r\n\r\n",
    "proxied-then-encoded-slash": (req(b"", line=b"GET /public/a HTTP/1.1")
                                   + req(b"", line=b"GET /public/%2F HTTP/1.1")),
    "proxied-post-then-refused": req(cl(b"abc"), b"abc") + req(b"", line=b"GET /x#f HTTP/1.1"),
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("smuggling"))
    yield r
    r.close()


@pytest.mark.parametrize("vector", list(VECTORS.values()), ids=list(VECTORS))
def test_vector(rig: Rig, vector: bytes) -> None:
    bad, answers, log = rig.check(vector)
    assert not bad, "\n".join(bad) + "\n" + describe(answers, log)


@pytest.mark.parametrize("vector", list(VECTORS.values()), ids=list(VECTORS))
def test_vector_in_process(vector: bytes) -> None:
    """The codec alone (``tests/fuzz/inprocess.py``), the bytes in one read, then one by one."""
    loop = asyncio.new_event_loop()
    try:
        for reads in ([vector], [vector[i:i + 1] for i in range(len(vector))]):
            bad = check(vector, run(reads, loop))
            assert not bad, f"{len(reads)} read(s):\n" + "\n".join(bad)
    finally:
        loop.close()


def test_the_check_catches_a_smuggled_request() -> None:
    """The check itself: a request the origin parsed but no client was answered for,
    and a body that differs from what was sent, are violations."""
    sent = req(cl(b"abc"), b"abc")
    log = {"requests": [
        {"seq": 1, "method": "POST", "target": "/public/x", "body_len": 2, "complete": True,
         "body_sha256": "00"},
        {"seq": 2, "method": "GET", "target": "/admin/smuggled", "body_len": 0,
         "complete": True, "body_sha256": ""}], "errors": [], "connections": []}
    answers = Answers(responses=[Response(200, [], b"request 1 POST /public/x")])
    bad = violations(sent, answers, log, {})
    assert any("no client got its answer" in b for b in bad)
    assert any("without credentials" in b for b in bad)
    assert any("the origin parsed POST /public/x with a body of 2 bytes" in b for b in bad)
