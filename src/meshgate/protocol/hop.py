"""Hop-by-hop headers (RFC 9110 section 7.6.1): never forwarded by a proxy."""

from __future__ import annotations

import re

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


# The same rules over a raw HTTP/1.x header block (``Name: value\r\n`` lines),
# so a proxied response head is filtered with a few C-level regex calls
# instead of a Python loop over its headers.
_HOP_LINE = re.compile(
    rb"(?im)^(?:connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade)"
    rb"[ \t]*:[^\r\n]*\r\n")
_CONNECTION = re.compile(rb"(?im)^connection[ \t]*:([^\r\n]*)\r\n")
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length[ \t]*:[ \t]*(\d+)")
_CHUNKED = re.compile(rb"(?im)^transfer-encoding[ \t]*:")
_ORDINARY_TOKENS = frozenset({b"close", b"keep-alive", b""})


def filter_block(block: bytes) -> tuple[bytes, int | None, bool]:
    """Drop hop-by-hop lines; return (block, content length, chunked)."""
    chunked = _CHUNKED.search(block) is not None
    m = _CONTENT_LENGTH.search(block)
    length = int(m.group(1)) if m is not None and not chunked else None
    if chunked and m is not None:
        block = _line_named(b"content-length").sub(b"", block)
    conn = _CONNECTION.search(block)
    if conn is not None:
        tokens = {t.strip().lower() for t in conn.group(1).split(b",")} - _ORDINARY_TOKENS
        for token in tokens:
            block = _line_named(token).sub(b"", block)
        return _HOP_LINE.sub(b"", block), length, chunked
    if b"eep-alive" in block or b"pgrade" in block or b"railer" in block or chunked:
        block = _HOP_LINE.sub(b"", block)
    return block, length, chunked


def _line_named(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(?im)^" + re.escape(name) + rb"[ \t]*:[^\r\n]*\r\n")


def parse_block(block: bytes) -> Headers:
    """A raw header block as (lower-case name, value) pairs."""
    headers: Headers = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
    return headers
