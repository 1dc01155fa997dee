"""HTTP/2 heads <-> the Exchange: the request checks HTTP/1.1 makes, and response heads.

Theory of operation
-------------------
The frame layer (``h2_conn``) has refused what RFC 9113 8.2-8.3 makes malformed (upper-case
names, connection-specific fields, ``te`` other than ``trailers``, unknown,
repeated or misplaced pseudo-header fields, a missing ``:method``,
``:scheme`` or ``:path``, ``:authority`` and ``host`` that disagree): the
connection ends with PROTOCOL_ERROR. ``request_head`` turns the rest into the
same request an HTTP/1.1 client would have sent:

* ``:authority`` becomes the ``host`` header when there is none, so the
  router, policies and the upstream all see one Host;
* ``:path`` must be origin-form (or ``*`` for OPTIONS) and is then resolved
  and normalised by ``h1_head.resolve`` -- the very code HTTP/1.1 uses --
  so ``/public/../admin`` routes as ``/admin`` and ``%2F`` is a 400 alike;
* ``GATEWAY_ONLY`` and ``x-meshgate-*`` fields are dropped, Cookie fields
  are joined with ``; `` (RFC 9113 8.2.3), ``content-length`` becomes the
  body length the proxy frames with;
* RFC 8441 extended CONNECT with ``:protocol websocket``, when the codec
  advertised SETTINGS_ENABLE_CONNECT_PROTOCOL (``websocket``), becomes the
  request an HTTP/1.1 client's handshake is: a bodiless ``GET`` of ``:path``
  marked ``tunnel``, carrying a fresh ``Sec-WebSocket-Key`` (RFC 8441 does
  not use the key; the upstream's HTTP/1.1 handshake needs one, and its
  ``Sec-WebSocket-Accept`` is checked against it). Another ``:protocol`` is
  501, and so are extended CONNECT when not advertised and plain CONNECT.

``response_head`` turns the raw header block a response starts with into
HTTP/2 fields: names lower-case, connection-specific fields dropped.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING, Final

from meshgate.protocol.h1_head import FORBIDDEN_TRAILERS, GATEWAY_ONLY, host_only, resolve
from meshgate.protocol.hop import merge_extra, parse_block

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Headers
    from meshgate.protocol.h1_head import PathRules

# Fields HTTP/2 forbids (RFC 9113 8.2.2); an upstream's or a policy's are dropped.
CONNECTION_SPECIFIC: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
})


class Head:
    """A request head as the codec hands it to an Exchange."""

    __slots__ = ("authority", "bad", "headers", "length", "method", "path", "status", "tunnel")

    def __init__(self) -> None:
        self.method = b"GET"
        self.path = b"/"
        self.authority = b""
        self.headers: Headers = []
        self.length = -1                  # content-length, -1: none
        self.bad = b""                    # why refused (b"": accepted)
        self.status = 0                   # the refusal's status when not 400/501
        self.tunnel = False               # an extended CONNECT for WebSocket (RFC 8441)


def request_head(fields: Headers, rules: PathRules, max_headers: int,
                 websocket: bool = False) -> Head:
    """The head of a request whose fields the frame layer decoded and validated.

    ``websocket``: extended CONNECT for WebSocket was advertised to this client.
    """
    head = Head()
    path = b""
    authority = b""
    host = b""
    protocol = b""
    cookies: list[bytes] = []
    headers = head.headers
    for name, value in fields:
        if name[:1] == b":":
            if name == b":method":
                head.method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            host = value
        elif name == b"content-length":
            if not value.isdigit():
                head.bad = b"Bad Request: invalid Content-Length\n"
                continue
            head.length = int(value)
        elif name in GATEWAY_ONLY or name.startswith(b"x-meshgate-"):
            continue                      # only the gateway says these
        headers.append((name, value))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if len(headers) > max_headers:
        head.bad, head.status = b"Request Header Fields Too Large\n", 431
        return head
    if not host and authority:
        host = authority
        headers.append((b"host", host))
    method = head.method
    if method == b"CONNECT":
        if not protocol:
            head.bad = b"Not Implemented: CONNECT is not supported\n"
            return head
        if protocol != b"websocket" or not websocket:
            head.bad = b"Not Implemented: extended CONNECT is not supported for this protocol\n"
            return head
        if head.length > 0:
            head.bad = b"Bad Request: extended CONNECT with a request body\n"
            return head
        method = head.method = b"GET"
        head.tunnel = True
        headers[:] = [item for item in headers if item[0] != b"sec-websocket-key"]
        headers.append((b"sec-websocket-key", base64.b64encode(os.urandom(16))))
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        head.bad = head.bad or b"Bad Request: :path must be origin-form\n"
        return head
    head.path, host, head.headers, head.bad = resolve(path, host, headers, b"1.1", method,
                                                      head.bad, rules)
    head.authority = host_only(host)
    return head


def request_trailers(fields: Headers) -> Headers:
    """Trailer fields, without those a trailer may not carry (as for HTTP/1.1)."""
    return [(n, v) for n, v in fields
            if n not in FORBIDDEN_TRAILERS and n[:1] != b":" and not n.startswith(b"x-meshgate-")]


def response_head(status: int, block: bytes, extra: Headers | None) -> Headers:
    """HTTP/2 fields of a response with ``status`` and the raw header ``block``."""
    if extra is not None:
        block = merge_extra(block, extra)
    fields: Headers = [(b":status", b"%d" % status)]
    for item in parse_block(block):
        if item[0] not in CONNECTION_SPECIFIC:
            fields.append(item)
    return fields


def response_trailers(trailers: Headers) -> Headers:
    return [(n.lower(), v) for n, v in trailers
            if n.lower() not in CONNECTION_SPECIFIC and n[:1] != b":"]
