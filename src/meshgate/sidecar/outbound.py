"""The outbound listener: the local app calls other services through it.

Theory of operation
-------------------
A request reaches the outbound port either with ``Host: users`` (origin form)
or as a plain HTTP proxy request (``GET http://users/path``, what
``HTTP_PROXY`` makes clients send); the codec has already turned both into an
Exchange whose authority is ``users``. The ``OutboundRouter`` maps that
service name to a route whose pipeline proxies to a cluster of the same name.

A name that is a serviceEndpoint of the sidecar's config uses that
serviceEndpoint (static urls, its own discovery). Other clusters are made on
first use: the service's endpoints come from the registry through the
master (the worker sends it ``subscribe``), with the sidecar's ``outbound``
settings (retries, balancer, health checks ...) as the serviceEndpoint
definition. Requests that arrive before the first endpoint
set are parked on the cluster (``Cluster.park``) and sent when it arrives, or
answered 503 if it does not come within the park timeout.

Between sidecars the calls travel as HTTP/2 (``meshProtocol: h2c``, the
default): a sidecar registers its instance with ``protocol: h2c`` (its
inbound port takes h2c by prior knowledge beside HTTP/1.1), and the outbound
serviceEndpoint is ``protocol: auto``, under which such an endpoint gets a
multiplexed ``H2Pool`` -- a burst of calls shares a few connections -- while
an instance registered without it (by hand, an app without a sidecar) keeps
HTTP/1.1. Whatever the app spoke to the outbound port, HTTP/1.1 or h2c, the
inbound sidecar hands the call to its app in the app's own protocol
(``appProtocol``), so gRPC's trailers cross both hops.

WebSocket handshakes are tunnelled to the service (``policies/_websocket.py``):
the outbound port is as transparent as the inbound one. A handshake to an
h2c endpoint takes a connection of its own in HTTP/1.1, which a sidecar's
inbound port also speaks (``H2Pool.http1_upgrades``).

Names that cannot be services (IP literals, ``localhost``, anything with
characters a DNS label cannot hold) get 404.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshgate.config.model import ServiceEndpoint
from meshgate.gateway.pipeline import CompiledPipeline, Step
from meshgate.gateway.router import Route
from meshgate.policies import BuildContext
from meshgate.policies._forward import Forward
from meshgate.policies._websocket import with_websocket
from meshgate.policies.proxy import ProxyParams
from meshgate.upstream.cluster import Cluster, build_cluster

if TYPE_CHECKING:
    from meshgate.config.mesh import SidecarConfig
    from meshgate.server.context import WorkerContext

_SERVICE = re.compile(rb"^[a-z0-9]([a-z0-9_.-]{0,252})$")
_IP = re.compile(rb"^[0-9.]+$|^\[")
MESH_H2_CONNECTIONS = 16     # default http2.maxConnections per instance called


def registry_url(cfg: Any) -> str | None:
    """The registry a sidecar or a ``type: registry`` provider uses by default."""
    side = cfg.gateway.sidecar
    if side is not None and side.registry:
        return str(side.registry)
    registry = cfg.system.registry
    if registry is not None:
        if registry.url:
            return str(registry.url)
        if registry.serve is not None:
            host = registry.serve.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            return f"http://{host}:{registry.serve.port}"
    return os.environ.get("MESHGATE_REGISTRY")


def outbound_service(cfg: SidecarConfig, name: str, registry_url: str | None) -> ServiceEndpoint:
    """The serviceEndpoint a sidecar uses to call ``name``."""
    discovery: dict[str, Any] = {"type": "registry", "service": name}
    if registry_url:
        discovery["url"] = registry_url
    if cfg.tokenFile:
        discovery["tokenFile"] = cfg.tokenFile
    # auto: h2c to the instances whose registration says their port takes it
    # (other sidecars), HTTP/1.1 to the rest; ALPN on https ones.
    protocol = "auto" if cfg.meshProtocol == "h2c" else "http1"
    # Connections open only as the ones before fill up (100 streams each), so
    # this cap costs nothing at low load; it keeps a burst from waiting where
    # HTTP/1.1 (pool.maxConnections: 1024) would have had a connection for it.
    http2 = {"maxConnections": MESH_H2_CONNECTIONS, **(cfg.outbound.get("http2") or {})}
    return ServiceEndpoint.model_validate({"protocol": protocol, **cfg.outbound,
                                           "http2": http2, "discovery": discovery})


class OutboundRouter:
    def __init__(self, ctx: WorkerContext, cfg: SidecarConfig, registry_url: str | None,
                 subscribe: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.registry_url = registry_url
        self.subscribe = subscribe
        self.routes: dict[bytes, Route | None] = {}
        self.clusters: dict[str, Cluster] = {}

    def match(self, authority: bytes, path: bytes, method: bytes) -> Route | None:
        try:
            return self.routes[authority]
        except KeyError:
            route = self.routes[authority] = self._route(authority)
            return route

    def _route(self, authority: bytes) -> Route | None:
        if not _SERVICE.match(authority) or _IP.match(authority) or authority == b"localhost":
            return None
        name = authority.decode()
        cluster = self.ctx.snapshot.clusters.get(name)
        if cluster is None:        # not a serviceEndpoint of the config: ask the registry
            svc = outbound_service(self.cfg, name, self.registry_url)
            cluster = build_cluster(self.ctx, name, svc, {})
            known = self.ctx.endpoint_sets.get(name)
            if known is not None:
                cluster.set_endpoints(known)
            else:
                cluster.awaiting_first = True
            self.clusters[name] = cluster
            self.subscribe(name)
        bctx = BuildContext({name: cluster}, None, "outbound", [], self.ctx.services)
        params = ProxyParams.model_validate({"serviceEndpoint": name, "websocket": True})
        forward = Forward(params, name, bctx)
        action = with_websocket(forward, lambda ex: forward, params.websocket, bctx)
        pipeline = CompiledPipeline("outbound", (Step("proxy", None, action),))
        return Route(order=0, endpoint="outbound", pipeline=pipeline, host="*", path="/*",
                     methods=None, metric_key=("outbound", "outbound"))

    def reset(self) -> None:
        """After a reload: routes to the config's serviceEndpoints are made again."""
        self.routes = {k: r for k, r in self.routes.items()
                       if r is not None and k.decode() in self.clusters}

    def endpoints(self, name: str, endpoints: list[dict[str, Any]]) -> None:
        cluster = self.clusters.get(name)
        if cluster is not None:
            cluster.set_endpoints(endpoints)

    def sweep(self, now: float) -> None:
        for cluster in self.clusters.values():
            cluster.sweep(now)

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()
