"""The registry store kept in etcd, shared by any number of registry replicas.

Theory of operation
-------------------
Two keys per instance, each on its own lease::

    {prefix}/instances/{service}/{id}  the registration (JSON, with both lease ids)
                                       lease ttl + deregisterCriticalAfter
    {prefix}/alive/{service}/{id}      time it was (re)created, lease ttl

A heartbeat (through any replica: the lease ids are in the registration)
renews both leases. When heartbeats stop, etcd drops the ``alive`` key after
ttl -- the instance is ``critical`` -- and the registration itself after
ttl + deregisterCriticalAfter. So etcd keeps the clock and every replica sees
the same health. Lease TTLs are whole seconds, and etcd raises TTLs below its
minimum (about 2 s with default election settings), so short ttls lapse late.

Each replica mirrors the prefix: it lists it once, then watches from the next
revision; every event updates the mirror and, when the visible instance
changed, the ``BaseStore`` view at the event's revision. Indexes are thus
etcd revisions, identical on every replica, and a client may move between
replicas without losing its place. A broken watch is re-listed (changes
found by comparing with the mirror) and re-opened, with backoff while etcd is
unreachable.

A write through this replica returns once the mirror shows it, so a read
that follows a write on the same replica sees it. ``lastHeartbeat`` is the
latest heartbeat this replica handled, else when the alive key was created.

Token records (``tokens``) are keys ``{prefix}/tokens/{id}`` (the record's
JSON: service, sha256 of the secret, never the token), mirrored by the same
watch: a token made or revoked through any replica, or with ``meshgate
registry token --etcd``, is known to every replica within a watch round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from meshgate.etcdv3 import EtcdClient, EtcdError, LeaseNotFound
from meshgate.registry.base import (
    CRITICAL,
    DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
    DEFAULT_ETCD_PREFIX,
    PASSING,
    BaseStore,
    Instance,
    InstanceSpec,
    dumps,
    now_ms,
)
from meshgate.registry.tokens import TokenRecord, TokenSource

log = logging.getLogger("meshgate.registry.etcd")
Key = tuple[str, str]
WRITE_VISIBLE_TIMEOUT = 2.0


def _seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


class EtcdTokens(TokenSource):
    """Token records as etcd keys, mirrored by the store's watch."""

    def __init__(self, client: EtcdClient, prefix: str) -> None:
        super().__init__()
        self.client = client
        self.prefix = f"{prefix}/tokens/"

    async def add(self, record: TokenRecord) -> None:
        await self.client.put(self.prefix + record.id, dumps(record.to_json()))
        self._records[record.id] = record       # usable here before the watch shows it

    async def remove(self, token_id: str) -> bool:
        _, items = await self.client.get_prefix(self.prefix + token_id)
        if not any(name == self.prefix + token_id for name, _ in items):
            return False
        await self.client.delete(self.prefix + token_id)
        self._records.pop(token_id, None)
        return True

    def mirror(self, name: str, value: bytes | None) -> bool:
        """Apply one key of the prefix if it is a token's (``None``: deleted)."""
        if not name.startswith(self.prefix):
            return False
        token_id = name[len(self.prefix):]
        if value is None:
            self._records.pop(token_id, None)
            return True
        try:
            self._records[token_id] = TokenRecord.from_json(json.loads(value))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed registry token key %s", name)
        return True

    def replace(self, items: list[tuple[str, bytes]]) -> None:
        self._records = {}
        for name, value in items:
            self.mirror(name, value)


