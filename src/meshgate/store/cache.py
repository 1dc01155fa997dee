"""The verification cache: authenticated requests skip the store and the slow hash.

Theory of operation
-------------------
Two bounded LRU maps per process:

* ``answers`` -- what ``verify`` / ``lookup`` / ``verify_token`` last said
  for a key (type, key id, a digest of the presented secret). Positive
  answers live until the store changes (or a token expires); negative ones
  for ``NEGATIVE_TTL`` seconds. Any change to the store flushes the whole
  map: writes are rare next to reads, and a flush costs each live key one
  store read, not a slow hash (see below).
* ``proofs`` -- (stored hash, digest of secret) pairs that scrypt already
  accepted. A stored hash changes only when the credential is re-created,
  so proofs survive flushes; after a flush a known-good key costs one store
  read and no scrypt.

Staleness bound: the owner polls the store's change counter every
``POLL_INTERVAL`` and calls ``flush`` when it moved, then ``fresh(now)``.
``get`` answers ``MISS`` whenever the last successful poll is older than
``STALE_AFTER`` (the poller died, Redis is down), so a cached answer is never
older than that: revocation shows everywhere within a second.

``get`` is synchronous and allocation-free on a hit, so auth policies can
answer without creating a coroutine (the hot-path rule).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Final

POLL_INTERVAL = 0.25
STALE_AFTER = 0.75
NEGATIVE_TTL = 5.0
FOREVER = float("inf")


class _Miss:
    """The cache has no usable answer; ask the store (asynchronously)."""

    _instance: _Miss | None = None

    def __new__(cls) -> _Miss:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISS"

    def __bool__(self) -> bool:
        return False


MISS: Final = _Miss()


class VerifyCache:
    def __init__(self, size: int = 10000, proofs: int = 10000) -> None:
        self.size = size
        self.proof_size = proofs
        self.answers: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        self.proofs: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self.generation = 0              # bumped by flush: late answers are dropped
        self.fresh_until = 0.0           # monotonic deadline set by the poller

    def get(self, key: Hashable) -> Any:
        """The cached answer (a value or None), or ``MISS``."""
        now = time.monotonic()
        if now > self.fresh_until:
            return MISS
        entry = self.answers.get(key)
        if entry is None:
            return MISS
        if now >= entry[1]:
            self.answers.pop(key, None)
            return MISS
        self.answers.move_to_end(key)
        return entry[0]

    def put(self, generation: int, key: Hashable, value: Any,
            expires: float | None = None) -> None:
        """Remember an answer computed while ``generation`` was current."""
        if generation != self.generation:
            return                       # the store changed meanwhile: it may be stale
        if expires is None:
            expires = FOREVER if value is not None else time.monotonic() + NEGATIVE_TTL
        self.answers[key] = (value, expires)
        self.answers.move_to_end(key)
        while len(self.answers) > self.size:
            self.answers.popitem(last=False)

    def flush(self) -> None:
        self.answers.clear()
        self.generation += 1

    def fresh(self, now: float | None = None) -> None:
        self.fresh_until = (time.monotonic() if now is None else now) + STALE_AFTER

    def proven(self, stored: str, digest: bytes) -> bool:
        key = (stored, digest)
        if key in self.proofs:
            self.proofs.move_to_end(key)
            return True
        return False

    def prove(self, stored: str, digest: bytes) -> None:
        self.proofs[(stored, digest)] = None
        while len(self.proofs) > self.proof_size:
            self.proofs.popitem(last=False)
