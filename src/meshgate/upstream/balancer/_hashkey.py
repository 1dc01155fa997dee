"""What the hashing balancers hash: the key ``hashOn`` names, taken from the request.

Theory of operation
-------------------
``key_function(hash_on)`` is called once per balancer and returns a closure
that pulls the key out of an Exchange -- a header value, a cookie, a query
parameter or the client address -- as bytes, or ``None`` when the request
does not carry it (the balancer then picks at random, as Envoy does).
Nothing is decoded unless it has to be: header names are already lower-case
bytes on the Exchange, so a header key is one scan of the header list.

Hashes must give the same answer in every worker, process and host of the
mesh (so that every sidecar sends a key to the same endpoint), which rules
out Python's salted ``hash()``. Two are used, both onto 32 bits:

* ``key_hash`` -- per request: CRC-32 (in C, ~80 ns) followed by MurmurHash3's
  32-bit finalizer, whose avalanche spreads CRC's linear structure over the
  whole range; about half the cost of BLAKE2b from Python;
* ``point_hash`` -- per endpoint, when tables are built: BLAKE2b truncated to
  4 bytes, for ring points and Maglev permutations, where quality matters
  more than speed.

Both are uniform over ``[0, 2**32)``, which is all a ring or a table needs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from hashlib import blake2b
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes
from zlib import crc32

if TYPE_CHECKING:
    from meshgate.config.mesh import HashOn
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint

_random = random.random
KeyFunction = Callable[["Exchange | None"], "bytes | None"]


def key_hash(data: bytes) -> int:
    """A stable 32-bit hash of a request key: CRC-32, then Murmur3's fmix32."""
    h = crc32(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def point_hash(data: bytes) -> int:
    """A stable 32-bit hash for table building (BLAKE2b)."""
    return int.from_bytes(blake2b(data, digest_size=4).digest(), "little")


def cookie_value(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in one ``Cookie`` header value (RFC 6265 syntax)."""
    for part in header.split(b";"):
        key, eq, value = part.partition(b"=")
        if eq and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]
            return value
    return None


def _unquote(raw: bytes) -> bytes:
    if b"%" in raw or b"+" in raw:
        return unquote_to_bytes(raw.replace(b"+", b" "))
    return raw


def query_value(query: bytes, name: bytes) -> bytes | None:
    """The (decoded) value of the first query parameter called ``name``."""
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == name or _unquote(key) == name:
            return _unquote(value)
    return None


def key_function(hash_on: HashOn) -> KeyFunction:
    """The closure extracting the configured key from an Exchange."""
    if hash_on.header:
        return _header_key(hash_on.header.lower().encode("latin-1"))
    if hash_on.cookie:
        return _cookie_key(hash_on.cookie.encode("latin-1"))
    if hash_on.queryParameter:
        return _query_key(hash_on.queryParameter.encode("utf-8"))
    return _source_ip


def _source_ip(ex: Exchange | None) -> bytes | None:
    if ex is None:
        return None
    return ex.client_addr or None


def _header_key(name: bytes) -> KeyFunction:
    def header_key(ex: Exchange | None) -> bytes | None:
        if ex is None:
            return None
        for key, value in ex.headers:
            if key == name:
                return value
        return None
    return header_key


def _cookie_key(name: bytes) -> KeyFunction:
    def cookie_key(ex: Exchange | None) -> bytes | None:
        if ex is None:
            return None
        for key, value in ex.headers:
            if key == b"cookie":
                found = cookie_value(value, name)
                if found is not None:
                    return found
        return None
    return cookie_key


def _query_key(name: bytes) -> KeyFunction:
    def query_key(ex: Exchange | None) -> bytes | None:
        if ex is None:
            return None
        path = ex.path
        q = path.find(b"?")
        if q < 0:
            return None
        return query_value(path[q + 1:], name)
    return query_key


def random_pick(eps: list[Endpoint], exclude: Endpoint | None) -> Endpoint:
    """A request without the key: any endpoint (Envoy), avoiding ``exclude``."""
    n = len(eps)
    i = min(int(_random() * n), n - 1)
    ep = eps[i]
    return eps[(i + 1) % n] if ep is exclude else ep


def next_other(slots: list[Endpoint], i: int, exclude: Endpoint) -> Endpoint:
    """The first slot after ``i`` (wrapping) that is not ``exclude``."""
    m = len(slots)
    for _ in range(m):
        i += 1
        if i == m:
            i = 0
        if slots[i] is not exclude:
            return slots[i]
    return exclude
