"""The hot path: who is presenting this key, password, client secret or JWT subject?

Theory of operation
-------------------
``verify(type, key_id, secret)`` answers with the ``Credential`` (its active
``Consumer`` attached) when, as in EG's ``authenticateCredential``:

* ``key-auth`` / ``jwt``: a credential ``key_id`` of that type exists and is
  active, ``secret`` matches its key secret, and its consumer is active;
* ``basic-auth`` / ``oauth2``: ``key_id`` names an active consumer (an app
  id, a user id, or a username -- EG's order) whose credential of that type
  is active and whose password / client secret is ``secret``.

Anything else is ``None``. ``lookup(type, key_id)`` is the same without the
secret (the jwt policy after checking a signature; an OAuth2 server finding
a client).

Each answer is cached (``cache.VerifyCache``): ``cached_verify`` and
``cached_lookup`` are synchronous and return the cached answer or ``MISS``;
on ``MISS`` the policy awaits ``verify`` / ``lookup``, which read the store
(and run scrypt in a thread only for a secret never seen with this hash).
"""

from __future__ import annotations

import hmac
from typing import Any

from meshgate.store.cache import MISS, lookup_key, verify_key
from meshgate.store.core import CREDS, StoreCore
from meshgate.store.credentials import HIDDEN, cred_key
from meshgate.store.model import MULTI_TYPES, PASSWORD_KEY, Consumer, Credential
from meshgate.store.secrets import verify_hash


class VerifyMixin(StoreCore):
    def cached_verify(self, type_: str, key_id: str, secret: str) -> Any:
        """Sync fast path of ``verify``: a Credential, None, or ``MISS``."""
        return self.cache.get(verify_key(type_, key_id, secret))

    async def verify(self, type_: str, key_id: str, secret: str) -> Credential | None:
        key = verify_key(type_, key_id, secret)
        hit = self.cache.get(key)
        if hit is not MISS:
            return hit
        self._ensure_poller()
        generation = self.cache.generation
        answer = await self._verify(type_, key_id, secret, key[3])
        self.cache.put(generation, key, answer)
        return answer

    def cached_lookup(self, type_: str, key_id: str) -> Any:
        """Sync fast path of ``lookup``: a Credential, None, or ``MISS``."""
        return self.cache.get(lookup_key(type_, key_id))

    async def lookup(self, type_: str, key_id: str) -> Credential | None:
        """The active credential of an active consumer, the secret unchecked."""
        key = lookup_key(type_, key_id)
        hit = self.cache.get(key)
        if hit is not MISS:
            return hit
        self._ensure_poller()
        generation = self.cache.generation
        found = await self._lookup(type_, key_id)
        answer = found[0] if found is not None else None
        self.cache.put(generation, key, answer)
        return answer

    async def find_consumer(self, ref: str) -> Consumer | None:
        """An active app (by id) or user (by id or username): EG's validateConsumer."""
        self._ensure_poller()
        return await self._active_consumer(ref, by_username=True)

    # -- the store side ----------------------------------------------------------------
    async def _verify(self, type_: str, key_id: str, secret: str,
                      digest: bytes) -> Credential | None:
        if not key_id or not secret:
            return None
        found = await self._lookup(type_, key_id)
        if found is None:
            return None
        credential, stored = found
        if type_ == "jwt":
            ok = credential.secret is not None and hmac.compare_digest(
                credential.secret.encode(), secret.encode())
        elif self.cache.proven(stored, digest):
            ok = True
        else:
            ok = bool(stored) and await self._slow(verify_hash, secret, stored)
            if ok:
                self.cache.prove(stored, digest)
        return credential if ok else None

    async def _lookup(self, type_: str, key_id: str) -> tuple[Credential, str] | None:
        """The credential and its stored hash ("" for jwt), if usable."""
        if not key_id:
            return None
        if type_ in MULTI_TYPES:
            doc = await self.backend.get(CREDS, cred_key(type_, key_id))
            if doc is None or not doc.get("isActive"):
                return None
            consumer = await self._active_consumer(doc["consumerId"], by_username=True)
        elif type_ in PASSWORD_KEY:
            consumer = await self._active_consumer(key_id, by_username=True)
            if consumer is None:
                return None
            doc = await self.backend.get(CREDS, cred_key(type_, consumer.id))
            if doc is None or not doc.get("isActive"):
                return None
        else:
            return None
        if consumer is None:
            return None
        secret = None
        if type_ == "jwt":
            secret = self.sealer.open(doc.get("keySecretSealed", ""))
        stored = doc.get("keySecretHash") or doc.get(f"{PASSWORD_KEY.get(type_, '')}Hash") or ""
        credential = Credential(
            type_, doc["id"], doc["consumerId"], tuple(doc.get("scopes") or ()), True,
            consumer, secret, {k: v for k, v in doc.items() if k not in HIDDEN})
        return credential, str(stored)
