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
(and run scrypt only for a secret never seen with this hash). Concurrent
``verify`` calls for the same (id, secret) share one check.

scrypt runs through ``guard.Guard`` (failed-attempt limits, a bounded and
fair hash queue; ``Refused`` when it may not run now). An unknown or
inactive id is checked against a dummy hash with the parameters of real
ones, and its negative answer is cached the same way, so a wrong secret
takes the same time whether or not the id exists.
"""

from __future__ import annotations

import asyncio
import hmac
from functools import partial
from typing import Any

from meshgate.store.cache import MISS, lookup_key, verify_key
from meshgate.store.core import CREDS, StoreCore
from meshgate.store.credentials import HIDDEN, cred_key
from meshgate.store.model import MULTI_TYPES, PASSWORD_KEY, Consumer, Credential
from meshgate.store.secrets import dummy_hash, verify_hash


class VerifyMixin(StoreCore):
    def cached_verify(self, type_: str, key_id: str, secret: str) -> Any:
        """Sync fast path of ``verify``: a Credential, None, or ``MISS``."""
        return self.cache.get(verify_key(type_, key_id, secret))

    async def verify(self, type_: str, key_id: str, secret: str,
                     client: str = "") -> Credential | None:
        """The credential, or None; ``client`` (an address) is whose failures count.

        Raises ``guard.Refused`` when the check may not run now (429 / 503).
        """
        key = verify_key(type_, key_id, secret)
        hit = self.cache.get(key)
        if hit is not MISS:
            return hit
        self._ensure_poller()
        running = self._checks.get(key)
        if running is None:               # one check per (id, secret) however many ask
            running = asyncio.ensure_future(self._check(key, secret, client))
            self._checks[key] = running
            running.add_done_callback(partial(self._checked, key))
        answer: Credential | None = await asyncio.shield(running)
        return answer

    async def _check(self, key: tuple[str, str, str, bytes], secret: str,
                     client: str) -> Credential | None:
        generation = self.cache.generation
        if key[1] != "jwt" and key[2] and secret and key not in self._proven:
            # refused before any store read (the same for known and unknown ids); a
            # pair proven before may need no hash, so it goes on to _verify
            self.guard.admit(client, (key[1], key[2]))
        answer = await self._verify(key[1], key[2], secret, key[3], client)
        self.cache.put(generation, key, answer)
        if answer is not None and key[1] != "jwt":
            proven = self._proven
            proven[key] = None
            if len(proven) > self.cache.proof_size:
                del proven[next(iter(proven))]
        return answer

    def _checked(self, key: Any, task: asyncio.Future[Any]) -> None:
        if self._checks.get(key) is task:
            del self._checks[key]
        if not task.cancelled():
            task.exception()              # retrieved: its waiters may all be gone

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
    async def _verify(self, type_: str, key_id: str, secret: str, digest: bytes,
                      client: str) -> Credential | None:
        if not key_id or not secret:
            return None
        found = await self._lookup(type_, key_id)
        if type_ == "jwt":
            ok = (found is not None and found[0].secret is not None
                  and hmac.compare_digest(found[0].secret.encode(), secret.encode()))
            return found[0] if found is not None and ok else None
        credential, stored = found if found is not None else (None, "")
        if stored:
            if self.cache.proven(stored, digest):
                return credential
            self._like = stored
        else:                             # nobody by that id: the same work, for nothing
            stored = self._dummy_hash()
        ok = await self.guard.check(client, (type_, key_id), verify_hash, secret, stored)
        if not ok or credential is None:
            return None
        self.cache.prove(stored, digest)
        return credential

    def _dummy_hash(self) -> str:
        """A hash nothing matches, with the parameters of the stored hashes last seen."""
        params = self._like.rpartition("$")[0].rpartition("$")[0]
        if self._dummy[0] != params or not self._dummy[1]:
            self._dummy = (params, dummy_hash(self._like))
        return self._dummy[1]

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
