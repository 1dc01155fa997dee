"""HPACK (RFC 7541) for both HTTP/2 frame layers: a decoder and an encoder.

Theory of operation
-------------------
The decoder takes one whole header block (the codec joins a HEADERS frame
and its CONTINUATIONs first) and returns its fields as ``(name, value)``
byte pairs. It keeps the dynamic table the peer's encoder fills, bounded by
the size we advertise (4096, the protocol's default), and it bounds the
header *list*: each field counts ``len(name) + len(value) + 32`` (RFC 9113
6.5.2), and the block stops decoding as soon as the sum passes
``max_header_list_size`` -- a few bytes referring to one large table entry
thousands of times (an HPACK bomb) cost us the limit, not the expansion.
Anything malformed raises ``HpackError`` (the connection's
COMPRESSION_ERROR); an oversized list raises ``HeaderListTooLarge``.

Huffman strings are decoded by a finite-state machine that reads four bits
at a time: the table, built once from the code (RFC 7541 Appendix B), maps
(state, nibble) to the next state, the symbol the nibble completed (at most
one: the shortest code is five bits) and whether stopping there would be a
valid end -- the padding must be a prefix of EOS, at most seven bits.

The encoder writes responses (and, upstream, requests) without touching a
dynamic table: a field equal to a static entry is one byte (``:status:
200``), a name in the static table is referenced by index, anything else is
a literal; no Huffman. The peer's decoder then holds no state for us, and
encoding is a few dict lookups and byte appends per field.
"""

from __future__ import annotations

from typing import Final


class HpackError(Exception):
    """A header block that does not decode: COMPRESSION_ERROR."""


class HeaderListTooLarge(HpackError):
    """The decoded fields passed the header list limit."""


STATIC_TABLE: Final[list[tuple[bytes, bytes]]] = [
    (b':authority', b''),
    (b':method', b'GET'),
    (b':method', b'POST'),
    (b':path', b'/'),
    (b':path', b'/index.html'),
    (b':scheme', b'http'),
    (b':scheme', b'https'),
    (b':status', b'200'),
    (b':status', b'204'),
    (b':status', b'206'),
    (b':status', b'304'),
    (b':status', b'400'),
    (b':status', b'404'),
    (b':status', b'500'),
    (b'accept-charset', b''),
    (b'accept-encoding', b'gzip, deflate'),
    (b'accept-language', b''),
    (b'accept-ranges', b''),
    (b'accept', b''),
    (b'access-control-allow-origin', b''),
    (b'age', b''),
    (b'allow', b''),
    (b'authorization', b''),
    (b'cache-control', b''),
    (b'content-disposition', b''),
    (b'content-encoding', b''),
    (b'content-language', b''),
    (b'content-length', b''),
    (b'content-location', b''),
    (b'content-range', b''),
    (b'content-type', b''),
    (b'cookie', b''),
    (b'date', b''),
    (b'etag', b''),
    (b'expect', b''),
    (b'expires', b''),
    (b'from', b''),
    (b'host', b''),
    (b'if-match', b''),
    (b'if-modified-since', b''),
    (b'if-none-match', b''),
    (b'if-range', b''),
    (b'if-unmodified-since', b''),
    (b'last-modified', b''),
    (b'link', b''),
    (b'location', b''),
    (b'max-forwards', b''),
    (b'proxy-authenticate', b''),
    (b'proxy-authorization', b''),
    (b'range', b''),
    (b'referer', b''),
    (b'refresh', b''),
    (b'retry-after', b''),
    (b'server', b''),
    (b'set-cookie', b''),
    (b'strict-transport-security', b''),
    (b'transfer-encoding', b''),
    (b'user-agent', b''),
    (b'vary', b''),
    (b'via', b''),
    (b'www-authenticate', b''),
]

