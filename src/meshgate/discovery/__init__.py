"""Discovery providers: where a serviceEndpoint's endpoints come from.

Theory of operation
-------------------
A provider is one module in this package that registers a ``ProviderSpec``:
its ``name`` (the ``discovery.type`` in config), a pydantic ``params`` model
(the other keys of the ``discovery`` block) and ``build(params, context)``
returning a ``Provider``. Providers run in the master process (the control
plane), never in workers: the master merges what they report with active
health checks and pushes finished endpoint sets to every worker.

The interface is deliberately small, so Kubernetes or Consul is one module::

    class Provider(Protocol):
        async def start(self) -> None      # connect, first fetch in background
        async def stop(self) -> None
        def updates(self) -> AsyncIterator[list[EndpointSpec]]

``updates()`` yields a complete endpoint set each time it changes (never a
diff). A provider that loses its source keeps quiet (yields nothing new),
logs, and marks itself ``stale`` so metrics and ``/clusters`` say so: it never
yields an empty set because of its own error -- only when the source really
says the service has no instances.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from meshgate.plugins import Registry


@dataclass(frozen=True)
class EndpointSpec:
    """One instance of a service, as a provider reports it."""

    host: str
    port: int
    scheme: str = "http"
    path: str = ""                 # base path prepended to requests (static urls)
    weight: int = 1
    zone: str = ""
    version: str = ""
    id: str = ""                   # instance id; defaults to host:port
    healthy: bool = True           # the source's own view (registry status)
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """Identity of the endpoint across updates (pools are kept by key)."""
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    @property
    def protocol(self) -> str:
        """``h2c`` when the instance says its port also takes HTTP/2 by prior
        knowledge (metadata ``protocol: h2c``, as a meshgate sidecar registers
        itself), else ``""``: a ``protocol: auto`` serviceEndpoint speaks h2c to it."""
        for name, value in self.metadata:
            if name == "protocol" and value.strip().lower() == "h2c":
                return "h2c"
        return ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


class Provider(Protocol):
    stale: bool                     # lost its source; serving the last known set
    error: str | None               # why, for logs and /clusters

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def updates(self) -> AsyncIterator[list[EndpointSpec]]: ...


@dataclass
class ProviderContext:
    """What a provider factory may use."""

    service: str                    # the serviceEndpoint name
    static: list[EndpointSpec] = field(default_factory=list)   # from url / urls
    registry_url: str | None = None  # system default for type: registry
    on_stale: Callable[[bool], None] | None = None


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    params: type[BaseModel]
    build: Callable[[Any, ProviderContext], Provider]
    description: str = ""


DISCOVERY: Registry[ProviderSpec] = Registry("discovery provider", "meshgate.discovery")


def validate_discovery(raw: dict[str, Any]) -> BaseModel:
    """Validate a ``discovery`` block with its provider's params model.

    Raises ``ValueError`` for an unknown type and ``pydantic.ValidationError``
    for bad params (the caller re-roots its locations).
    """
    kind = raw.get("type", "static")
    spec = DISCOVERY.get(kind)
    if spec is None:
        raise ValueError(f"unknown discovery type {kind!r}; expected one of "
                         + ", ".join(DISCOVERY.names()))
    params = {k: v for k, v in raw.items() if k != "type"}
    return spec.params.model_validate(params)
