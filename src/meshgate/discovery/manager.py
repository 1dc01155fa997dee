"""The control-plane side of discovery: providers + health checks -> endpoint sets.

Theory of operation
-------------------
The master owns one ``DiscoveryManager``. ``apply(gateway)`` looks at every
serviceEndpoint and manages those that need the control plane: a
``discovery`` type other than ``static``, or a ``healthCheck`` (then a
``static`` provider stands in for the ``url`` / ``urls``). Each managed
service gets a provider, an optional ``HealthChecker`` and one task that
follows ``provider.updates()``. A service is identified by its *definition*
-- discovery + healthCheck + urls, as canonical JSON: an unchanged one keeps
running untouched across ``apply`` calls, a changed one is replaced, a
removed one is stopped.

Whenever the provider reports a set or the checker flips an endpoint, the
manager recomputes the *combined* set: every endpoint the source reports,
``healthy = source health AND active check`` (the check only when one is
configured). ``publish(service, endpoints)`` is called only if that list
differs from the one published last; ``current()`` keeps the last one for
workers that start later. A provider error makes the provider stale but
never changes its set, so it never empties a published set.

Replacing a service (say its healthCheck interval changed) must not flash
every endpoint unhealthy while the new checker runs its first round: until
an endpoint's first new check finishes, the old checker's verdict for the
same key is carried over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshgate.config.model import GatewayConfig, ServiceEndpoint
from meshgate.discovery import DISCOVERY, EndpointSpec, Provider, ProviderContext
from meshgate.discovery.static import spec_from_url
from meshgate.upstream.health import HealthChecker

log = logging.getLogger("meshgate.discovery")

Publish = Callable[[str, list[dict[str, Any]]], None]


def managed(service: ServiceEndpoint) -> bool:
    """Does this serviceEndpoint need the control plane?"""
    dynamic = service.discovery is not None and service.discovery.get("type") != "static"
    return dynamic or service.healthCheck is not None


def definition(service: ServiceEndpoint) -> str:
    """What, when changed, restarts a service's provider and checker."""
    check = service.healthCheck.model_dump(mode="json") if service.healthCheck else None
    return json.dumps({"discovery": service.discovery, "healthCheck": check,
                       "targets": service.weighted_targets}, sort_keys=True, default=str)


@dataclass(eq=False)
class _Service:
    name: str
    kind: str
    definition: str
    provider: Provider | None
    checker: HealthChecker | None
    specs: list[EndpointSpec] = field(default_factory=list)
    received: bool = False                 # the provider reported a first set
    updated: float | None = None           # unix time of the last set
    published: list[dict[str, Any]] | None = None
    publishes: int = 0
    checked: dict[str, bool] = field(default_factory=dict)   # last finished check verdicts
    carried: dict[str, bool] = field(default_factory=dict)   # the predecessor's verdicts
    error: str | None = None               # the provider could not even start
    task: asyncio.Task[None] | None = None


