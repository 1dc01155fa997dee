"""gRPC as HTTP/2 requests: what meshgate needs to know of it.

A gRPC call is an HTTP/2 POST whose ``content-type`` is ``application/grpc``
(optionally ``+proto``, ``+json``, ...); its outcome travels in the response
trailers ``grpc-status`` / ``grpc-message``, the HTTP status being 200 for any
outcome (gRPC over HTTP/2, "PROTOCOL-HTTP2.md"). gRPC-Web
(``application/grpc-web``, ``application/grpc-web-text``) is the browser form
of the same calls.

This module holds the vocabulary shared by the codecs, the proxy, retries,
health checks and metrics: the status codes, which requests are gRPC, the
``grpc-timeout`` header, the ``grpc-message`` encoding, and meshgate's own
answers to a gRPC call.

meshgate's own answers
----------------------
An answer meshgate makes itself (no route, no healthy upstream, a timeout, an
auth refusal, a rate limit, a fault abort, ...) is a short text response with
an HTTP status. A gRPC client would read only the status, through the
spec's lossy table (``status_from_http``: a timeout, an overflow and a dead
upstream all become UNAVAILABLE) and with the text lost. So a gRPC request
gets the same answer as a gRPC failure instead, as Envoy's local replies do:
HTTP 200, ``content-type: application/grpc``, ``grpc-status`` and
``grpc-message`` in the one header block ("Trailers-Only"), no body.
``local_status`` chooses the code from what meshgate meant -- the HTTP
status, and where that is ambiguous the answer's body or its
``x-meshgate-overloaded`` header -- and ``local_answer`` builds the fields,
keeping the headers the answer came with (``www-authenticate``,
``retry-after``, rate-limit headers). The codecs' ``respond`` call it for a
gRPC request; gRPC-Web, which frames the same status differently, can call
it with its own content type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Headers

# Status codes (grpc/doc/statuscodes.md).
OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
ALREADY_EXISTS: Final = 6
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
FAILED_PRECONDITION: Final = 9
ABORTED: Final = 10
OUT_OF_RANGE: Final = 11
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
DATA_LOSS: Final = 15
UNAUTHENTICATED: Final = 16

NAMES: Final = {
    "ok": OK, "cancelled": CANCELLED, "unknown": UNKNOWN,
    "invalid-argument": INVALID_ARGUMENT, "deadline-exceeded": DEADLINE_EXCEEDED,
    "not-found": NOT_FOUND, "already-exists": ALREADY_EXISTS,
    "permission-denied": PERMISSION_DENIED, "resource-exhausted": RESOURCE_EXHAUSTED,
    "failed-precondition": FAILED_PRECONDITION, "aborted": ABORTED,
    "out-of-range": OUT_OF_RANGE, "unimplemented": UNIMPLEMENTED, "internal": INTERNAL,
    "unavailable": UNAVAILABLE, "data-loss": DATA_LOSS, "unauthenticated": UNAUTHENTICATED,
}

# An HTTP status that is not 200 on a gRPC response, as a client reads it
# (grpc/doc/http-grpc-status-mapping.md). meshgate's own refusals choose a
# closer code where it knows more (a timeout is DEADLINE_EXCEEDED, not UNAVAILABLE).
_FROM_HTTP: Final = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED,
                     404: UNIMPLEMENTED, 429: UNAVAILABLE, 502: UNAVAILABLE,
                     503: UNAVAILABLE, 504: UNAVAILABLE}

GRPC: Final = b"application/grpc"
GRPC_WEB: Final = b"application/grpc-web"


def status_from_http(status: int) -> int:
    return _FROM_HTTP.get(status, UNKNOWN)


def is_grpc_request(headers: Headers) -> bool:
    """A gRPC call (not gRPC-Web), by the request's ``content-type``."""
    for name, value in headers:
        if name == b"content-type":
            return is_grpc_type(value.lower())
    return False


def is_grpc_type(content_type: bytes | None) -> bool:
    """``application/grpc`` or ``application/grpc+<codec>``; not gRPC-Web."""
    if content_type is None or not content_type.startswith(GRPC):
        return False
    rest = content_type[len(GRPC):len(GRPC) + 1]
    return rest in (b"", b"+", b";")


def is_grpc_web_type(content_type: bytes | None) -> bool:
    """``application/grpc-web[-text][+<codec>]``."""
    return content_type is not None and content_type.startswith(GRPC_WEB)


