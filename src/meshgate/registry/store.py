"""The in-memory registry store, with TTL health and a snapshot on disk.

Theory of operation
-------------------
State lives in ``BaseStore`` (services -> instances, indexes, waits); this
module adds the writes, the clock and persistence.

Clock: each instance has two deadlines on the loop's monotonic clock,
``critical_at`` (last heartbeat + ttl) and ``remove_at`` (critical_at +
deregisterCriticalAfter). One sweeper task sleeps until the earliest entry of a
heap of ``(when, service, id)``; a heartbeat pushes a fresh entry rather than
re-ordering the heap, so a popped entry is only a reminder to compare the
instance's current deadlines with the time (stale reminders do nothing). A
new entry earlier than the heap's top wakes the sweeper.

Indexes: every visible change (new or changed registration, removal,
passing <-> critical) takes the next global index. A heartbeat that keeps a
passing instance passing, or a re-registration with the same fields, is not a
change, so watchers are not woken ten thousand times per ttl.

Snapshot: with a ``data_dir``, a change schedules a write of
``registry.json`` at most ``snapshot_delay`` (100 ms) later; the file is
written to a temp name, fsynced and renamed, so a crash leaves the old or the
new file, never half of one. At start the file is read back and every
instance gets a fresh ttl window from now, so a restart does not turn all of
them critical at once; the index continues where it stopped so clients'
blocking queries stay valid. ``close()`` writes a last snapshot.

Tokens: with a ``data_dir`` their records live in its ``tokens.json``
(``tokens.FileTokens``, shared with ``meshgate registry token``), else in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import os
from pathlib import Path
from typing import Any

from meshgate.registry.base import (
    CRITICAL,
    DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
    PASSING,
    BaseStore,
    Instance,
    InstanceSpec,
    dumps,
    now_ms,
)
from meshgate.registry.tokens import FileTokens

log = logging.getLogger("meshgate.registry")
SNAPSHOT_FILE = "registry.json"


class MemoryStore(BaseStore):
    def __init__(self, data_dir: str | Path | None = None, *,
                 deregister_critical_after_ms: int = DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
                 snapshot_delay: float = 0.1) -> None:
        super().__init__(deregister_critical_after_ms=deregister_critical_after_ms)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.snapshot_delay = snapshot_delay
        self._deadlines: dict[tuple[str, str], tuple[float, float]] = {}
        self._heap: list[tuple[float, str, str]] = []
        self._wake = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._dirty = False
        if self.data_dir is not None:
            self.tokens = FileTokens(self.data_dir)

    @property
    def snapshot_path(self) -> Path | None:
        return self.data_dir / SNAPSHOT_FILE if self.data_dir is not None else None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._restore()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        await super().close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._snapshot_task is not None and not self._snapshot_task.done():
            with contextlib.suppress(Exception):
                await self._snapshot_task
        if self._dirty:
            self._dirty = False
            self._write_snapshot(self._snapshot_body())

    # -- writes --------------------------------------------------------------------

    async def register(self, service: str, instance_id: str, spec: InstanceSpec,
                       registered_by: str | None = None) -> dict[str, Any]:
        fresh = Instance.from_spec(service, instance_id, spec, self.default_grace_ms,
                                   registered_by)
        old = self.get(service, instance_id)
        if old is not None and old.status == PASSING and old.same_registration(fresh):
            return self._refresh(old).to_json()
        if old is not None:
            fresh.registered_at = old.registered_at
        self._put(fresh, self.index + 1)
        self._arm(fresh)
        self._changed_state()
        return fresh.to_json()

    async def heartbeat(self, service: str, instance_id: str) -> dict[str, Any] | None:
        instance = self.get(service, instance_id)
        if instance is None:
            return None
        self._refresh(instance)
        if instance.status != PASSING:
            instance.status = PASSING
            self._changed_service(service, self.index + 1)
            self._changed_state()
        return instance.to_json()

    async def deregister(self, service: str, instance_id: str) -> bool:
        if self._remove(service, instance_id, self.index + 1) is None:
            return False
        self._deadlines.pop((service, instance_id), None)
        self._changed_state()
        return True

    def _refresh(self, instance: Instance) -> Instance:
        instance.last_heartbeat = now_ms()
        instance.changed()
        self._arm(instance)
        return instance

    # -- clock -------------------------------------------------------------------

    def _arm(self, instance: Instance, critical_in: float | None = None) -> None:
        """Set the deadlines of ``instance`` from now (``critical_in`` seconds, default ttl)."""
        now = asyncio.get_running_loop().time()
        critical_at = now + (instance.ttl / 1000 if critical_in is None else critical_in)
        remove_at = critical_at + instance.deregister_critical_after / 1000
        self._deadlines[(instance.service, instance.id)] = (critical_at, remove_at)
        self._remind(critical_at if instance.status == PASSING else remove_at,
                     instance.service, instance.id)

    def _remind(self, when: float, service: str, instance_id: str) -> None:
        if not self._heap or when < self._heap[0][0]:
            self._wake.set()
        heapq.heappush(self._heap, (when, service, instance_id))

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                _, service, instance_id = heapq.heappop(self._heap)
                self._check(service, instance_id, now)
            timeout = self._heap[0][0] - now if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _check(self, service: str, instance_id: str, now: float) -> None:
        instance = self.get(service, instance_id)
        deadlines = self._deadlines.get((service, instance_id))
        if instance is None or deadlines is None:
            return
        critical_at, remove_at = deadlines
        if now >= remove_at:
            self._remove(service, instance_id, self.index + 1)
            del self._deadlines[(service, instance_id)]
            self._changed_state()
        elif now >= critical_at and instance.status == PASSING:
            instance.status = CRITICAL
            instance.changed()
            self._changed_service(service, self.index + 1)
            self._changed_state()
            self._remind(remove_at, service, instance_id)

    # -- snapshot ----------------------------------------------------------------

    def _changed_state(self) -> None:
        if self.data_dir is None:
            return
        self._dirty = True
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = asyncio.get_running_loop().create_task(self._snapshot_soon())

    async def _snapshot_soon(self) -> None:
        while self._dirty and not self.closing:
            await asyncio.sleep(self.snapshot_delay)    # debounce: gather a burst of changes
            self._dirty = False
            body = self._snapshot_body()
            try:
                await asyncio.to_thread(self._write_snapshot, body)
            except OSError as exc:
                log.error("cannot write the registry snapshot %s: %s", self.snapshot_path, exc)

    def _snapshot_body(self) -> bytes:
        instances = [i.to_json() for found in self._services.values() for i in found.values()]
        return dumps({"version": 1, "index": self.index, "serviceIndex": self._service_index,
                      "instances": instances})

    def _write_snapshot(self, body: bytes) -> None:
        path = self.snapshot_path
        if path is None:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _restore(self) -> None:
        path = self.snapshot_path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_bytes())
            instances = [Instance.from_json(item) for item in data.get("instances", [])]
            service_index = {str(k): int(v) for k, v in data.get("serviceIndex", {}).items()}
            index = int(data.get("index", 0))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable registry snapshot %s: %s", path, exc)
            return
        for instance in instances:
            self._services.setdefault(instance.service, {})[instance.id] = instance
            self._count_token(instance, 1)
            # A fresh window from now: the registry was down, not the instances.
            critical_in = instance.ttl / 1000 if instance.status == PASSING else 0.0
            self._arm(instance, critical_in)
        self._service_index = service_index
        self.index = max([self.index, index, *service_index.values()])
        log.info("restored %d instances from %s (index %d)", len(instances), path, self.index)
