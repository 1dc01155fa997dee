"""What every registry store shares: the instance model, indexes, change waits.

Theory of operation
-------------------
An ``Instance`` is one registration of a service (address, port, tags, ...)
plus its health: ``passing`` while heartbeats arrive within ``ttl`` ms,
``critical`` after that, and removed ``deregisterCriticalAfter`` ms later.
``InstanceSpec`` is the body of a registration, validated by pydantic.

``BaseStore`` holds the local view every store serves reads from:
``services -> {id -> Instance}``, a global ``index`` that grows with every
visible change, and per service the index of its last change (kept after the
service empties, so a watcher of it still wakes). The memory store numbers
changes itself; the etcd store uses etcd revisions, so indexes agree across
replicas. A service never seen reports ``INITIAL_INDEX`` (1), lower than any
change's index.

Watchers (blocking queries, SSE) wait on ``wait_change(index, service,
timeout)``: one shared ``asyncio.Event`` is set and replaced on each change, so
any number of waiters costs nothing until something changes; each re-checks
its own index and sleeps again if its service did not move.

Reads are served as encoded JSON: each instance keeps its own encoding (made
when it is stored, dropped by ``changed()``), a service's list is cached per
service index, and the full listing joins those, so even a first listing of
ten thousand instances only concatenates bytes. (``lastHeartbeat`` in a listing may therefore lag
until the next change of its service; heartbeats alone are not changes.)

Each instance records the token that registered it (``registeredBy``, see
``auth``); the view counts instances per token for the per-token cap, and
``tokens`` is where the store keeps token records (in memory by default).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from meshgate.registry.tokens import TokenSource

INITIAL_INDEX = 1
DEFAULT_TTL_MS = 10_000
DEFAULT_DEREGISTER_CRITICAL_AFTER_MS = 30_000
PASSING, CRITICAL = "passing", "critical"
DEFAULT_PORT = 8500
DEFAULT_ETCD_PREFIX = "/meshgate/registry"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,254}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})"
                   r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
_LABEL = Field(None, max_length=255)


def check_name(kind: str, value: str) -> str:
    """Service names and instance ids: letters, digits and ``_.:@-`` (no ``/``)."""
    if not _NAME.match(value):
        raise ValueError(f"invalid {kind} {value!r}: expected 1-255 of letters, digits "
                         "and _.:@- starting with a letter or digit")
    return value


def now_ms() -> int:
    return int(time.time() * 1000)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class InstanceSpec(BaseModel):
    """The body of ``PUT /v1/services/{service}/instances/{id}``."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=1, max_length=255, description="Host name or IP")
    port: int = Field(ge=1, le=65535)
    scheme: str = Field("http", pattern=r"^[a-z][a-z0-9+.-]*$", description="http, https, ...")
    zone: str | None = _LABEL
    version: str | None = _LABEL
    tags: list[str] = Field(default_factory=list, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)
    ttl: int = Field(DEFAULT_TTL_MS, ge=50, le=86_400_000,
                     description="ms without a heartbeat before the instance is critical")
    deregisterCriticalAfter: int | None = Field(
        None, ge=0, le=86_400_000,
        description="ms an instance stays critical before removal (default: the registry's)")
    # A client may send back an instance it read: these must match the path.
    id: str | None = None
    service: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        """An IP address or a DNS name: nothing a URL could be built around."""
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        if not _HOST.match(value) or value.replace(".", "").isdigit():
            raise ValueError(f"invalid address {value!r}: expected an IP address or a DNS name")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        if any(len(tag) > 255 for tag in value):
            raise ValueError("a tag is longer than 255 characters")
        return value


@dataclass(slots=True, eq=False)
class Instance:
    service: str
    id: str
    address: str
    port: int
    scheme: str
    zone: str | None
    version: str | None
    tags: list[str]
    metadata: dict[str, Any]
    ttl: int
    deregister_critical_after: int
    registered_by: str | None = None     # the token id (see ``auth``)
    status: str = PASSING
    registered_at: int = field(default_factory=now_ms)
    last_heartbeat: int = field(default_factory=now_ms)
    encoded_json: bytes | None = field(default=None, repr=False)

    def encoded(self) -> bytes:
        """``to_json()`` encoded, kept until ``changed()`` says the instance moved."""
        if self.encoded_json is None:
            self.encoded_json = dumps(self.to_json())
        return self.encoded_json

    def changed(self) -> None:
        self.encoded_json = None

    @classmethod
    def from_spec(cls, service: str, instance_id: str, spec: InstanceSpec,
                  default_grace_ms: int, registered_by: str | None = None) -> Instance:
        grace = spec.deregisterCriticalAfter
        return cls(service, instance_id, spec.address, spec.port, spec.scheme, spec.zone,
                   spec.version, list(spec.tags), dict(spec.metadata), spec.ttl,
                   default_grace_ms if grace is None else grace, registered_by)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        return cls(data["service"], data["id"], data["address"], int(data["port"]),
                   data.get("scheme", "http"), data.get("zone"), data.get("version"),
                   list(data.get("tags") or []), dict(data.get("metadata") or {}),
                   int(data["ttl"]), int(data["deregisterCriticalAfter"]),
                   data.get("registeredBy"), data.get("status", PASSING),
                   int(data.get("registeredAt", now_ms())),
                   int(data.get("lastHeartbeat", now_ms())))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "service": self.service, "address": self.address,
                "port": self.port, "scheme": self.scheme, "zone": self.zone,
                "version": self.version, "tags": self.tags, "metadata": self.metadata,
                "ttl": self.ttl, "deregisterCriticalAfter": self.deregister_critical_after,
                "status": self.status, "registeredAt": self.registered_at,
                "lastHeartbeat": self.last_heartbeat, "registeredBy": self.registered_by}

    def same_registration(self, other: Instance) -> bool:
        """Equal in everything a registration sets (not health or timestamps)."""
        return (self.address, self.port, self.scheme, self.zone, self.version, self.tags,
                self.metadata, self.ttl, self.deregister_critical_after,
                self.registered_by) == (
                other.address, other.port, other.scheme, other.zone, other.version,
                other.tags, other.metadata, other.ttl, other.deregister_critical_after,
                other.registered_by)