def content_type(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"content-type":
            return value.lower()
    return None


_UNITS: Final = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3,
                 ord("u"): 1e-6, ord("n"): 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (1 to 8 digits and a unit, H M S m u n) in seconds; None if malformed."""
    if not 2 <= len(value) <= 9:
        return None
    digits, unit = value[:-1], value[-1]
    if not digits.isdigit() or unit not in _UNITS:
        return None
    return int(digits) * _UNITS[unit]


def format_timeout(seconds: float) -> bytes:
    """A ``grpc-timeout`` value for ``seconds`` (rounded up, at most 8 digits)."""
    for unit, scale in ((b"n", 1e-9), (b"u", 1e-6), (b"m", 1e-3), (b"S", 1.0),
                        (b"M", 60.0), (b"H", 3600.0)):
        amount = -int(-seconds // scale)
        if amount < 100_000_000:
            return b"%d%s" % (max(amount, 0), unit)
    return b"99999999H"


_PLAIN: Final = frozenset(range(0x20, 0x7F)) - {ord("%")}


def encode_message(text: str | bytes) -> bytes:
    """``grpc-message``: UTF-8, percent-encoded outside printable ASCII (and '%')."""
    raw = text.encode() if isinstance(text, str) else text
    if all(b in _PLAIN for b in raw):
        return raw
    return b"".join(bytes((b,)) if b in _PLAIN else b"%%%02X" % b for b in raw)


# -- meshgate's own answers ----------------------------------------------------------

# By the HTTP status the answer has for other clients. Where this differs from
# the client's reading (_FROM_HTTP), meshgate knows more: its 504 is a timeout
# (DEADLINE_EXCEEDED, which Envoy's router now also sends for its timeouts
# rather than the 504's UNAVAILABLE), its 429 a quota (RESOURCE_EXHAUSTED, as
# Envoy's rate_limited_as_resource_exhausted), its 413 / 431 a size limit.
_LOCAL: Final = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED,
                 404: UNIMPLEMENTED, 408: DEADLINE_EXCEEDED, 413: RESOURCE_EXHAUSTED,
                 429: RESOURCE_EXHAUSTED, 431: RESOURCE_EXHAUSTED, 500: INTERNAL,
                 501: UNIMPLEMENTED, 502: UNAVAILABLE, 503: UNAVAILABLE,
                 504: DEADLINE_EXCEEDED}
# Answers whose status says too little, by their body: a 504 for a connection
# that was never made is an unreachable upstream, not an expired deadline
# (upstream/pool.py, upstream/h2_pool.py).
_BY_BODY: Final = {b"Gateway Timeout: upstream connect timeout\n": UNAVAILABLE}
# A circuit breaker or a pool queue over its limit (upstream/pool.py Limits.overflow,
# upstream/h2_pool.py) marks its 503 so, as Envoy marks x-envoy-overloaded.
OVERLOADED: Final = (b"x-meshgate-overloaded", b"true")
# Fields of a local answer that a gRPC answer replaces or must not carry.
_REPLACED: Final = frozenset({b"content-type", b"content-length", b"grpc-status",
                              b"grpc-message", b"transfer-encoding"})
MAX_MESSAGE: Final = 1024             # bytes of the answer's text kept as grpc-message


def local_status(status: int, body: bytes, headers: Headers | None = None) -> int:
    """The gRPC status of meshgate's own answer ``status`` / ``body`` / ``headers``."""
    code = _BY_BODY.get(body)
    if code is not None:
        return code
    if status == 503 and headers and OVERLOADED in headers:
        return RESOURCE_EXHAUSTED
    return _LOCAL.get(status, UNKNOWN)


def trailers_only(code: int, message: str | bytes, ctype: bytes = GRPC) -> Headers:
    """The fields of a Trailers-Only gRPC answer (after ``:status: 200``)."""
    fields: Headers = [(b"content-type", ctype), (b"grpc-status", b"%d" % code)]
    if message:
        fields.append((b"grpc-message", encode_message(message)))
    return fields


def local_answer(status: int, body: bytes, headers: Headers | None = None,
                 ctype: bytes = GRPC) -> Headers:
    """meshgate's own answer ``status`` / ``body`` as the fields of a gRPC failure.

    Sent with HTTP status 200 and no body. ``headers`` are kept, less framing
    and content type; an answer that already is gRPC (a ``grpc-status`` among
    ``headers``: a fault's ``grpcStatus`` abort) is kept as it is.
    """
    if headers:
        for name, _ in headers:
            if name == b"grpc-status":
                return headers
    fields = trailers_only(local_status(status, body, headers),
                           body[:MAX_MESSAGE].strip(), ctype)
    if headers:
        fields.extend(h for h in headers if h[0] not in _REPLACED)
    return fields
