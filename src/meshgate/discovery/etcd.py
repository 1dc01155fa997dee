"""``discovery: {type: etcd}`` -- endpoints stored as JSON values under a key prefix.

Theory of operation
-------------------
Each key under ``prefix`` is one instance; its value is a JSON object::

    {"address": "10.0.0.5", "port": 8080, "scheme": "http", "weight": 2,
     "zone": "eu-1", "version": "v2", "id": "users-1", "healthy": true}

(``host`` is accepted for ``address``; only it and ``port`` are required; ``id``
defaults to the key with the prefix removed.) A value that is not such an
object is skipped and logged once, never fatal.

The loop is the usual etcd pattern: list the prefix (``get_prefix``, which
also gives the store revision), emit the set, then watch from revision + 1
and apply each batch of puts/deletes to the local map, emitting after each
batch. A broken or cancelled watch (etcd down, revision compacted) raises;
the provider then keeps its set, turns stale, backs off with jitter, and
starts over with a fresh list, so nothing that changed meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from pydantic import Field, field_validator

from meshgate.config.base import MeshModel, Millis
from meshgate.discovery import DISCOVERY, EndpointSpec, ProviderContext, ProviderSpec
from meshgate.discovery._source import Backoff, SourceProvider
from meshgate.etcdv3 import EtcdClient

log = logging.getLogger("meshgate.discovery")


class EtcdParams(MeshModel):
    endpoints: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:2379"],
                                 description="etcd client URLs")
    prefix: str = Field(description="Key prefix of the instances, e.g. /services/users/")
    timeout: Millis = Field(5000, description="Timeout of one etcd request")

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one etcd URL")
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"expected an http(s) URL, got {url!r}")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value:
            raise ValueError("expected a key prefix")
        return value


def parse_instance(key: str, value: bytes, prefix: str) -> EndpointSpec:
    """One etcd value -> an endpoint (``ValueError`` if it is not a valid instance)."""
    try:
        data = json.loads(value)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    host = data.get("address") or data.get("host")
    port = data.get("port")
    if not isinstance(host, str) or not host:
        raise ValueError("no address")
    if isinstance(port, bool) or not isinstance(port, (int, str)) or not str(port).isdigit() \
            or not 0 < int(port) < 65536:
        raise ValueError("no valid port")
    scheme = str(data.get("scheme") or "http")
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme {scheme!r}")
    weight = data.get("weight", 1)
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    return EndpointSpec(
        host=host, port=int(port), scheme=scheme,
        weight=max(1, int(weight)) if isinstance(weight, (int, float)) else 1,
        zone=str(data.get("zone") or ""), version=str(data.get("version") or ""),
        id=str(data.get("id") or key.removeprefix(prefix) or f"{host}:{port}"),
        healthy=data.get("healthy", True) is not False,
        metadata=tuple(sorted((str(k), str(v)) for k, v in metadata.items())))


class EtcdProvider(SourceProvider):
    kind = "etcd"

    def __init__(self, service: str, params: EtcdParams,
                 on_stale: Callable[[bool], None] | None = None) -> None:
        super().__init__(service, on_stale)
        self.params = params
        self.client = EtcdClient(params.endpoints, timeout=(params.timeout or 5000) / 1000)
        self._instances: dict[str, EndpointSpec] = {}
        self._bad: set[tuple[str, bytes]] = set()     # logged once each
        self._listed = False

    async def _run(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            self._listed = False
            try:
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._fail(str(exc) or type(exc).__name__)
            if self._listed:            # it worked for a while: start the delays over
                backoff.reset()
            await asyncio.sleep(backoff.next())

    async def _sync(self) -> None:
        """List, then watch until the stream breaks (which raises)."""
        prefix = self.params.prefix
        revision, items = await self.client.get_prefix(prefix)
        self._instances = {}
        for key, value in items:
            self._put(key, value)
        self._listed = True
        self._ok()
        self._emit(list(self._instances.values()))
        async for batch in self.client.watch_prefix(prefix, revision + 1):
            for kind, key, value in batch:
                if kind == "delete":
                    self._instances.pop(key, None)
                else:
                    self._put(key, value)
            self._emit(list(self._instances.values()))

    def _put(self, key: str, value: bytes) -> None:
        try:
            self._instances[key] = parse_instance(key, value, self.params.prefix)
        except ValueError as exc:
            self._instances.pop(key, None)
            if (key, value) not in self._bad:
                if len(self._bad) > 1000:
                    self._bad.clear()
                self._bad.add((key, value))
                log.warning("discovery %s (etcd): skipping %s: %s", self.service, key, exc)

    async def _close(self) -> None:
        await self.client.close()


def _build(params: EtcdParams, context: ProviderContext) -> EtcdProvider:
    return EtcdProvider(context.service, params, context.on_stale)


DISCOVERY.add(ProviderSpec("etcd", EtcdParams, _build,
                           "JSON instances under an etcd key prefix, listed then watched"))
