"""Compile a validated config into the immutable Snapshot a worker serves from.

Everything that does not depend on the request is decided here: routes and
their order, pipelines flattened to (predicate, action) steps, clusters with
their pools. A reload compiles a new Snapshot next to the old one; clusters
whose definition did not change are carried over with their warm pools.

Route order follows Express Gateway: apiEndpoint entries are grouped by host
(groups in order of first appearance), and within a group keep config order.
An apiEndpoint served by several pipelines belongs to the last one, as in EG.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshgate.conditions import CONDITIONS, Predicate
from meshgate.gateway.pipeline import CompiledPipeline, Step
from meshgate.gateway.router import Route, Router
from meshgate.policies import POLICIES, BuildContext, Services
from meshgate.upstream.cluster import Cluster, build_cluster

if TYPE_CHECKING:
    from meshgate.config.loader import LoadedConfig
    from meshgate.server.context import WorkerContext


@dataclass
class Snapshot:
    config: LoadedConfig
    router: Router
    pipelines: dict[str, CompiledPipeline]
    clusters: dict[str, Cluster]
    cluster_keys: dict[str, str] = field(default_factory=dict)
    # Some proxy action tunnels WebSocket: HTTP/2 connections advertise
    # extended CONNECT (RFC 8441) to their clients.
    websocket: bool = False

    @property
    def server(self) -> Any:
        return self.config.gateway.server

    def retire(self, successor: Snapshot) -> None:
        """Close the pools of clusters the successor did not carry over."""
        kept = {id(c) for c in successor.clusters.values()}
        for cluster in self.clusters.values():
            if id(cluster) not in kept:
                cluster.close()

    def sweep(self, now: float) -> None:
        for cluster in self.clusters.values():
            cluster.sweep(now)


def compile_condition(use: Any) -> Predicate:
    spec = CONDITIONS.get(use.name)
    if spec is None:
        raise ValueError(f"unknown condition {use.name!r}")
    return spec.build(use.params, compile_condition)


def _cluster_key(svc: Any) -> str:
    return json.dumps(svc.model_dump(mode="json"), sort_keys=True, default=str)


def _build_clusters(cfg: LoadedConfig, ctx: WorkerContext,
                    previous: Snapshot | None) -> tuple[dict[str, Cluster], dict[str, str]]:
    clusters: dict[str, Cluster] = {}
    keys: dict[str, str] = {}
    for name, svc in cfg.gateway.serviceEndpoints.items():
        key = keys[name] = _cluster_key(svc)
        if previous is not None and previous.cluster_keys.get(name) == key:
            clusters[name] = previous.clusters[name]
            continue
        cluster = clusters[name] = build_cluster(ctx, name, svc, _options(svc.proxyOptions))
        known = ctx.endpoint_sets.get(name)
        if cluster.dynamic and known is not None:
            cluster.set_endpoints(known)    # the control plane's last word, until its next
        elif cluster.dynamic and not cluster.endpoints:
            cluster.awaiting_first = True   # discovery has not answered yet: park, don't 503
    return clusters, keys


def _options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if hasattr(options, "model_dump"):
        dumped: dict[str, Any] = options.model_dump(exclude_none=True)
        return dumped
    return dict(options)


def _build_pipeline(name: str, pipeline: Any, cfg: LoadedConfig,
                    clusters: dict[str, Cluster], services: Services,
                    metrics: Any = None) -> CompiledPipeline:
    ctx = BuildContext(clusters, cfg.system, name, list(pipeline.apiEndpoints), services,
                       cfg.directory, metrics)
    steps: list[Step] = []
    for use in pipeline.policies:
        spec = POLICIES.get(use.name)
        if spec is None:
            raise ValueError(f"unknown policy {use.name!r}")
        for step in use.steps:
            cond = compile_condition(step.condition) if step.condition is not None else None
            steps.append(Step(use.name, cond, spec.build(step.action, ctx)))
    return CompiledPipeline(name, tuple(steps))


def _compile_regex(pattern: str | None) -> re.Pattern[bytes] | None:
    return re.compile(pattern.encode()) if pattern else None


def _routes(cfg: LoadedConfig, pipelines: dict[str, CompiledPipeline]) -> list[Route]:
    served: dict[str, CompiledPipeline] = {}
    for name, spec in cfg.gateway.pipelines.items():
        for endpoint in spec.apiEndpoints:
            served[endpoint] = pipelines[name]
    groups: dict[str, list[tuple[str, Any]]] = {}
    for endpoint, entries in cfg.gateway.apiEndpoints.items():
        for entry in entries:
            host_key = entry.hostRegex or entry.host or "*"
            groups.setdefault(host_key, []).append((endpoint, entry))
    routes = _policy_routes(pipelines)
    for group in groups.values():
        for endpoint, entry in group:
            compiled = served.get(endpoint)
            if compiled is None:
                continue
            methods = (frozenset(m.upper().encode() for m in entry.methods)
                       if entry.methods else None)
            paths: list[str | None] = [None] if entry.pathRegex else list(entry.paths or ["*"])
            for path in paths:
                routes.append(Route(
                    order=len(routes), endpoint=endpoint, pipeline=compiled,
                    host=entry.host or "*", path=path, methods=methods,
                    scopes=tuple(entry.scopes or ()),
                    path_regex=_compile_regex(entry.pathRegex),
                    host_regex=_compile_regex(entry.hostRegex),
                    metric_key=(endpoint, compiled.name)))
    return routes


def _policy_routes(pipelines: dict[str, CompiledPipeline]) -> list[Route]:
    """Routes a policy serves on every host, ahead of the apiEndpoints.

    An action may list ``gateway_routes``: ``[(express path, action)]`` -- the
    oauth2 policy's ``/oauth2/*`` authorization server, which Express Gateway
    mounted on the gateway itself. The first pipeline to offer a path wins.
    """
    routes: list[Route] = []
    seen: set[str] = set()
    for pipeline in pipelines.values():
        for step in pipeline.steps:
            for path, action in getattr(step.action, "gateway_routes", ()):
                if path in seen:
                    continue
                seen.add(path)
                served = CompiledPipeline(pipeline.name, (Step(step.policy, None, action),))
                routes.append(Route(order=len(routes), endpoint=step.policy, pipeline=served,
                                    host="*", path=path, methods=None,
                                    metric_key=(step.policy, pipeline.name)))
    return routes


def compile_snapshot(cfg: LoadedConfig, ctx: WorkerContext,
                     previous: Snapshot | None = None) -> Snapshot:
    clusters, keys = _build_clusters(cfg, ctx, previous)
    pipelines = {name: _build_pipeline(name, p, cfg, clusters, ctx.services, ctx.metrics)
                 for name, p in cfg.gateway.pipelines.items()}
    router = Router(_routes(cfg, pipelines))
    return Snapshot(cfg, router, pipelines, clusters, keys, _tunnels_websocket(pipelines))


def _tunnels_websocket(pipelines: dict[str, CompiledPipeline]) -> bool:
    from meshgate.policies._websocket import WebSocketProxy
    return any(isinstance(step.action, WebSocketProxy)
               for pipeline in pipelines.values() for step in pipeline.steps)
