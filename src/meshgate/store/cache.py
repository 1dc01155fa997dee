"""The verification cache: authenticated requests skip the store and the slow hash.

Theory of operation
-------------------
Two bounded maps per process (when full, the oldest entry goes):

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
older than that: revocation shows everywhere within a second. Whoever keeps
something derived from an answer (a policy's memo of Identities) keeps the
``generation`` it was read in and asks ``live(generation)`` before using it:
the same two rules.

Eviction is oldest-first rather than least-recently-used, so a hit writes
nothing. The bound only bites when more distinct keys are in use than it
allows; a busy key evicted then costs one store read (its proof spares the
slow hash) and is back.

``get`` is synchronous and allocation-free on a hit, so auth policies can
answer without creating a coroutine (the hot-path rule). The answers' keys
are made here (``verify_key``, ``lookup_key``, ``token_key``), so the store
and the policies that read the cache directly agree on them. The module is
compiled (``setup.py``): a cache hit is the bulk of an authenticated
request's auth cost.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Hashable
from typing import Any, Final

POLL_INTERVAL = 0.25
STALE_AFTER = 0.75
NEGATIVE_TTL = 5.0
FOREVER = float("inf")


class _Miss:
    """The cache has no usable answer; ask the store (asynchronously). One instance."""

    def __repr__(self) -> str:
        return "MISS"

    def __bool__(self) -> bool:
        return False


MISS: Final = _Miss()


def memo_key(secret: str) -> bytes:
    """What the cache keeps instead of a presented secret: a digest of it."""
    return digest(secret.encode("utf-8"))


def digest(presented: bytes) -> bytes:
    """A 256-bit BLAKE2s digest: what caches keep instead of presented secrets."""
    return hashlib.blake2s(presented).digest()


def verify_key(type_: str, key_id: str, secret: str) -> tuple[str, str, str, bytes]:
    """The answer's key for ``verify(type_, key_id, secret)``."""
    return ("v", type_, key_id, memo_key(secret))


def lookup_key(type_: str, key_id: str) -> tuple[str, str, str]:
    """The answer's key for ``lookup(type_, key_id)``."""
    return ("l", type_, key_id)


def token_key(kind: str, presented: str) -> tuple[str, str, bytes]:
    """The answer's key for ``verify_token(presented, kind)``."""
    return ("t", kind, memo_key(presented))


class VerifyCache:
    def __init__(self, size: int = 10000, proofs: int = 10000) -> None:
        self.size = size
        self.proof_size = proofs
        self.answers: dict[Hashable, tuple[Any, float]] = {}
        self.proofs: dict[tuple[str, bytes], None] = {}
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
        return entry[0]

    def live(self, generation: int) -> bool:
        """Whether an answer read in ``generation`` may still be used."""
        return generation == self.generation and time.monotonic() <= self.fresh_until

    def put(self, generation: int, key: Hashable, value: Any,
            expires: float | None = None) -> None:
        """Remember an answer computed while ``generation`` was current."""
        if generation != self.generation:
            return                       # the store changed meanwhile: it may be stale
        if expires is None:
            expires = FOREVER if value is not None else time.monotonic() + NEGATIVE_TTL
        answers = self.answers
        answers.pop(key, None)           # re-inserted: it becomes the newest
        answers[key] = (value, expires)
        while len(answers) > self.size:
            del answers[next(iter(answers))]

    def flush(self) -> None:
        self.answers.clear()
        self.generation += 1

    def fresh(self, now: float | None = None) -> None:
        self.fresh_until = (time.monotonic() if now is None else now) + STALE_AFTER

    def proven(self, stored: str, digest: bytes) -> bool:
        return (stored, digest) in self.proofs

    def prove(self, stored: str, digest: bytes) -> None:
        proofs = self.proofs
        proofs.pop((stored, digest), None)
        proofs[(stored, digest)] = None
        while len(proofs) > self.proof_size:
            del proofs[next(iter(proofs))]
