"""key-auth and basic-auth per request: a key id and a secret, answered from the cache.

Theory of operation
-------------------
Both policies read a (key id, secret) pair off the request -- an API key
``keyId:keySecret``, or a Basic ``username:password`` -- and ask the store
whether it names an active credential of an active consumer (``verify``).
A pair seen before is answered from the store's verification cache
(``VerifyCache.get``) without a coroutine; only a miss awaits the store,
through ``Gate.settle``. The Identity is memoised per cached Credential.
A miss names the client's address, whose failed checks the store counts
(``store.guard``): too many, or too many checks waiting, and ``Gate``
answers 429 / 503 with ``Retry-After`` instead of running the slow hash.

In front of that, each policy remembers the Identity admitted for a header
value as sent (``seen``, keyed by a digest of the value, never the value:
it holds a secret), with the cache generation it was read in. A client
sending the same header again -- every request of a keep-alive connection
-- is admitted after one digest and one look-up, without parsing, decoding
or building a cache key. ``VerifyCache.live`` applies the cache's own rules
(a store change or a stale poll invalidates), so revocation reaches these
entries exactly as it reaches the cache.

This module is compiled (``setup.py``); ``key_auth.py`` and
``basic_auth.py`` keep the parameters (pydantic models, which mypyc cannot
compile) and build these classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from meshgate.policies._auth import Gate, Identity, Memo, basic_credentials, query_param
from meshgate.store.cache import MISS, VerifyCache, digest, verify_key

if TYPE_CHECKING:
    from meshgate.policies import Outcome
    from meshgate.protocol.exchange import Exchange

_SEEN_SIZE: Final = 4096


class CredentialAuth:
    """Verify a (key id, secret) pair read off the request by ``presented``."""

    def __init__(self, type_: str, store: Any, gate: Gate) -> None:
        self.type = type_
        self.store = store                   # the worker's ConsumerStore
        self.cache: VerifyCache = store.cache
        self.gate = gate
        self.memo = Memo()
        self.seen: dict[bytes, tuple[Identity, int]] = {}   # digest(raw) -> (who, generation)

    def raw(self, ex: Exchange) -> bytes | None:
        """The header value carrying the credential, as sent; None if not from a header."""
        raise NotImplementedError

    def presented(self, ex: Exchange, raw: bytes | None) -> tuple[str, str] | None:
        """The (key id, secret) the request carries; either may be "" when malformed."""
        raise NotImplementedError

    def __call__(self, ex: Exchange) -> Outcome:
        raw = self.raw(ex)
        seen_key = b""
        if raw is not None:
            seen_key = digest(raw)
            seen = self.seen.get(seen_key)
            if seen is not None and self.cache.live(seen[1]):
                return self.gate.admit(ex, seen[0])
        pair = self.presented(ex, raw)
        if pair is None:
            return self.gate.deny(ex)
        key_id, secret = pair
        if not key_id or not secret:
            return self.gate.deny(ex, presented=True)
        generation = self.cache.generation
        hit = self.cache.get(verify_key(self.type, key_id, secret))
        if hit is MISS:
            return self.gate.settle(ex, self._verify(key_id, secret, ex.client_addr))
        if hit is None:
            return self.gate.deny(ex, presented=True)
        who = self.memo.credential(hit)
        if seen_key:
            if len(self.seen) >= _SEEN_SIZE:
                self.seen.clear()
            self.seen[seen_key] = (who, generation)
        return self.gate.admit(ex, who)

    async def _verify(self, key_id: str, secret: str, client: bytes) -> Identity | None:
        cred = await self.store.verify(self.type, key_id, secret, client.decode("latin-1"))
        return self.memo.credential(cred) if cred is not None else None


class KeyAuth(CredentialAuth):
    """An API key ``keyId:keySecret`` from a header (after a scheme) or the query."""

    def __init__(self, store: Any, gate: Gate, header: bytes | None, scheme: bytes | None,
                 field: str | None) -> None:
        super().__init__("key-auth", store, gate)
        self.header = header                 # lower-case name, None: not from a header
        self.scheme = scheme                 # lower-case, None: any (the last word is the key)
        self.field = field                   # query parameter, None: not from the query

    def raw(self, ex: Exchange) -> bytes | None:
        if self.header is None:
            return None
        value = ex.header(self.header)
        if not value:
            return None
        if self.scheme is not None:
            space = value.find(b" ")
            if (value if space < 0 else value[:space]).lower() != self.scheme:
                return None               # another scheme: the query may still have a key
        return value

    def presented(self, ex: Exchange, raw: bytes | None) -> tuple[str, str] | None:
        if raw is not None:
            key: str | None = raw.split(b" ")[-1].decode("latin-1")
        elif self.field is not None:
            key = query_param(ex.path, self.field)
        else:
            key = None
        if not key:
            return None
        key_id, _, secret = key.partition(":")
        return key_id, secret


class BasicAuth(CredentialAuth):
    """HTTP Basic: a username (or app or user id) and its basic-auth password."""

    def __init__(self, store: Any, gate: Gate) -> None:
        super().__init__("basic-auth", store, gate)

    def raw(self, ex: Exchange) -> bytes | None:
        return ex.header(b"authorization")

    def presented(self, ex: Exchange, raw: bytes | None) -> tuple[str, str] | None:
        return basic_credentials(raw)
