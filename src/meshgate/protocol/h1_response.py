"""HTTP/1.1 response framing for the downstream codec: status line, head, chunks.

Theory of operation
-------------------
``response_head`` turns a status and a header block into the bytes of a
response head, deciding the framing as RFC 9112 6 asks: a known length is
sent as is (the block carries Content-Length); an unknown one is chunked for
an HTTP/1.1 client and delimited by closing the connection for an HTTP/1.0
one. It also decides whether the connection survives: not when the exchange
or the worker says so (draining), nor when a request body was left unread
(the next request's bytes could not be found). Policy headers
(``ex.response_headers_extra``) are merged into the block first
(``hop.merge_extra``). ``chunk`` / ``last_chunk`` frame body data and the
end of a chunked body with its trailers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from meshgate.protocol.hop import merge_extra
from meshgate.protocol.status import reason

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers

_STATUS_LINES: Final = {s: b"HTTP/1.1 %d %s\r\n" % (s, reason(s)) for s in range(100, 600)}
_PLAIN: Final = (b"content-type", b"text/plain; charset=utf-8")


def response_head(ex: Exchange, status: int, block: bytes, has_body: bool,
                  length: int | None, draining: bool) -> tuple[bytes, bool]:
    """(the head's bytes, whether the body is chunked); sets ``ex.status``, and
    ``ex.keep_alive`` False when the connection must close after this response."""
    ex.status = status
    extra = ex.response_headers_extra
    if extra is not None:
        block = merge_extra(block, extra)
    head = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, reason(status)),
            block]
    chunked = False
    if length is None and has_body:
        if ex.http_version == b"1.1":
            chunked = True
            head.append(b"transfer-encoding: chunked\r\n")
        else:
            ex.keep_alive = False
    if (not ex.keep_alive or draining
            or (ex.body_expected and not ex.body_done and ex.body_sink is None)):
        ex.keep_alive = False
        head.append(b"connection: close\r\n\r\n")
    elif ex.http_version != b"1.1":     # HTTP/1.0 keeps the connection only when told
        head.append(b"connection: keep-alive\r\n\r\n")
    else:
        head.append(b"\r\n")
    return b"".join(head), chunked


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None) -> bytes:
    if trailers:
        return b"0\r\n" + b"".join(b"%s: %s\r\n" % kv for kv in trailers) + b"\r\n"
    return b"0\r\n\r\n"


def plain_headers(date: bytes, headers: Headers | None) -> Headers:
    """The headers of a gateway's own short answer: Date, a text type, then ``headers``
    (which replace those two when they name them)."""
    base: Headers = [(b"date", date), _PLAIN]
    if headers:
        base = [h for h in base if not any(h[0] == k for k, _ in headers)] + headers
    return base
