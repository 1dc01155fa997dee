"""Users and apps: create, find, list, update, (de)activate, remove -- EG's rules.

Theory of operation
-------------------
* A username is unique (a unique index claims it atomically: two concurrent
  creates cannot both win). Usernames never change (EG dropped ``username``
  from updates silently; so do we).
* An app belongs to a user (``userId``); its name is unique per owner only.
* Deactivating a user deactivates its apps (EG's cascade); activating does
  not reactivate them. Removing a user removes its apps, and removing a
  consumer removes its credentials and tokens (EG forgot the apps' ones).
* ``set_*_status`` answers EG's status words: ``Active`` / ``Inactive`` when
  nothing changed, else ``Activated`` / ``Deactivated``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshgate.store.backend import Delete, Doc, Op, Put
from meshgate.store.core import APPS, CREDS, TOKENS, USERS, StoreCore
from meshgate.store.model import Conflict, NotFound, eg_now, status_word
from meshgate.store.secrets import new_uuid


def _user_put(doc: Doc, *, new: bool = False) -> Put:
    return Put(USERS, doc["id"], doc, {"username": [doc["username"]]},
               unique=frozenset({"username"}), if_absent=new)


def _app_put(doc: Doc, *, new: bool = False) -> Put:
    return Put(APPS, doc["id"], doc, {"name": [doc["name"]], "owner": [doc["userId"]]},
               if_absent=new)


class UsersMixin(StoreCore):
    # -- users -----------------------------------------------------------------
    async def create_user(self, props: Mapping[str, Any]) -> Doc:
        clean = self.user_model.clean(props, creating=True)
        stamp = eg_now()
        doc: Doc = {"isActive": True, "username": clean["username"], "id": new_uuid(),
                    **clean, "createdAt": stamp, "updatedAt": stamp}
        await self._write_or_conflict([_user_put(doc, new=True)], "username already exists")
        return doc

    async def find_user(self, ref: str) -> Doc | None:
        return await self._user_doc(ref)

    async def list_users(self, start: int = 0, count: int = 100) -> tuple[list[Doc], int]:
        return await self.backend.scan(USERS, start, count)

    async def update_user(self, ref: str, props: Mapping[str, Any]) -> Doc:
        doc = await self._need_user(ref)
        changes = {k: v for k, v in props.items() if k != "username"}
        clean = self.user_model.clean(changes, creating=False)
        if clean:
            doc = {**doc, **clean, "updatedAt": eg_now()}
            await self._write([_user_put(doc)])
        return doc

    async def set_user_status(self, ref: str, active: bool) -> str:
        doc = await self._need_user(ref, lowercase=True)
        was = bool(doc.get("isActive"))
        if was == active:
            return status_word(was, active)
        stamp = eg_now()
        ops: list[Op] = [_user_put({**doc, "isActive": active, "updatedAt": stamp})]
        if not active:
            for app in await self._apps_of(doc["id"]):
                ops.append(_app_put({**app, "isActive": False, "updatedAt": stamp}))
        await self._write(ops)
        return status_word(was, active)

    async def remove_user(self, ref: str) -> None:
        doc = await self._need_user(ref)
        ops: list[Op] = [Delete(USERS, doc["id"])]
        for app in await self._apps_of(doc["id"]):
            ops.append(Delete(APPS, app["id"]))
            ops.extend(await self._consumer_leftovers(app["id"]))
        ops.extend(await self._consumer_leftovers(doc["id"]))
        await self._write(ops)

    async def _need_user(self, ref: str, *, lowercase: bool = False) -> Doc:
        doc = await self._user_doc(ref)
        if doc is None:
            raise NotFound(f"{'user' if lowercase else 'User'} not found: {ref}")
        return doc

    # -- apps ----------------------------------------------------------------------
    async def create_app(self, props: Mapping[str, Any], owner: str) -> Doc:
        clean = self.app_model.clean(props, creating=True)
        user = await self._user_doc(owner)
        if user is None:
            # EG's words and status (409) for an owner that does not exist
            raise Conflict("The specified user does not exist")
        await self._check_app_name(user["id"], clean["name"], None)
        stamp = eg_now()
        doc: Doc = {"isActive": True, "id": new_uuid(), "userId": user["id"], **clean,
                    "createdAt": stamp, "updatedAt": stamp}
        await self._write([_app_put(doc, new=True)])
        return doc

    async def find_app(self, ref: str) -> Doc | None:
        return await self._app_doc(ref)

    async def list_apps(self, start: int = 0, count: int = 100) -> tuple[list[Doc], int]:
        return await self.backend.scan(APPS, start, count)

    async def update_app(self, ref: str, props: Mapping[str, Any]) -> Doc:
        doc = await self._need_app(ref)
        clean = self.app_model.clean(props, creating=False)
        if "name" in clean and clean["name"] != doc["name"]:
            await self._check_app_name(doc["userId"], clean["name"], doc["id"])
        if clean:
            doc = {**doc, **clean, "updatedAt": eg_now()}
            await self._write([_app_put(doc)])
        return doc

    async def set_app_status(self, ref: str, active: bool) -> str:
        doc = await self._need_app(ref)
        was = bool(doc.get("isActive"))
        if was != active:
            await self._write([_app_put({**doc, "isActive": active, "updatedAt": eg_now()})])
        return status_word(was, active)

    async def remove_app(self, ref: str) -> None:
        doc = await self._need_app(ref)
        await self._write([Delete(APPS, doc["id"]), *await self._consumer_leftovers(doc["id"])])

    async def apps_of(self, user_ref: str) -> list[Doc]:
        user = await self._need_user(user_ref)
        return await self._apps_of(user["id"])

    async def _need_app(self, ref: str) -> Doc:
        doc = await self._app_doc(ref)
        if doc is None:
            raise NotFound(f"Application not found: {ref}")
        return doc

    async def _apps_of(self, user_id: str) -> list[Doc]:
        keys = await self.backend.keys_by(APPS, "owner", user_id)
        return [d for d in await self.backend.get_many(APPS, keys) if d is not None]

    async def _check_app_name(self, user_id: str, name: str, own_id: str | None) -> None:
        for key in await self.backend.keys_by(APPS, "name", name):
            other = await self.backend.get(APPS, key)
            if other is not None and other["userId"] == user_id and key != own_id:
                raise Conflict(f"{user_id} has already another application bound with "
                               f"{name} as name")

    async def _consumer_leftovers(self, consumer_id: str) -> list[Op]:
        """Deletes for a consumer's credentials and tokens."""
        creds = await self.backend.keys_by(CREDS, "consumer", consumer_id)
        tokens = await self.backend.keys_by(TOKENS, "consumer", consumer_id)
        return [*(Delete(CREDS, k) for k in creds), *(Delete(TOKENS, k) for k in tokens)]
