"""``discovery: {type: static}`` -- the serviceEndpoint's own ``url`` / ``urls``.

Theory of operation
-------------------
The endpoint set is fixed by the config, so the provider emits it once at
start and then stays quiet; a config change that alters the urls replaces
the provider. It exists so that a static serviceEndpoint with a
``healthCheck`` runs through the same control-plane path as a dynamic one.
``spec_from_url`` turns one configured URL into an ``EndpointSpec`` the same
way the worker's cluster reads it (default ports, base path without its
trailing slash).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from meshgate.config.base import MeshModel
from meshgate.discovery import DISCOVERY, EndpointSpec, ProviderContext, ProviderSpec
from meshgate.discovery._source import SourceProvider


def spec_from_url(url: str, weight: int = 1, zone: str = "") -> EndpointSpec:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    return EndpointSpec(host=host, port=port, scheme=parts.scheme or "http",
                        path=parts.path.rstrip("/"), weight=weight, zone=zone,
                        id=f"{host}:{port}")


class StaticParams(MeshModel):
    """No params: the endpoints are the serviceEndpoint's ``url`` / ``urls``."""


class StaticProvider(SourceProvider):
    kind = "static"

    def __init__(self, service: str, specs: list[EndpointSpec],
                 on_stale: Callable[[bool], None] | None = None) -> None:
        super().__init__(service, on_stale)
        self._static = list(specs)

    async def start(self) -> None:
        self._emit(self._static)       # known at once: no task needed

    async def _run(self) -> None:
        return None


def _build(params: StaticParams, context: ProviderContext) -> StaticProvider:
    return StaticProvider(context.service, context.static, context.on_stale)


DISCOVERY.add(ProviderSpec("static", StaticParams, _build,
                           "The serviceEndpoint's url / urls, as written"))
