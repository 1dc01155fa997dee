"""Header rules on the proxy path: hop-by-hop headers (RFC 9110 section 7.6.1)
are never forwarded, and headers policies add (CORS, rate limits) replace the
upstream's lines of the same name. Both work on raw header blocks."""

from __future__ import annotations

import re
from typing import Final

from meshgate.protocol.exchange import Headers

HOP_BY_HOP: Final = frozenset({
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


# The same rules over a raw HTTP/1.x header block (``Name: value\r\n`` lines):
# one regex scan over a lower-cased copy finds every line that matters (the
# pattern starts with a literal newline, so the scan jumps from line to line),
# and the hop-by-hop ones are cut out by position. llhttp has already
# rejected blanks before the colon and bare line feeds.
_INTERESTING: Final = re.compile(
    rb"\n(content-length|connection|keep-alive|proxy-connection|te|trailer|"
    rb"transfer-encoding|upgrade):[ \t]*([^\r]*)")
_ORDINARY_TOKENS: Final = frozenset({b"close", b"keep-alive", b""})
# Never cut because a Connection header names them: framing is decided from
# what was parsed, and the codec writes it itself.
_KEPT_TOKENS: Final = _ORDINARY_TOKENS | {b"content-length", b"transfer-encoding"}


_MEMO: Final[dict[bytes, tuple[bytes, int | None, bool]]] = {}
_MEMO_LIMIT: Final = 512


def filter_block(block: bytes) -> tuple[bytes, int | None, bool]:
    """Drop hop-by-hop lines; return (block, content length, chunked).

    A pure function of the block, memoized: an upstream answering the same
    resource sends byte-identical heads (Date changes once a second), so the
    memo turns most filtering into one dict lookup. It is simply emptied when
    full, so varied heads cost one insert each and nothing grows.
    """
    done = _MEMO.get(block)
    if done is None:
        done = _filter(block)
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.clear()
        _MEMO[block] = done
    return done


def _filter(block: bytes) -> tuple[bytes, int | None, bool]:
    low = b"\n" + block.lower()      # index i in ``low`` is index i - 1 in ``block``
    found = _INTERESTING.findall(low)
    if not found:
        return block, None, False
    length: int | None = None
    chunked = False
    cut: list[bytes] = []
    for name, value in found:
        if name == b"content-length":
            length = int(value)
            continue
        cut.append(name)
        if name == b"transfer-encoding":
            chunked = True
        elif name == b"connection" and value not in _ORDINARY_TOKENS:
            cut.extend({t.strip() for t in value.split(b",")} - _KEPT_TOKENS)
    if chunked and length is not None:
        length = None
        cut.append(b"content-length")        # framing is ours to redo
    if not cut:
        return block, length, chunked
    if len(cut) == 1:                        # the usual "Connection: keep-alive"
        key = b"\n" + cut[0] + b":"
        pos = low.find(key)
        end = low.find(b"\n", pos + 1)
        if low.find(key, end) < 0:
            return block[:pos] + block[end:], length, chunked
    return _cut_lines(block, low, cut), length, chunked


def remove_lines(block: bytes, names: frozenset[bytes] | set[bytes]) -> bytes:
    """``block`` without the lines whose (lower-case) name is in ``names``."""
    low = b"\n" + block.lower()
    present = [name for name in names if b"\n" + name + b":" in low]
    return _cut_lines(block, low, present) if present else block


def _cut_lines(block: bytes, low: bytes, names: list[bytes]) -> bytes:
    spans = []
    for name in set(names):
        key = b"\n" + name + b":"
        pos = low.find(key)
        while pos >= 0:
            end = low.find(b"\n", pos + 1)
            spans.append((pos, end))
            pos = low.find(key, end)
    spans.sort()
    kept = []
    at = 0
    for start, end in spans:
        kept.append(block[at:start])
        at = end
    kept.append(block[at:])
    return b"".join(kept)


def render_block(headers: Headers, length: int | None) -> bytes:
    """Header pairs as a raw block, with Content-Length when ``length`` is known."""
    block = b"".join([b"%s: %s\r\n" % kv for kv in headers])
    if length is not None:
        block += b"content-length: %d\r\n" % length
    return block


def parse_block(block: bytes) -> Headers:
    """A raw header block as (lower-case name, value) pairs."""
    headers: Headers = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
    return headers


def merge_extra(block: bytes, extra: Headers) -> bytes:
    """Policy headers replace the same-named lines of ``block``; ``vary`` adds up.

    An entry whose name starts with a line feed is a block a policy rendered
    itself (rate-limit: six headers in one formatting operation): its value is
    ``name: value\r\n`` lines, appended as they are, and its name lists their
    header names, each after a line feed (no real header name has one). Those
    replace upstream lines too, but the upstream block is only searched for
    them, with one regex, rather than cut line by line -- and not even that
    when it is the block last found without them: a proxied head comes from
    ``hop.filter_block``'s memo, the same object until the upstream's changes.
    """
    if len(extra) == 1:
        name, value = extra[0]
        if name[:1] == b"\n":
            if block and _CLEAN.get(name) is not block:
                if _block_names(name).search(b"\n" + block.lower()) is None:
                    _CLEAN[name] = block
                else:
                    block = remove_lines(block, set(name[1:].split(b"\n")))
            return block + value
    names: set[bytes] = set()
    lines: list[bytes] = []
    for name, value in extra:
        if name[:1] == b"\n":
            names.update(name[1:].split(b"\n"))
            lines.append(value)
        else:
            if name != b"vary":
                names.add(name)
            lines.append(b"%s: %s\r\n" % (name, value))
    if names and block:
        block = remove_lines(block, names)
    return block + b"".join(lines)


_BLOCK_NAMES: Final[dict[bytes, re.Pattern[bytes]]] = {}
_CLEAN: Final[dict[bytes, bytes]] = {}    # names -> the upstream block last found without them


def _block_names(names: bytes) -> re.Pattern[bytes]:
    """A regex finding the lines of ``names`` (line-feed separated) in ``\n`` + block."""
    found = _BLOCK_NAMES.get(names)
    if found is None:
        if len(_BLOCK_NAMES) >= 256:        # one per policy configuration: never in practice
            _BLOCK_NAMES.clear()
            _CLEAN.clear()
        alternatives = b"|".join(re.escape(n) for n in names[1:].split(b"\n"))
        found = _BLOCK_NAMES[names] = re.compile(b"\n(?:" + alternatives + b"):")
    return found