class EtcdStore(BaseStore):
    def __init__(self, endpoints: list[str], prefix: str = DEFAULT_ETCD_PREFIX, *,
                 deregister_critical_after_ms: int = DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
                 client: EtcdClient | None = None, timeout: float = 5.0) -> None:
        super().__init__(deregister_critical_after_ms=deregister_critical_after_ms)
        self.client = client or EtcdClient(endpoints, timeout=timeout)
        self.prefix = prefix.rstrip("/")
        self.revision = 0
        self._records: dict[Key, dict[str, Any]] = {}
        self._alive: dict[Key, int] = {}
        self._heartbeats: dict[Key, int] = {}
        self._watcher: asyncio.Task[None] | None = None
        self.tokens: EtcdTokens = EtcdTokens(self.client, self.prefix)

    def _key(self, kind: str, key: Key) -> str:
        return f"{self.prefix}/{kind}/{key[0]}/{key[1]}"

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        await self._resync()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        await super().close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.client.close()

    # -- writes --------------------------------------------------------------------

    async def register(self, service: str, instance_id: str, spec: InstanceSpec,
                       registered_by: str | None = None) -> dict[str, Any]:
        key = (service, instance_id)
        fresh = Instance.from_spec(service, instance_id, spec, self.default_grace_ms,
                                   registered_by)
        current = self.get(service, instance_id)
        if current is not None and current.status == PASSING and current.same_registration(fresh):
            renewed = await self.heartbeat(service, instance_id)
            if renewed is not None:
                return renewed
        old = self._records.get(key)
        if old is not None:
            fresh.registered_at = int(old.get("registeredAt", fresh.registered_at))
        reg, alive = await asyncio.gather(
            self.client.grant(_seconds(fresh.ttl + fresh.deregister_critical_after)),
            self.client.grant(_seconds(fresh.ttl)))
        # alive first: the registration never shows up critical for a moment.
        await self.client.put(self._key("alive", key), str(now_ms()).encode(), alive)
        record = {**fresh.to_json(), "leases": [reg, alive]}
        del record["status"], record["lastHeartbeat"]
        await self.client.put(self._key("instances", key), dumps(record), reg)
        self._heartbeats[key] = now_ms()
        if old is not None:
            await self._revoke(old)
        await self._until(lambda: self._records.get(key, {}).get("leases") == [reg, alive]
                          and key in self._alive)
        return self._materialize(key, record).to_json()

    async def heartbeat(self, service: str, instance_id: str) -> dict[str, Any] | None:
        key = (service, instance_id)
        record = self._records.get(key) or await self._fetch(key)
        if record is None:
            return None
        reg, alive = record["leases"]
        try:
            await self.client.keepalive(reg)
        except LeaseNotFound:
            return None         # being removed: the client registers again
        try:
            await self.client.keepalive(alive)
        except LeaseNotFound:   # critical: a new alive key makes it passing again
            alive = await self.client.grant(_seconds(int(record["ttl"])))
            await self.client.put(self._key("alive", key), str(now_ms()).encode(), alive)
            record = {**record, "leases": [reg, alive]}
            await self.client.put(self._key("instances", key), dumps(record), reg)
            await self._until(lambda: key in self._alive)
        self._heartbeats[key] = now_ms()
        instance = self._materialize(key, record)
        instance.status = PASSING
        return instance.to_json()

    async def deregister(self, service: str, instance_id: str) -> bool:
        key = (service, instance_id)
        record = self._records.get(key) or await self._fetch(key)
        if record is None:
            return False
        await self.client.delete(self._key("instances", key))
        await self._revoke(record)
        self._heartbeats.pop(key, None)
        await self._until(lambda: key not in self._records)
        return True

    async def _revoke(self, record: dict[str, Any]) -> None:
        for lease in record.get("leases", []):
            with contextlib.suppress(EtcdError):
                await self.client.revoke(int(lease))

    async def _fetch(self, key: Key) -> dict[str, Any] | None:
        """A registration the mirror has not seen yet (made through another replica)."""
        name = self._key("instances", key)
        _, items = await self.client.get_prefix(name)
        for found, value in items:
            if found == name:
                return dict(json.loads(value))
        return None

    async def _until(self, predicate: Callable[[], bool]) -> None:
        """Wait (bounded) until the mirror reflects a write of ours."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITE_VISIBLE_TIMEOUT
        while not predicate() and not self.closing:
            event = self._changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("a write is not visible in the etcd watch yet")
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await event.wait()

    # -- the mirror ----------------------------------------------------------------

    async def _resync(self) -> None:
        revision, items = await self.client.get_prefix(self.prefix + "/")
        records: dict[Key, dict[str, Any]] = {}
        alive: dict[Key, int] = {}
        for name, value in items:
            self._decode(name, value, records, alive)
        self.tokens.replace(items)
        touched = set(self._records) | set(records) | set(self._alive) | set(alive)
        self._records, self._alive = records, alive
        self.revision = max(self.revision, revision)
        self._refresh(touched, revision)
        self._notify()

    async def _watch(self) -> None:
        attempt = 0
        while True:
            try:
                if attempt:
                    await self._resync()
                stream = self.client.watch_prefix_revisions(self.prefix + "/", self.revision + 1)
                async for revision, batch in stream:
                    attempt = 0
                    self._apply(revision, batch)
            except EtcdError as exc:
                delay = min(5.0, 0.1 * 2 ** attempt)
                attempt += 1
                log.warning("etcd watch of %s: %s; re-listing in %.1fs", self.prefix, exc, delay)
                await asyncio.sleep(delay)

    def _apply(self, revision: int, batch: list[tuple[str, str, bytes]]) -> None:
        touched: set[Key] = set()
        for kind, name, value in batch:
            if self.tokens.mirror(name, value if kind == "put" else None):
                continue
            key = self._parse(name)
            if key is None:
                continue
            touched.add(key[1])
            if kind == "put":
                self._decode(name, value, self._records, self._alive)
            elif key[0] == "instances":
                self._records.pop(key[1], None)
            else:
                self._alive.pop(key[1], None)
        self.revision = max(self.revision, revision)
        self._refresh(touched, revision)
        self._notify()      # writers waiting in _until look again

    def _parse(self, name: str) -> tuple[str, Key] | None:
        parts = name[len(self.prefix) + 1:].split("/")
        if not name.startswith(self.prefix + "/") or len(parts) != 3:
            return None
        if parts[0] not in ("instances", "alive"):
            return None
        return parts[0], (parts[1], parts[2])

    def _decode(self, name: str, value: bytes, records: dict[Key, dict[str, Any]],
                alive: dict[Key, int]) -> None:
        parsed = self._parse(name)
        if parsed is None:
            return
        kind, key = parsed
        try:
            if kind == "instances":
                records[key] = dict(json.loads(value))
            else:
                alive[key] = int(value or b"0")
        except ValueError:
            log.warning("ignoring malformed registry key %s", name)

    def _materialize(self, key: Key, record: dict[str, Any]) -> Instance:
        status = PASSING if key in self._alive else CRITICAL
        beat = max(self._heartbeats.get(key, 0), self._alive.get(key, 0),
                   int(record.get("registeredAt", 0)))
        return Instance.from_json({**record, "status": status, "lastHeartbeat": beat})

    def _refresh(self, touched: set[Key], revision: int) -> None:
        """Carry mirror changes of ``touched`` instances into the visible view."""
        for key in touched:
            record = self._records.get(key)
            shown = self.get(*key)
            if record is None:
                if shown is not None:
                    self._remove(*key, revision)
                    self._heartbeats.pop(key, None)
                continue
            try:
                instance = self._materialize(key, record)
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring malformed registration %s/%s", *key)
                continue
            if (shown is None or shown.status != instance.status
                    or not shown.same_registration(instance)
                    or shown.registered_at != instance.registered_at):
                self._put(instance, revision)
