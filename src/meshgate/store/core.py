"""The state every part of the consumer store shares: backend, cache, models, poller.

Theory of operation
-------------------
``StoreCore`` holds the ``Backend`` (sqlite or redis), the per-process
``VerifyCache``, the user/app ``PropertyModel`` and the JWT ``Sealer``. The
parts of the store (``users``, ``credentials``, ``tokens``, ``verify``) are
mixins over it, put together in ``service.ConsumerStore``.

Every write goes through ``_write``: one atomic backend batch, which bumps
the store's change counter, and then an immediate local cache flush, so the
process that wrote never reads its own stale answers. Other processes learn
of the change from the poller (``_poll``), started on the first async call
in each event loop: every ``POLL_INTERVAL`` it reads the counter, flushes
the cache when it moved, and marks the cache fresh on success.

Consumers are found as EG found them: a user by username, then by id; an
app by id, then by name (EG allowed two users to own apps of the same name;
asking by such a name is a conflict, use the id); "a consumer" is a user,
then an app.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from meshgate.store.backend import Backend, Clash, Doc, Op, Put
from meshgate.store.cache import POLL_INTERVAL, VerifyCache
from meshgate.store.guard import Guard, Limits
from meshgate.store.model import (
    DEFAULT_APP_MODEL,
    DEFAULT_USER_MODEL,
    Conflict,
    Consumer,
    PropertyModel,
    consumer_from,
)
from meshgate.store.secrets import Sealer

log = logging.getLogger("meshgate.store")

USERS, APPS, CREDS, SCOPES, TOKENS = "user", "app", "cred", "scope", "token"
SECRETS = "secret"


class StoreCore:
    def __init__(self, backend: Backend, *, config_dir: Path | None = None,
                 cipher_key: str = "sensitiveKey", cache_size: int = 10000,
                 limits: Limits | None = None) -> None:
        self.backend = backend
        self.cache = VerifyCache(cache_size)
        self.guard = Guard(limits)               # presented secrets' hashes (verify)
        self._checks: dict[Any, asyncio.Future[Any]] = {}   # verifications under way
        self._proven: dict[Any, None] = {}       # verify keys whose secret scrypt accepted
        self._like = ""                          # a real stored hash: the dummy's model
        self._dummy: tuple[str, str] = ("", "")  # (parameters, a hash nothing matches)
        self.user_model = PropertyModel.load(config_dir, "users.json", DEFAULT_USER_MODEL)
        self.app_model = PropertyModel.load(config_dir, "applications.json", DEFAULT_APP_MODEL)
        self.sealer = Sealer(cipher_key)
        self._poller: asyncio.Task[None] | None = None
        self._poller_loop: asyncio.AbstractEventLoop | None = None
        self._version: int | None = None
        self._hash_slots = asyncio.Semaphore(4)   # concurrent scrypt runs of writes
        self.closed = False

    # -- writes and change tracking --------------------------------------------
    async def _write(self, ops: Sequence[Op], *, bump: bool = True) -> None:
        self._ensure_poller()
        await self.backend.apply(ops, bump=bump)
        if bump:
            self.cache.flush()

    async def _write_or_conflict(self, ops: Sequence[Op], message: str) -> None:
        try:
            await self._write(ops)
        except Clash:
            raise Conflict(message) from None

    async def shared_secret(self, name: str) -> bytes:
        """32 random bytes made once per store and the same for every process using it.

        For keys no config file should hold (the oauth2 sessions' signing key
        mixes it with ``session.secret``, so a default secret left in place
        cannot be used to forge a session). Whoever makes it first wins.
        """
        doc = await self.backend.get(SECRETS, name)
        if doc is None:
            made = {"id": name, "value": base64.b64encode(os.urandom(32)).decode("ascii")}
            try:
                await self.backend.apply([Put(SECRETS, name, made, if_absent=True)], bump=False)
                doc = made
            except Clash:
                doc = await self.backend.get(SECRETS, name)
        if doc is None:
            raise RuntimeError(f"shared secret {name!r} could not be stored")
        return base64.b64decode(str(doc["value"]))

    def _ensure_poller(self) -> None:
        loop = asyncio.get_running_loop()
        if self._poller is not None and self._poller_loop is loop and not self._poller.done():
            return
        if self.closed:
            return
        self._poller_loop = loop
        self._poller = loop.create_task(self._poll(), name="meshgate-store-poller")

    async def _poll(self) -> None:
        while not self.closed:
            try:
                version = await self.backend.version()
            except asyncio.CancelledError:
                raise
            except Exception as exc:        # the cache goes stale and answers MISS
                log.warning("store change poll failed: %s", exc)
            else:
                if version != self._version:
                    self._version = version
                    self.cache.flush()
                self.cache.fresh(time.monotonic())
            await asyncio.sleep(POLL_INTERVAL)

    async def refresh(self) -> None:
        """Poll the change counter now (tests, and callers that must not wait)."""
        self._ensure_poller()
        version = await self.backend.version()
        if version != self._version:
            self._version = version
            self.cache.flush()
        self.cache.fresh()

    async def close(self) -> None:
        self.closed = True
        self.guard.queue.close()
        if self._poller is not None and self._poller_loop is asyncio.get_running_loop():
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.backend.close()

    # -- finding consumers ------------------------------------------------------------
    async def _user_doc(self, ref: str) -> Doc | None:
        """A user by username, then by id (EG's findByUsernameOrId)."""
        self._ensure_poller()
        keys = await self.backend.keys_by(USERS, "username", ref)
        if keys:
            doc = await self.backend.get(USERS, keys[0])
            if doc is not None:
                return doc
        return await self.backend.get(USERS, ref)

    async def _app_doc(self, ref: str) -> Doc | None:
        """An app by id, then by name (EG's findByNameOrId)."""
        self._ensure_poller()
        doc = await self.backend.get(APPS, ref)
        if doc is not None:
            return doc
        keys = await self.backend.keys_by(APPS, "name", ref)
        if len(keys) > 1:
            raise Conflict(f"Multiple applications with {ref} have been found: "
                           f"{','.join(keys)}. Please search for it using its ID instead")
        return await self.backend.get(APPS, keys[0]) if keys else None

    async def _consumer_doc(self, ref: str) -> tuple[Literal["user", "app"], Doc] | None:
        """A user (username or id), else an app (id or name): EG's findConsumer."""
        user = await self._user_doc(ref)
        if user is not None:
            return "user", user
        app = await self._app_doc(ref)
        return ("app", app) if app is not None else None

    async def _active_consumer(self, ref: str, *, by_username: bool) -> Consumer | None:
        """EG's validateConsumer: an active app by id, an active user by id or username."""
        app = await self.backend.get(APPS, ref)
        if app is not None and app.get("isActive"):
            return consumer_from(app, "app")
        user = await self.backend.get(USERS, ref)
        if user is None and by_username:
            keys = await self.backend.keys_by(USERS, "username", ref)
            user = await self.backend.get(USERS, keys[0]) if keys else None
        if user is not None and user.get("isActive"):
            return consumer_from(user, "user")
        return None

    async def _slow(self, fn: Any, *args: Any) -> Any:
        """Run a slow hash of an Admin API write in a thread, a few at a time."""
        async with self._hash_slots:
            return await asyncio.to_thread(fn, *args)