# (code, bit length) of each symbol; 256 is EOS.
_CODES: Final[list[tuple[int, int]]] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28),
    (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24),
    (0x3ffffffc, 30), (0xfffffe9, 28), (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28),
    (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), (0xffffff4, 28),
    (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), (0x3fa, 10), (0x3fb, 10), (0xf9, 8),
    (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), (0x0, 5), (0x1, 5), (0x2, 5),
    (0x19, 6), (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7),
    (0xfb, 8), (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13), (0x21, 6),
    (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), (0x63, 7), (0x64, 7),
    (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), (0x6b, 7), (0x6c, 7),
    (0x6d, 7), (0x6e, 7), (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7), (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13),
    (0xffffffc, 28), (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), (0x3fffd6, 22),
    (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), (0x7fffdd, 23), (0x7fffde, 23),
    (0xffffeb, 24), (0x7fffdf, 23), (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22),
    (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), (0x3fffd9, 22),
    (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), (0x3fffda, 22), (0x1fffdd, 21),
    (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23),
    (0x1fffde, 21), (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23), (0x1fffe0, 21),
    (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), (0x7fffed, 23), (0x3fffe1, 22),
    (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22),
    (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22),
    (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25), (0x3ffffe2, 26), (0x3ffffe3, 26),
    (0x3ffffe4, 26), (0x7ffffde, 27), (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24),
    (0x1ffffed, 25), (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24), (0x1fffe4, 21),
    (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27),
    (0x7ffffe4, 27), (0x7ffffe5, 27), (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20),
    (0x1fffe6, 21), (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), (0xfffff4, 24),
    (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23), (0x3ffffeb, 26), (0x7ffffe6, 27),
    (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27),
    (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), (0x3fffffff, 30),
]

DEFAULT_TABLE_SIZE: Final = 4096
_STATIC_LEN: Final = 61
_MAX_INT: Final = (1 << 31) - 1          # beyond any size or index this codec accepts

# Huffman decoding table entry: next state (bits 0-8), completed symbol + 1
# (bits 9-17, 0: none), failure (bit 18: EOS decoded), accepting (bit 19).
_FAIL: Final = 1 << 18
_ACCEPT: Final = 1 << 19


def _huffman_table() -> list[int]:
    """(state * 16 + nibble) -> entry, for the decoder's four-bit steps."""
    children: list[list[int]] = [[-1, -1]]     # internal nodes; a leaf is -(symbol + 1)
    for symbol, (code, length) in enumerate(_CODES):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = (code >> shift) & 1
            if shift == 0:
                children[node][bit] = -(symbol + 1)
            else:
                if children[node][bit] < 0:
                    children.append([-1, -1])
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    accepting = {0}
    node = 0
    for _ in range(7):                         # the all-ones path: padding up to 7 bits
        node = children[node][1]
        accepting.add(node)
    table: list[int] = []
    for state in range(len(children)):
        for nibble in range(16):
            node, symbol, fail = state, -1, 0
            for shift in (3, 2, 1, 0):
                child = children[node][(nibble >> shift) & 1]
                if child < 0:
                    if child == -257:
                        fail = _FAIL
                    symbol = -child - 1
                    node = 0
                else:
                    node = child
            table.append(node | ((symbol + 1) << 9) | fail
                         | (_ACCEPT if node in accepting else 0))
    return table


_HUFFMAN: Final[list[int]] = _huffman_table()


def huffman_decode(data: bytes) -> bytes:
    out = bytearray()
    table = _HUFFMAN
    state = 0
    entry = _ACCEPT
    for byte in data:
        entry = table[(state << 4) | (byte >> 4)]
        if entry & _FAIL:
            raise HpackError("EOS in a Huffman string")
        symbol = (entry >> 9) & 0x1FF
        if symbol:
            out.append(symbol - 1)
        state = entry & 0x1FF
        entry = table[(state << 4) | (byte & 0xF)]
        if entry & _FAIL:
            raise HpackError("EOS in a Huffman string")
        symbol = (entry >> 9) & 0x1FF
        if symbol:
            out.append(symbol - 1)
        state = entry & 0x1FF
    if not entry & _ACCEPT:
        raise HpackError("Huffman padding is not a prefix of EOS")
    return bytes(out)