class DiscoveryManager:
    def __init__(self, publish: Publish, *, registry_url: str | None = None) -> None:
        self._publish = publish
        self.registry_url = registry_url
        self._services: dict[str, _Service] = {}
        self._lock = asyncio.Lock()

    async def apply(self, gateway: GatewayConfig) -> None:
        """(Re)configure from ``gateway.serviceEndpoints`` (see the module docstring)."""
        async with self._lock:
            wanted = {name: se for name, se in gateway.serviceEndpoints.items() if managed(se)}
            for name in list(self._services):
                old = self._services[name]
                if name in wanted and definition(wanted[name]) == old.definition:
                    continue
                del self._services[name]
                await self._stop(old)
                if name in wanted:
                    self._services[name] = await self._start(name, wanted[name], old)
                else:
                    log.info("discovery %s: no longer managed", name)
            for name, se in wanted.items():
                if name not in self._services:
                    self._services[name] = await self._start(name, se, None)

    def current(self) -> dict[str, list[dict[str, Any]]]:
        """The last published set of each managed service that has one."""
        return {name: list(svc.published) for name, svc in self._services.items()
                if svc.published is not None}

    def clusters(self) -> dict[str, Any]:
        """Per service: provider, staleness and each endpoint's health, for ``/clusters``."""
        out: dict[str, Any] = {}
        for name, svc in self._services.items():
            provider = svc.provider
            combined = {e["key"]: e["healthy"] for e in self._combined(svc)}
            endpoints = []
            for spec in svc.specs:
                check = None
                if svc.checker is not None:
                    with contextlib.suppress(KeyError):
                        check = svc.checker.status(spec.key)
                endpoints.append({
                    "key": spec.key, "url": spec.url, "zone": spec.zone,
                    "weight": spec.weight, "version": spec.version, "id": spec.id,
                    "sourceHealthy": spec.healthy, "check": check,
                    "healthy": combined.get(spec.key, False),
                    "metadata": dict(spec.metadata)})
            out[name] = {
                "provider": svc.kind,
                "stale": bool(provider.stale) if provider is not None else True,
                "error": (provider.error if provider is not None else None) or svc.error,
                "healthCheck": svc.checker is not None,
                "synced": svc.received,
                "lastUpdate": svc.updated,
                "endpoints": endpoints,
            }
        return out

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """Gauges and counters (``*_total``) of every managed service."""
        out: list[tuple[str, dict[str, str], float]] = []
        for name, svc in self._services.items():
            labels = {"service": name}
            provider = svc.provider
            stale = provider.stale if provider is not None else True
            published = svc.published or []
            out.append(("meshgate_discovery_endpoints", labels, float(len(published))))
            out.append(("meshgate_discovery_healthy_endpoints", labels,
                        float(sum(1 for e in published if e["healthy"]))))
            out.append(("meshgate_discovery_stale", labels, 1.0 if stale else 0.0))
            out.append(("meshgate_discovery_updates_total", labels,
                        float(getattr(provider, "changes", 0))))
            out.append(("meshgate_discovery_errors_total", labels,
                        float(getattr(provider, "errors", 0) + (1 if svc.error else 0))))
            out.append(("meshgate_discovery_publishes_total", labels, float(svc.publishes)))
            for e in published:
                out.append(("meshgate_endpoint_healthy", {"service": name, "endpoint": e["key"]},
                            1.0 if e["healthy"] else 0.0))
        return out

    async def stop(self) -> None:
        async with self._lock:
            services, self._services = list(self._services.values()), {}
            for svc in services:
                await self._stop(svc)

    # -- one service ----------------------------------------------------------------

    async def _start(self, name: str, se: ServiceEndpoint, previous: _Service | None,
                     ) -> _Service:
        raw = se.discovery or {"type": "static"}
        kind = str(raw.get("type", "static"))
        svc = _Service(name, kind, definition(se), None, None)
        if previous is not None:
            svc.published = previous.published
            svc.publishes = previous.publishes
            svc.carried = dict(previous.checked)
        if se.healthCheck is not None:
            svc.checker = HealthChecker(name, se.healthCheck, lambda: self._refresh(svc),
                                        protocol=se.protocol)
            await svc.checker.start()
        try:
            spec = DISCOVERY.get(kind)
            if spec is None:
                raise ValueError(f"unknown discovery type {kind!r}")
            params = spec.params.model_validate({k: v for k, v in raw.items() if k != "type"})
            static = [spec_from_url(url, weight, zone)
                      for url, weight, zone in se.weighted_targets]
            context = ProviderContext(service=name, static=static,
                                      registry_url=self.registry_url)
            svc.provider = spec.build(params, context)
            await svc.provider.start()
        except Exception as exc:
            svc.error = f"{type(exc).__name__}: {exc}"
            log.error("discovery %s (%s) cannot start: %s", name, kind, svc.error)
            return svc
        svc.task = asyncio.create_task(self._follow(svc), name=f"discovery-follow:{name}")
        log.info("discovery %s: %s provider started%s", name, kind,
                 " with health checks" if svc.checker else "")
        return svc

    async def _stop(self, svc: _Service) -> None:
        if svc.task is not None:
            svc.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await svc.task
        for part in (svc.provider, svc.checker):
            if part is not None:
                try:
                    await part.stop()
                except Exception:
                    log.exception("discovery %s: stopping %s failed", svc.name, svc.kind)

    async def _follow(self, svc: _Service) -> None:
        assert svc.provider is not None
        async for specs in svc.provider.updates():
            svc.specs = list(specs)
            svc.received = True
            svc.updated = time.time()
            if svc.checker is not None:
                svc.checker.set_targets(svc.specs)
            self._refresh(svc)

    def _refresh(self, svc: _Service) -> None:
        """Recompute the combined set and publish it if it changed."""
        if not svc.received or self._services.get(svc.name) is not svc:
            return
        combined = self._combined(svc)
        if combined == svc.published:
            return
        svc.published = combined
        svc.publishes += 1
        try:
            self._publish(svc.name, combined)
        except Exception:
            log.exception("discovery %s: publishing the endpoint set failed", svc.name)

    def _combined(self, svc: _Service) -> list[dict[str, Any]]:
        by_key: dict[str, dict[str, Any]] = {}
        for spec in svc.specs:
            healthy = spec.healthy and self._check_verdict(svc, spec.key)
            seen = by_key.get(spec.key)
            if seen is not None and (seen["healthy"] or not healthy):
                continue            # the same address twice: keep one, a healthy one
            entry = by_key[spec.key] = {
                "key": spec.key, "host": spec.host, "port": spec.port, "scheme": spec.scheme,
                "path": spec.path, "weight": spec.weight, "zone": spec.zone,
                "version": spec.version, "id": spec.id or f"{spec.host}:{spec.port}",
                "healthy": healthy}
            if spec.protocol:        # it takes h2c (a sidecar): see Cluster._endpoint
                entry["protocol"] = spec.protocol
        return list(by_key.values())

    def _check_verdict(self, svc: _Service, key: str) -> bool:
        checker = svc.checker
        if checker is None:
            return True
        try:
            pending = checker.status(key)["lastCheck"] is None
        except KeyError:
            pending = True
        if not pending:
            verdict = checker.is_healthy(key)
            svc.checked[key] = verdict
            return verdict
        return svc.carried.get(key, False)
