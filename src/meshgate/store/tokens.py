"""OAuth2 tokens and authorization codes: issue, find again, verify, revoke.

Theory of operation
-------------------
A token is presented as ``<id>|<secret>`` (EG's form): ``id`` and ``secret``
are 128-bit random hex strings. The document, under ``id``, holds the kind
(``access_token``, ``refresh_token``, ``authorization_code``), the consumer,
the scopes, ``expiresAt`` (epoch ms) and any extra criteria the OAuth2
server wants to match later (``authenticatedUserId``, ``redirectUri``...).
The secret is stored twice: as a SHA-256 digest to verify it, and sealed so
that ``find_token`` can hand an existing live token out again, as EG's
``findOrSave`` did (the same client asking twice gets the same token).

``consume_token`` verifies and deletes in one atomic backend step
(``Backend.take``), so a single-use token -- an authorization code -- is
handed out once however many requests present it at the same moment.

Issuing a token does not bump the store's change counter (nothing can have
cached an answer about a token that did not exist), so busy OAuth2 servers do
not flush every gateway's caches; revoking one does.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

from meshgate.store.backend import Delete, Doc, Op, Put
from meshgate.store.cache import MISS, token_key
from meshgate.store.core import TOKENS, StoreCore
from meshgate.store.model import TOKEN_KINDS, Invalid, Token, eg_now, now_ms
from meshgate.store.secrets import new_token_part, token_digest


def _token(doc: Doc) -> Token:
    fixed = {"id", "kind", "consumerId", "scopes", "expiresAt", "createdAt",
             "secretHash", "secretSealed"}
    return Token(doc["id"], doc["kind"], doc["consumerId"], tuple(doc.get("scopes") or ()),
                 int(doc["expiresAt"]), {k: v for k, v in doc.items() if k not in fixed})


def _split(presented: str) -> tuple[str, str]:
    token_id, _, secret = presented.partition("|")
    return token_id, secret


class TokensMixin(StoreCore):
    async def issue_token(self, kind: str, consumer_id: str, *, ttl_ms: int,
                          scopes: list[str] | None = None,
                          props: Mapping[str, Any] | None = None) -> tuple[Token, str]:
        """A new token and its presentable ``id|secret`` form."""
        if kind not in TOKEN_KINDS:
            raise Invalid(f"unknown token kind: {kind}")
        token_id, secret = new_token_part(), new_token_part()
        doc: Doc = {**(props or {}), "id": token_id, "kind": kind, "consumerId": consumer_id,
                    "scopes": sorted(scopes) if scopes is not None else None,
                    "expiresAt": now_ms() + ttl_ms, "createdAt": eg_now(),
                    "secretHash": token_digest(secret),
                    "secretSealed": self.sealer.seal(secret)}
        await self._write([Put(TOKENS, token_id, doc, {"consumer": [consumer_id]},
                               if_absent=True)], bump=False)
        return _token(doc), f"{token_id}|{secret}"

    async def find_token(self, kind: str, consumer_id: str, *,
                         scopes: list[str] | None = None,
                         props: Mapping[str, Any] | None = None) -> tuple[Token, str] | None:
        """A live token of ``consumer_id`` issued with the same scopes and props."""
        wanted = sorted(scopes) if scopes is not None else None
        for doc in await self._docs_of(consumer_id):
            if (doc["kind"] != kind or doc["expiresAt"] <= now_ms()
                    or doc.get("scopes") != wanted
                    or any(doc.get(k) != v for k, v in (props or {}).items())):
                continue
            secret = self.sealer.open(doc.get("secretSealed", ""))
            if secret is not None:
                return _token(doc), f"{doc['id']}|{secret}"
        return None

    async def get_token(self, presented: str) -> Token | None:
        """The live token named by ``id|secret`` or ``id`` (the secret is not checked)."""
        self._ensure_poller()
        doc = await self.backend.get(TOKENS, _split(presented)[0])
        if doc is None or doc["expiresAt"] <= now_ms():
            return None
        return _token(doc)

    def cached_verify_token(self, presented: str, kind: str = "access_token") -> Any:
        """Sync fast path of ``verify_token``: a Token, None, or ``MISS``."""
        return self.cache.get(token_key(kind, presented))

    async def verify_token(self, presented: str, kind: str = "access_token") -> Token | None:
        """The live token if ``presented`` is its ``id|secret`` and its consumer is active."""
        key = token_key(kind, presented)
        hit = self.cache.get(key)
        if hit is not MISS:
            return hit
        self._ensure_poller()
        generation = self.cache.generation
        token = await self._verify_token(presented, kind)
        expires = None
        if token is not None:
            expires = time.monotonic() + (token.expires_at - now_ms()) / 1000
        self.cache.put(generation, key, token, expires)
        return token

    async def _verify_token(self, presented: str, kind: str) -> Token | None:
        token_id, secret = _split(presented)
        if not token_id or not secret:
            return None
        doc = await self.backend.get(TOKENS, token_id)
        if (doc is None or doc["kind"] != kind or doc["expiresAt"] <= now_ms()
                or not hmac.compare_digest(doc["secretHash"], token_digest(secret))):
            return None
        return await self._with_consumer(doc)

    async def _with_consumer(self, doc: Doc) -> Token | None:
        """The token of ``doc`` with its consumer, or None if that one is inactive."""
        consumer = await self._active_consumer(doc["consumerId"], by_username=False)
        if consumer is None:
            return None
        token = _token(doc)
        return Token(token.id, token.kind, token.consumer_id, token.scopes, token.expires_at,
                     token.props, consumer)

    async def revoke_token(self, presented: str) -> bool:
        """Forget the token named by ``id|secret`` or ``id``; False if there was none."""
        token_id = _split(presented)[0]
        if not token_id or await self.backend.get(TOKENS, token_id) is None:
            return False
        await self._write([Delete(TOKENS, token_id)])
        return True

    async def consume_token(self, presented: str, kind: str) -> Token | None:
        """Verify and delete in one atomic step (single use): the live token of ``kind``
        presented as ``id|secret``, or None -- for all but one of several concurrent
        callers, and when it does not match (then it stays). Its consumer is checked
        after: an inactive one gives None, the token being consumed all the same."""
        token_id, secret = _split(presented)
        if not token_id or not secret:
            return None
        digest = token_digest(secret)

        def matches(doc: Doc) -> bool:
            return (doc.get("kind") == kind and doc["expiresAt"] > now_ms()
                    and hmac.compare_digest(doc["secretHash"], digest))

        self._ensure_poller()
        # A consumed code needs no cache flush: whatever a cache says about it, only
        # this step hands it out. Other kinds may be cached as valid: flush them.
        bump = kind != "authorization_code"
        doc = await self.backend.take(TOKENS, token_id, matches, bump=bump)
        if doc is None:
            return None
        if bump:
            self.cache.flush()
        return await self._with_consumer(doc)

    async def tokens_of(self, consumer_id: str, kind: str | None = None) -> list[Token]:
        now = now_ms()
        return [_token(d) for d in await self._docs_of(consumer_id)
                if d["expiresAt"] > now and (kind is None or d["kind"] == kind)]

    async def purge_expired_tokens(self) -> int:
        """Delete expired tokens; the number deleted."""
        ops: list[Op] = []
        cursor, now = 0, now_ms()
        while True:
            docs, cursor = await self.backend.scan(TOKENS, cursor, 1000)
            ops.extend(Delete(TOKENS, d["id"]) for d in docs if d["expiresAt"] <= now)
            if not cursor:
                break
        if ops:
            await self._write(ops, bump=False)
        return len(ops)

    async def _docs_of(self, consumer_id: str) -> list[Doc]:
        self._ensure_poller()
        keys = await self.backend.keys_by(TOKENS, "consumer", consumer_id)
        return [d for d in await self.backend.get_many(TOKENS, keys) if d is not None]
