"""Policies: the actions of a pipeline, one module each, registered by name.

A policy spec names its parameter model (pydantic, validated at config load)
and a ``build(params, ctx)`` factory returning the action. An action is called
with the Exchange and returns:

* ``None`` -- carry on with the next step of the pipeline;
* ``True`` -- the action took the exchange over (responded, or proxied);
* an awaitable resolving to one of those, for actions that do I/O.

Actions that do not do I/O must not create coroutines (hot-path rule).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from meshgate.plugins import Registry

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange

Outcome = bool | Awaitable[bool | None] | None
Action = Callable[["Exchange"], Outcome]


class BuildContext:
    """What a policy factory may look up while the Snapshot is compiled."""

    def __init__(self, clusters: dict[str, Any], system: Any, pipeline: str,
                 endpoint_names: list[str], services: Services | None = None,
                 config_dir: Path | None = None, metrics: Any = None) -> None:
        self.clusters = clusters            # serviceEndpoint name -> Cluster
        self.system = system                # the SystemConfig
        self.pipeline = pipeline            # name of the pipeline being built
        self.endpoint_names = endpoint_names
        self.services = services if services is not None else Services()
        self.config_dir = config_dir        # the folder of gateway.config.yml
        self.metrics = metrics              # the worker's Metrics (counters of policies)


class Services:
    """Long-lived per-worker resources policies share (a store, a Redis client).

    They outlive Snapshots: a reload rebuilds policies, not connections.
    ``get(key, factory)`` makes the resource on first use.
    """

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}

    def get(self, key: str, factory: Callable[[], Any]) -> Any:
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = factory()
        return item

    def values(self) -> list[Any]:
        return list(self._items.values())


@dataclass(frozen=True)
class PolicySpec:
    name: str
    params: type[BaseModel]
    build: Callable[[Any, BuildContext], Action]
    description: str = ""


POLICIES: Registry[PolicySpec] = Registry("policy", "meshgate.policies")
