"""``discovery: {type: registry}`` -- endpoints from meshgate's own service registry.

Theory of operation
-------------------
The provider holds one server-sent-events stream open on
``GET {url}/v1/watch/{service}``. The registry sends ``event: snapshot``
with the whole instance list at once and after every change, and a
``: keep-alive`` comment when idle; each snapshot becomes one endpoint set.
An instance whose ``status`` is ``critical`` (missed heartbeats) is reported
with ``healthy=False``, or left out when ``onlyPassing`` is set. A
``weight`` in an instance's metadata (1-128) is its balancing weight.

When the stream cannot be opened, breaks, ends, or stays silent for longer
than a few keep-alive periods (a half-open connection), the provider keeps
its set, turns stale (logged once), and reconnects with jittered exponential
backoff; the first snapshot on the new stream resyncs it completely, so
changes made during the outage are not lost.

The registry URL is, in order: the ``url`` param, the system default handed
in by the control plane, ``$MESHGATE_REGISTRY``, ``http://127.0.0.1:8500``.

A registry started with ``--require-token-for-reads`` needs a token on the
watch: the ``tokenFile`` param, else ``$MESHGATE_JOIN_TOKEN``, else
``$MESHGATE_REGISTRY_TOKEN`` (read at each connection, so a rotated file is
picked up). A 401/403 is reported (once, as the source turning stale) with
what to set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, field_validator

from meshgate.config.base import MeshModel
from meshgate.discovery import DISCOVERY, EndpointSpec, ProviderContext, ProviderSpec
from meshgate.discovery._source import Backoff, SourceProvider
from meshgate.registry.tokens import client_token

log = logging.getLogger("meshgate.discovery")

DEFAULT_REGISTRY = "http://127.0.0.1:8500"
SILENCE = 45.0      # seconds without a byte (3 registry keep-alives): the stream is dead


class RegistryParams(MeshModel):
    url: str | None = Field(None, description="Registry base URL (default: system setting, "
                            "$MESHGATE_REGISTRY, then http://127.0.0.1:8500)")
    service: str | None = Field(None, description="Service name (default: the "
                                "serviceEndpoint's name)")
    onlyPassing: bool = Field(False, description="Leave critical instances out instead of "
                              "reporting them unhealthy")
    tokenFile: str | None = Field(None, description="File holding a registry token, for a "
                                  "registry that requires one to read (default: "
                                  "$MESHGATE_JOIN_TOKEN, then $MESHGATE_REGISTRY_TOKEN)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value


class RegistryError(Exception):
    pass


def registry_url(params: RegistryParams, context: ProviderContext) -> str:
    url = (params.url or context.registry_url or os.environ.get("MESHGATE_REGISTRY")
           or DEFAULT_REGISTRY)
    return url.rstrip("/")


def instance_spec(item: dict[str, Any]) -> EndpointSpec:
    """One registry instance -> an endpoint (``ValueError``/``KeyError`` if malformed)."""
    metadata = item.get("metadata")
    pairs = [(str(k), str(v)) for k, v in metadata.items()] if isinstance(metadata, dict) else []
    tags = item.get("tags")
    if isinstance(tags, list) and tags:
        pairs.append(("tags", ",".join(str(t) for t in tags)))
    port = int(item["port"])
    weight = metadata.get("weight", 1) if isinstance(metadata, dict) else 1
    return EndpointSpec(
        host=str(item["address"]), port=port, scheme=str(item.get("scheme") or "http"),
        weight=min(128, max(1, int(weight) if str(weight).isdigit() else 1)),
        zone=str(item.get("zone") or ""), version=str(item.get("version") or ""),
        id=str(item.get("id") or f"{item['address']}:{port}"),
        healthy=item.get("status", "passing") == "passing",
        metadata=tuple(sorted(pairs)))


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` of each server-sent event (comments are skipped)."""
    event = "message"
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


class RegistryProvider(SourceProvider):
    kind = "registry"

    def __init__(self, service: str, url: str, registry_service: str, only_passing: bool,
                 on_stale: Callable[[bool], None] | None = None,
                 token_file: str | None = None) -> None:
        super().__init__(service, on_stale)
        self.token_file = token_file
        self.url = url
        self.registry_service = registry_service
        self.only_passing = only_passing
        self._skipped: set[str] = set()

    @property
    def watch_url(self) -> str:
        return f"{self.url}/v1/watch/{quote(self.registry_service, safe='')}"

    async def _run(self) -> None:
        backoff = Backoff(0.2, 5.0)
        timeout = httpx.Timeout(5.0, read=SILENCE)
        async with httpx.AsyncClient(timeout=timeout) as client:
            while True:
                synced = False
                try:
                    async for specs in self._snapshots(client):
                        synced = True
                        self._ok()
                        self._emit(specs)
                    raise RegistryError("the watch stream ended")
                except (httpx.HTTPError, RegistryError, ValueError, KeyError,
                        TypeError, OSError) as exc:
                    self._fail(f"registry {self.url}: {_describe(exc)}")
                if synced:
                    backoff.reset()
                await asyncio.sleep(backoff.next())

    async def _snapshots(self, client: httpx.AsyncClient) -> AsyncIterator[list[EndpointSpec]]:
        headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
        token = client_token(self.token_file)
        if token:
            headers["authorization"] = f"Bearer {token}"
        async with client.stream("GET", self.watch_url, headers=headers) as response:
            if response.status_code in (401, 403):
                raise RegistryError(
                    f"the registry refused the watch ({response.status_code}): it requires "
                    "a token to read; set the discovery's tokenFile, $MESHGATE_JOIN_TOKEN or "
                    "$MESHGATE_REGISTRY_TOKEN")
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")[:200]
                raise RegistryError(f"watch answered HTTP {response.status_code}: {body}")
            async for event, data in sse_events(response.aiter_lines()):
                if event == "snapshot":
                    yield self._parse(data)

    def _parse(self, data: str) -> list[EndpointSpec]:
        body = json.loads(data)
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list):
            raise RegistryError("snapshot without an instances list")
        specs = []
        for item in instances:
            try:
                spec = instance_spec(item)
            except (KeyError, TypeError, ValueError) as exc:
                self._skip(str(item.get("id") if isinstance(item, dict) else item),
                           f"malformed ({_describe(exc)})")
                continue
            if spec.scheme not in ("http", "https"):
                self._skip(spec.id, f"scheme {spec.scheme!r} is not http or https")
                continue
            if self.only_passing and not spec.healthy:
                continue
            specs.append(spec)
        return specs

    def _skip(self, ident: str, why: str) -> None:
        if ident not in self._skipped:
            self._skipped.add(ident)
            log.warning("discovery %s (registry): skipping instance %s: %s",
                        self.service, ident, why)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _build(params: RegistryParams, context: ProviderContext) -> RegistryProvider:
    return RegistryProvider(context.service, registry_url(params, context),
                            params.service or context.service, params.onlyPassing,
                            context.on_stale, params.tokenFile)


DISCOVERY.add(ProviderSpec("registry", RegistryParams, _build,
                           "meshgate's service registry, watched over server-sent events"))
