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
_HOP_NAMES = (rb"connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade")
_HOP_LINE = re.compile(rb"(?im)^(?:" + _HOP_NAMES + rb")[ \t]*:[^\r\n]*\r\n")
# One scan finds every line that matters for framing or hop-by-hop removal.
_INTERESTING = re.compile(
    rb"(?im)^(content-length|" + _HOP_NAMES + rb")[ \t]*:[ \t]*([^\r\n]*)\r\n")
_ORDINARY_TOKENS = frozenset({b"close", b"keep-alive", b""})


def filter_block(block: bytes) -> tuple[bytes, int | None, bool]:
    """Drop hop-by-hop lines; return (block, content length, chunked)."""
    found = _INTERESTING.findall(block)
    if not found:
        return block, None, False
    length: int | None = None
    chunked = False
    hop = False
    extra: set[bytes] | None = None
    for name, value in found:
        name = name.lower()
        if name == b"content-length":
            length = int(value.strip())
        else:
            hop = True
            if name == b"transfer-encoding":
                chunked = True
            elif name == b"connection" and value.lower() not in _ORDINARY_TOKENS:
                tokens = {t.strip().lower() for t in value.split(b",")} - _ORDINARY_TOKENS
                if tokens:
                    extra = tokens if extra is None else extra | tokens
    if chunked and length is not None:
        length = None
        block = _line_named(b"content-length").sub(b"", block)
    if extra:
        for token in extra:
            block = _line_named(token).sub(b"", block)
    if hop:
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