class BaseStore:
    """The local view of the registry and its change notification."""

    def __init__(self, *, deregister_critical_after_ms: int =
                 DEFAULT_DEREGISTER_CRITICAL_AFTER_MS) -> None:
        self.default_grace_ms = deregister_critical_after_ms
        self.index = INITIAL_INDEX
        self.closing = False
        self._services: dict[str, dict[str, Instance]] = {}
        self._service_index: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._fragments: dict[str, tuple[int, bytes]] = {}
        self._full: tuple[int, bytes] | None = None
        self._per_token: Counter[str] = Counter()
        self.tokens = TokenSource()

    # -- the interface the API calls (writes are the subclass's) ---------------

    async def start(self) -> None:
        pass

    def release_watchers(self) -> None:
        """End every blocking query and watch stream now (the registry is stopping)."""
        self.closing = True
        self._notify()

    async def close(self) -> None:
        self.release_watchers()

    async def register(self, service: str, instance_id: str, spec: InstanceSpec,
                       registered_by: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    async def heartbeat(self, service: str, instance_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    async def deregister(self, service: str, instance_id: str) -> bool:
        raise NotImplementedError

    def service_index(self, service: str | None) -> int:
        if service is None:
            return self.index
        return self._service_index.get(service, INITIAL_INDEX)

    def instances(self, service: str) -> list[dict[str, Any]]:
        found = self._services.get(service, {})
        return [found[i].to_json() for i in sorted(found)]

    def services(self) -> dict[str, list[dict[str, Any]]]:
        return {name: self.instances(name) for name in sorted(self._services)}

    def get(self, service: str, instance_id: str) -> Instance | None:
        return self._services.get(service, {}).get(instance_id)

    def count(self, service: str) -> int:
        return len(self._services.get(service, ()))

    def count_registered_by(self, token_id: str) -> int:
        return self._per_token[token_id]

    async def wait_change(self, index: int, service: str | None, timeout: float) -> bool:
        """Wait until the index of ``service`` (all if None) exceeds ``index``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.service_index(service) <= index and not self.closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            event = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return False
        return self.service_index(service) > index

    # -- encoded reads ----------------------------------------------------------

    def _fragment(self, service: str) -> bytes:
        index = self.service_index(service)
        cached = self._fragments.get(service)
        if cached is not None and cached[0] == index:
            return cached[1]
        found = self._services.get(service, {})
        encoded = b"[" + b",".join(found[i].encoded() for i in sorted(found)) + b"]"
        if found:
            self._fragments[service] = (index, encoded)
        return encoded

    def encoded_service(self, service: str) -> tuple[int, bytes]:
        index = self.service_index(service)
        return index, b"".join((b'{"index":', str(index).encode(), b',"service":',
                                dumps(service), b',"instances":', self._fragment(service),
                                b"}"))

    def encoded_all(self) -> tuple[int, bytes]:
        index = self.index
        if self._full is not None and self._full[0] == index:
            return self._full
        parts = [dumps(name) + b":" + self._fragment(name) for name in sorted(self._services)]
        body = b"".join((b'{"index":', str(index).encode(), b',"services":{',
                         b",".join(parts), b"}}"))
        self._full = (index, body)
        return self._full

    # -- changes (subclasses call these) ----------------------------------------

    def _put(self, instance: Instance, index: int) -> None:
        instance.encoded()      # encoded at write time: a cold listing only joins bytes
        found = self._services.setdefault(instance.service, {})
        self._count_token(found.get(instance.id), -1)
        found[instance.id] = instance
        self._count_token(instance, 1)
        self._changed_service(instance.service, index)

    def _remove(self, service: str, instance_id: str, index: int) -> Instance | None:
        found = self._services.get(service)
        if found is None or instance_id not in found:
            return None
        instance = found.pop(instance_id)
        self._count_token(instance, -1)
        if not found:
            del self._services[service]
            self._fragments.pop(service, None)
        self._changed_service(service, index)
        return instance

    def _count_token(self, instance: Instance | None, delta: int) -> None:
        if instance is not None and instance.registered_by is not None:
            self._per_token[instance.registered_by] += delta
            if self._per_token[instance.registered_by] <= 0:
                del self._per_token[instance.registered_by]

    def _changed_service(self, service: str, index: int) -> None:
        self.index = max(self.index, index)
        self._service_index[service] = max(self._service_index.get(service, 0), index)
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()
