"""Credentials and scopes: EG's four credential types and the global scope list.

Theory of operation
-------------------
A credential document lives under ``<type>:<id>``:

* ``key-auth`` and ``jwt`` -- several per consumer, ``id`` = ``keyId``;
  ``keyId`` and ``keySecret`` are generated (base62 uuids) unless given. The
  key-auth secret is stored as a scrypt hash (``keySecretHash``); the jwt
  secret is sealed (``keySecretSealed``, see ``secrets.Sealer``) because
  HS256 verification needs it back.
* ``basic-auth`` and ``oauth2`` -- one per consumer, ``id`` = the consumer id
  (for oauth2 that is the client id). The ``password`` / ``secret`` is
  generated (a uuid) unless given or ``autoGeneratePassword: false``, and
  stored as a scrypt hash. A new one may replace an *inactive* one only.

Secrets leave the store in clear exactly once, in the answer to the create
call (jwt secrets excepted: EG showed them on every read, and so do we).
Scopes must exist in the global list before a credential may carry them;
removing a scope from the list removes it from every credential (EG did).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshgate.store.backend import Clash, Delete, Doc, Op, Put
from meshgate.store.core import CREDS, SCOPES, StoreCore
from meshgate.store.model import (
    CREDENTIAL_TYPES,
    MULTI_TYPES,
    PASSWORD_KEY,
    Conflict,
    Invalid,
    NotFound,
    as_scopes,
    eg_now,
    status_word,
)
from meshgate.store.secrets import hash_secret, new_uuid, new_uuid62

HIDDEN = frozenset({"keySecretHash", "keySecretSealed", "passwordHash", "secretHash"})
RESERVED = frozenset({"id", "type", "consumerId", "isActive", "createdAt", "updatedAt",
                      *HIDDEN})


def cred_key(type_: str, id_: str) -> str:
    return f"{type_}:{id_}"


def _put(doc: Doc, *, new: bool = False) -> Put:
    return Put(CREDS, cred_key(doc["type"], doc["id"]), doc,
               {"consumer": [doc["consumerId"]], "scope": list(doc.get("scopes") or [])},
               if_absent=new)


def check_type(type_: Any) -> str:
    if type_ not in CREDENTIAL_TYPES:
        raise Invalid(f"Invalid credential type: {type_}")
    return str(type_)


def _text(name: str, value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)      # ajv's coerceTypes
    if not isinstance(value, str) or not value:
        raise Invalid(f"{name} must be a non-empty string")
    return value


class CredentialsMixin(StoreCore):
    def public(self, doc: Doc) -> Doc:
        """A credential as the Admin API shows it: no hashes, jwt secret in clear."""
        out = {k: v for k, v in doc.items() if k not in HIDDEN}
        if doc["type"] == "jwt" and "keySecretSealed" in doc:
            out["keySecret"] = self.sealer.open(doc["keySecretSealed"])
        if doc["type"] in MULTI_TYPES:
            out.setdefault("scopes", None)
        elif out.get("scopes") is None:
            out.pop("scopes", None)
        return out

    # -- create ---------------------------------------------------------------------
    async def create_credential(self, consumer_ref: str, type_: Any,
                                details: Mapping[str, Any] | None) -> Doc:
        """The new credential with its secret in clear (the only time it is shown)."""
        type_ = check_type(type_)
        found = await self._consumer_doc(consumer_ref)
        if found is None:
            raise Invalid(f"No consumer found with id: {consumer_ref}")
        consumer = found[1]
        details = dict(details or {})
        scopes = await self._existing(details.pop("scopes")) if "scopes" in details else None
        stamp = eg_now()
        base: Doc = {"isActive": True, "createdAt": stamp, "updatedAt": stamp}
        if type_ in MULTI_TYPES:
            return await self._create_keyed(type_, consumer["id"], base, scopes, details)
        return await self._create_single(type_, consumer["id"], base, scopes, details)

    async def _create_keyed(self, type_: str, consumer_id: str, base: Doc,
                            scopes: list[str] | None, details: dict[str, Any]) -> Doc:
        key_id = _text("keyId", details.pop("keyId")) if "keyId" in details else new_uuid62()
        secret = (_text("keySecret", details.pop("keySecret")) if "keySecret" in details
                  else new_uuid62())
        if type_ == "key-auth" and ":" in key_id:
            raise Invalid("keyId must not contain ':' (the key is sent as keyId:keySecret)")
        props = _extra(details)
        if type_ == "key-auth":
            sealed = {"keySecretHash": await self._slow(hash_secret, secret)}
        else:
            sealed = {"keySecretSealed": self.sealer.seal(secret)}
        doc: Doc = {**base, **props, "type": type_, "id": key_id, "keyId": key_id,
                    "scopes": scopes, "consumerId": consumer_id, **sealed}
        try:
            await self._write([_put(doc, new=True)])
        except Clash:
            raise Conflict(f"Credential already exists: {key_id}") from None
        return {**self.public(doc), "keySecret": secret}

    async def _create_single(self, type_: str, consumer_id: str, base: Doc,
                             scopes: list[str] | None, details: dict[str, Any]) -> Doc:
        old = await self.backend.get(CREDS, cred_key(type_, consumer_id))
        if old is not None and old.get("isActive"):
            raise Conflict("Credential already exists and is active")
        key = PASSWORD_KEY[type_]
        auto = details.pop("autoGeneratePassword", True)
        if not isinstance(auto, bool):
            raise Invalid("autoGeneratePassword must be a boolean")
        details.pop("passwordKey", None)
        given = _text(key, details.pop(key)) if details.get(key) not in (None, "") else None
        details.pop(key, None)
        if given is None and not auto:
            raise Invalid(f"{key} is required")
        secret = given or new_uuid()
        props = _extra(details)
        doc: Doc = {**base, **props, "type": type_, "id": consumer_id,
                    "consumerId": consumer_id, "scopes": scopes,
                    f"{key}Hash": await self._slow(hash_secret, secret)}
        await self._write([_put(doc)])
        out = {**self.public(doc), "autoGeneratePassword": auto, "passwordKey": key}
        if given is None:
            out[key] = secret
        return out

    # -- read -----------------------------------------------------------------------
    async def get_credential(self, type_: Any, id_: str) -> Doc | None:
        doc = await self.backend.get(CREDS, cred_key(check_type(type_), id_))
        return self.public(doc) if doc is not None else None

    async def list_credentials(self, consumer_ref: str) -> list[Doc]:
        found = await self._consumer_doc(consumer_ref)
        if found is None:
            raise NotFound(f"Consumer Not Found: id:{consumer_ref}")
        keys = await self.backend.keys_by(CREDS, "consumer", found[1]["id"])
        return [self.public(d) for d in await self.backend.get_many(CREDS, keys) if d]

    async def all_credentials(self) -> list[Doc]:
        out: list[Doc] = []
        cursor = 0
        while True:
            docs, cursor = await self.backend.scan(CREDS, cursor, 500)
            out.extend(self.public(d) for d in docs)
            if not cursor:
                return out

    # -- change -------------------------------------------------------------------------
    async def set_credential_status(self, type_: Any, id_: str, active: bool) -> str:
        doc = await self._need(type_, id_, f"No credential found with id: {id_}")
        was = bool(doc.get("isActive"))
        if was != active:
            await self._write([_put({**doc, "isActive": active, "updatedAt": eg_now()})])
        return status_word(was, active)

    async def add_credential_scopes(self, type_: Any, id_: str, scopes: Any) -> None:
        wanted = await self._existing(scopes)
        doc = await self._need(type_, id_, "credential not found")
        merged = list(dict.fromkeys([*(doc.get("scopes") or []), *wanted]))
        await self._write([_put({**doc, "scopes": merged, "updatedAt": eg_now()})])

    async def remove_credential_scopes(self, type_: Any, id_: str, scopes: Any) -> None:
        gone = set(as_scopes(scopes))
        doc = await self._need(type_, id_, "credential not found")
        kept = [s for s in doc.get("scopes") or [] if s not in gone]
        await self._write([_put({**doc, "scopes": kept, "updatedAt": eg_now()})])

    async def set_credential_scopes(self, type_: Any, id_: str, scopes: Any) -> None:
        wanted = await self._existing(scopes)
        doc = await self._need(type_, id_, "credential not found")
        await self._write([_put({**doc, "scopes": wanted, "updatedAt": eg_now()})])

    async def remove_credential(self, type_: Any, id_: str) -> bool:
        key = cred_key(check_type(type_), id_)
        if await self.backend.get(CREDS, key) is None:
            return False
        await self._write([Delete(CREDS, key)])
        return True

    async def _need(self, type_: Any, id_: str, message: str) -> Doc:
        doc = await self.backend.get(CREDS, cred_key(check_type(type_), id_))
        if doc is None:
            raise NotFound(message)
        return doc

    # -- scopes -------------------------------------------------------------------------
    async def create_scopes(self, scopes: Any) -> None:
        names = as_scopes(scopes)
        ops = [Put(SCOPES, s, {"scope": s}, if_absent=True) for s in names]
        await self._write_or_conflict(ops, "One or more scopes already exist.")

    async def list_scopes(self) -> list[str]:
        out: list[str] = []
        cursor = 0
        while True:
            docs, cursor = await self.backend.scan(SCOPES, cursor, 1000)
            out.extend(d["scope"] for d in docs)
            if not cursor:
                return out

    async def has_scope(self, scope: str) -> bool:
        return await self.backend.get(SCOPES, scope) is not None

    async def remove_scope(self, scope: str) -> bool:
        if not await self.has_scope(scope):
            return False
        ops: list[Op] = [Delete(SCOPES, scope)]
        keys = await self.backend.keys_by(CREDS, "scope", scope)
        for doc in await self.backend.get_many(CREDS, keys):
            if doc is not None:
                kept = [s for s in doc.get("scopes") or [] if s != scope]
                ops.append(_put({**doc, "scopes": kept}))
        await self._write(ops)
        return True

    async def _existing(self, scopes: Any) -> list[str]:
        names = as_scopes(scopes)
        found = await self.backend.get_many(SCOPES, names)
        if any(d is None for d in found):
            raise Invalid("One or more scopes don't exist")
        return names


def _extra(details: Mapping[str, Any]) -> dict[str, Any]:
    """Other properties EG kept on a credential: plain values only."""
    out: dict[str, Any] = {}
    for name, value in details.items():
        if name in RESERVED:
            raise Invalid(f"{name} cannot be set on a credential")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise Invalid(f"credential property {name} must be a string, number or boolean")
        out[name] = value
    return out
