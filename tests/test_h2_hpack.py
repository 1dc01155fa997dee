"""HPACK: our codec against the ``hpack`` package, both ways, and hostile blocks."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.protocol.h2_hpack import (
    STATIC_TABLE,
    Decoder,
    Encoder,
    HeaderListTooLarge,
    HpackError,
    huffman_decode,
)

names = st.one_of(
    st.sampled_from([n for n, _ in STATIC_TABLE]),
    st.binary(min_size=1, max_size=40).map(lambda b: bytes(c | 0x20 for c in b)),
)
values = st.one_of(st.sampled_from([v for _, v in STATIC_TABLE]), st.binary(max_size=300))
fields = st.lists(st.tuples(names, values), max_size=30)
blocks = st.lists(fields, min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(blocks)
def test_our_encoding_decodes_with_hpack(headers_per_block: list[list[tuple[bytes, bytes]]],
                                         ) -> None:
    ours, theirs = Encoder(), hpack.Decoder()
    theirs.max_header_list_size = 1 << 30
    for headers in headers_per_block:
        assert theirs.decode(ours.encode(headers), raw=True) == headers


@settings(max_examples=300, deadline=None)
@given(blocks, st.booleans(), st.sampled_from([0, 256, 4096]))
def test_hpack_encoding_decodes_with_ours(headers_per_block: list[list[tuple[bytes, bytes]]],
                                          huffman: bool, table_size: int) -> None:
    theirs, ours = hpack.Encoder(), Decoder(1 << 30)
    theirs.header_table_size = table_size      # a size update opens the next block
    for headers in headers_per_block:
        assert ours.decode(theirs.encode(headers, huffman=huffman)) == headers
    assert ours.size <= table_size


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    decoder = Decoder(4096)
    try:
        result = decoder.decode(data)
    except HpackError:
        return
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in result)
    assert decoder.size <= 4096


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_huffman_matches_hpack(raw: bytes) -> None:
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    encoded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(raw)
    assert huffman_decode(encoded) == raw


@pytest.mark.parametrize("bad", [
    b"\xff\x00",                  # padding of zero bits: not a prefix of EOS
    b"\xff\xff\xff\xff",          # 32 one-bits: EOS itself is decoded
    b"\xfe",                      # 7 bits that are a code's start, then nothing
])
def test_bad_huffman_padding_is_refused(bad: bytes) -> None:
    with pytest.raises(HpackError):
        huffman_decode(bad)


def test_a_bomb_stops_at_the_list_limit() -> None:
    block = bytes(hpack.Encoder().encode([(b"x-bomb", b"a" * 4000)]))
    with pytest.raises(HeaderListTooLarge):
        Decoder(65536).decode(block + b"\xbe" * 100000)


def test_table_size_update_must_lead_and_stay_within_the_setting() -> None:
    with pytest.raises(HpackError):
        Decoder(4096).decode(b"\x82\x20")         # a field, then an update
    with pytest.raises(HpackError):
        Decoder(4096).decode(b"\x3f\xe1\x3f")     # 8192 > the 4096 we advertised
    decoder = Decoder(4096)
    assert decoder.decode(b"\x20\x82") == [(b":method", b"GET")]
    assert decoder.max_size == 0


def test_indexes_out_of_the_tables_are_refused() -> None:
    for block in (b"\x80", b"\xbe", b"\x7f\x00"):   # 0, an empty dynamic table, a huge index
        with pytest.raises(HpackError):
            Decoder(4096).decode(block)


def test_oversized_integers_are_refused() -> None:
    with pytest.raises(HpackError):
        Decoder(4096).decode(b"\x0f" + b"\xff" * 10 + b"\x01")
