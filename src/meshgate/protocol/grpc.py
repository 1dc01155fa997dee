"""gRPC as HTTP/2 requests: what meshgate needs to know of it.

A gRPC call is an HTTP/2 POST whose ``content-type`` is ``application/grpc``
(optionally ``+proto``, ``+json``, ...); its outcome travels in the response
trailers ``grpc-status`` / ``grpc-message``, the HTTP status being 200 for any
outcome (gRPC over HTTP/2, "PROTOCOL-HTTP2.md"). gRPC-Web
(``application/grpc-web``, ``application/grpc-web-text``) is the browser form
of the same calls.

This module holds the vocabulary shared by the codecs, the proxy, retries,
health checks and metrics: the status codes, which requests are gRPC, the
``grpc-timeout`` header, and the ``grpc-message`` encoding.
"""

from __future__ import annotations

from typing import Final

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


def encode_message(text: str) -> bytes:
    """``grpc-message``: UTF-8, percent-encoded outside printable ASCII (and '%')."""
    return b"".join(bytes((b,)) if b in _PLAIN else b"%%%02X" % b for b in text.encode())