class Decoder:
    """One connection's inbound header compression state."""

    def __init__(self, max_header_list_size: int, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.max_header_list_size = max_header_list_size
        self.settings_size = max_table_size     # what we advertised: the peer's ceiling
        self.max_size = max_table_size          # what the peer's encoder uses now
        self.size = 0
        self.table: list[tuple[bytes, bytes]] = []    # oldest first
        self._pos = 0

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        fields: list[tuple[bytes, bytes]] = []
        limit = self.max_header_list_size
        total = 0
        end = len(data)
        self._pos = 0
        while self._pos < end:
            byte = data[self._pos]
            if byte & 0x80:                             # indexed field
                field = self._entry(self._int(data, 7))
            elif byte & 0x40:                           # literal, incremental indexing
                field = self._literal(data, 6)
                self._add(field)
            elif byte & 0x20:                           # dynamic table size update
                if fields:
                    raise HpackError("table size update after a field")
                size = self._int(data, 5)
                if size > self.settings_size:
                    raise HpackError("table size update above the setting")
                self.max_size = size
                self._evict(0)
                continue
            else:                                       # literal, not indexed (or never)
                field = self._literal(data, 4)
            total += len(field[0]) + len(field[1]) + 32
            if total > limit:
                raise HeaderListTooLarge("header list over the limit")
            fields.append(field)
        return fields

    def _int(self, data: bytes, prefix: int) -> int:
        mask = (1 << prefix) - 1
        pos = self._pos
        value = data[pos] & mask
        pos += 1
        if value == mask:
            shift = 0
            while True:
                if pos >= len(data):
                    raise HpackError("truncated integer")
                byte = data[pos]
                pos += 1
                value += (byte & 0x7F) << shift
                shift += 7
                if value > _MAX_INT:
                    raise HpackError("integer too large")
                if not byte & 0x80:
                    break
        self._pos = pos
        return value

    def _string(self, data: bytes) -> bytes:
        if self._pos >= len(data):
            raise HpackError("truncated string")
        huffman = data[self._pos] & 0x80
        length = self._int(data, 7)
        start = self._pos
        stop = start + length
        if stop > len(data):
            raise HpackError("truncated string")
        self._pos = stop
        if huffman:
            return huffman_decode(data[start:stop])
        return data[start:stop]

    def _literal(self, data: bytes, prefix: int) -> tuple[bytes, bytes]:
        index = self._int(data, prefix)
        name = self._entry(index)[0] if index else self._string(data)
        return name, self._string(data)

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return STATIC_TABLE[index - 1]
        dynamic = index - _STATIC_LEN
        table = self.table
        if index == 0 or dynamic > len(table):
            raise HpackError("index out of the tables")
        return table[len(table) - dynamic]

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + 32
        if size > self.max_size:
            self.table.clear()
            self.size = 0
            return
        self._evict(size)
        self.table.append(field)
        self.size += size

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until ``room`` more bytes fit."""
        table = self.table
        drop = 0
        while self.size + room > self.max_size:
            name, value = table[drop]
            self.size -= len(name) + len(value) + 32
            drop += 1
        if drop:
            del table[:drop]


_STATIC_FIELD: Final[dict[tuple[bytes, bytes], int]] = {}
_STATIC_NAME: Final[dict[bytes, int]] = {}
for _i, _field in enumerate(STATIC_TABLE):
    _STATIC_FIELD.setdefault(_field, _i + 1)
    _STATIC_NAME.setdefault(_field[0], _i + 1)


def _put_int(out: bytearray, first: int, prefix: int, value: int) -> None:
    """``value`` with an N-bit prefix, its high bits ``first``."""
    mask = (1 << prefix) - 1
    if value < mask:
        out.append(first | value)
        return
    out.append(first | mask)
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


class Encoder:
    """Outbound fields: static-table references and literals, never indexed.

    Names in ``never_indexed`` go out as "never indexed" literals (RFC 7541
    6.2.3) rather than plain ones, so that the next hop does not index a
    secret either.
    """

    def __init__(self, never_indexed: frozenset[bytes] = frozenset()) -> None:
        self.never_indexed = never_indexed

    def encode(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        out = bytearray()
        for field in fields:
            index = _STATIC_FIELD.get(field, 0)
            if index:
                out.append(0x80 | index)                # all static indexes fit in 7 bits
                continue
            name, value = field
            index = _STATIC_NAME.get(name, 0)
            first = 0x10 if name in self.never_indexed else 0
            if index:
                _put_int(out, first, 4, index)
            else:
                out.append(first)
                _put_int(out, 0, 7, len(name))
                out += name
            _put_int(out, 0, 7, len(value))
            out += value
        return bytes(out)
