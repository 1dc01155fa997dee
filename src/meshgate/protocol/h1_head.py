"""Checks on an HTTP/1.x request head that the parser leaves to us.

httptools validates syntax; these decide what a syntactically valid head
means for a gateway: an absolute-form target's authority replaces Host (RFC
9112 3.2.2), the Host used for routing loses its port, and a head that is
valid HTTP but unacceptable here (no or several Host headers in HTTP/1.1, a
bad target, CONNECT) is answered 400 by a ``Refusal`` standing in for a
pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import httptools

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers

VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0", "0.9": b"0.9"}


def resolve(url: bytes, host: bytes, headers: Headers, version: bytes, method: bytes,
            bad: bytes) -> tuple[bytes, bytes, Headers, bytes]:
    """(target, Host, headers, why refused or b"") of a parsed head.

    An absolute-form target becomes origin-form and its authority the Host
    (replacing the header); HTTP/1.1 without a Host, a bad target and
    CONNECT are refused. ``bad`` is a refusal the parser callbacks found.
    """
    if url[:1] != b"/":
        try:
            url, target_host = absolute_form(url, host)
        except httptools.HttpParserInvalidURLError:
            url, target_host, bad = b"/", host, b"Bad Request: invalid request target\n"
        if target_host != host:        # RFC 9112 3.2.2: the target's authority wins over Host
            headers = [h for h in headers if h[0] != b"host"]
            headers.append((b"host", target_host))
            host = target_host
    if not host and version == b"1.1" and not bad:
        bad = b"Bad Request: missing Host header\n"
    if method == b"CONNECT":
        bad = b"Bad Request: CONNECT is not supported\n"
    return url, host, headers, bad


def absolute_form(url: bytes, host: bytes) -> tuple[bytes, bytes]:
    """(origin-form target, authority) of ``http://host/path?q``; InvalidURLError if bad."""
    if url == b"*":
        return url, host
    # Any: httptools' stubs type these fields as bytes, but absent parts are
    # None, and compiled code would enforce the stubs' word.
    parsed: Any = httptools.parse_url(url)
    path = parsed.path or b"/"
    if parsed.query:
        path += b"?" + parsed.query
    if parsed.host:
        host = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
    return path, host


def host_only(host: bytes) -> bytes:
    """The host of a Host value, lower-case, without its port (IPv6 kept in brackets)."""
    if host[:1] == b"[":
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    colon = host.find(b":")
    return (host if colon < 0 else host[:colon]).lower()


class Refusal:
    """Stands in for a pipeline when the request head itself is unacceptable."""

    name = ""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def run(self, ex: Exchange) -> None:
        ex.respond(400, self.body)
