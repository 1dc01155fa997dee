"""Hop-by-hop headers (RFC 9110 section 7.6.1): never forwarded by a proxy."""

from __future__ import annotations

from meshgate.protocol.exchange import Headers

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})


def connection_tokens(headers: Headers) -> frozenset[bytes] | None:
    """Header names listed in ``Connection`` (also hop-by-hop), or None."""
    tokens: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if tokens is None:
                tokens = set()
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens) if tokens else None
