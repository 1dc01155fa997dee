"""A cluster is a serviceEndpoint: its endpoint set, balancer, limits and pools.

Theory of operation
-------------------
Endpoints come from ``url`` / ``urls`` (static) or, when the serviceEndpoint
has ``discovery`` or a ``healthCheck``, from the control plane: the master
runs providers and health checks and pushes whole endpoint sets, which
``set_endpoints`` applies by key -- endpoints that stay keep their pool and
counters, new ones get a pool, removed ones have theirs closed.

``pick()`` asks the balancer (see ``upstream/balancer``), which skips
unhealthy and ejected endpoints, prefers the local zone and falls back to all
endpoints in panic. With one endpoint and nothing to decide, ``single`` lets
the proxy skip the call.

A cluster is ``guarded`` when a request needs more than one write: retries,
circuit breakers, outlier detection or a latency-aware balancer. The proxy
then runs the request through a ``Call`` (``upstream/call.py``); an
unguarded cluster costs nothing of that, and an overall ``requestTimeout``
without retries is just the one attempt's deadline.

Each endpoint's pool speaks the serviceEndpoint's ``protocol``. Under
``auto`` an ``http`` endpoint is HTTP/1.1 unless its spec says ``protocol:
h2c`` (discovery read it from the instance's metadata: another sidecar), and
then h2c by prior knowledge; an endpoint whose hint changes (re-registered)
gets a new pool.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from meshgate.upstream.api import EndpointPool  # at run time: the dataclass's field type
from meshgate.upstream.balancer import build_balancer
from meshgate.upstream.h2_pool import H2Pool
from meshgate.upstream.outlier import OutlierDetector
from meshgate.upstream.pool import Limits, Pool
from meshgate.upstream.retry import RetryPolicy

if TYPE_CHECKING:
    from meshgate.config.model import ServiceEndpoint
    from meshgate.protocol.exchange import Exchange
    from meshgate.server.context import WorkerContext

log = logging.getLogger("meshgate.cluster")
PARK_TIMEOUT = 3.0      # seconds a request waits for an on-demand cluster's first endpoints
_NO_ENDPOINTS: Final = b"Service Unavailable: no healthy upstream (no endpoints known)\n"


@dataclass(eq=False)
class Endpoint:
    """One upstream instance of a cluster, as this worker sees it."""

    url: str
    host: str
    port: int
    scheme: str
    authority: bytes      # Host header value for changeOrigin
    base_path: bytes      # path of the url, prepended to the request path
    pool: EndpointPool    # HTTP/1.1 keep-alive (Pool) or HTTP/2 multiplexed (H2Pool)
    key: str = ""         # identity across endpoint-set updates (scheme://host:port/path)
    weight: int = 1       # relative share for weighted balancers
    zone: str = ""        # locality for zone-aware balancing
    version: str = ""
    id: str = ""          # instance id from discovery
    hint: str = ""        # what discovery says the port speaks besides HTTP/1.1 ("h2c")
    healthy: bool = True  # control plane's view: registry status and active checks
    added: float = 0.0    # loop time this worker first saw it (slow start)
    ejected_until: float = 0.0   # outlier detection: ejected while now < this
    ejections: int = 0           # times ejected (the ejection time multiplier)
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    requests: int = 0            # in the current outlier interval (success rate)
    failures: int = 0
    latency_sum: float = 0.0     # seconds to response head, guarded clusters only
    latency_count: int = 0

    @property
    def active(self) -> int:
        """Requests in flight to this endpoint (connecting, busy or waiting)."""
        pool = self.pool
        return pool.open - len(pool.idle) + len(pool.waiting)

    @property
    def available(self) -> bool:
        """Healthy and not ejected (``ejected_until`` is cleared by the detector)."""
        return self.healthy and not self.ejected_until


def static_specs(svc: ServiceEndpoint) -> list[dict[str, Any]]:
    """The endpoint dicts of a serviceEndpoint's ``url`` / ``urls``."""
    specs = []
    for url, weight, zone in svc.weighted_targets:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        path = parts.path.rstrip("/")
        specs.append({"key": f"{parts.scheme}://{host}:{port}{path}", "host": host,
                      "port": port, "scheme": parts.scheme, "path": path,
                      "weight": weight, "zone": zone, "url": url})
    return specs


def _client_ssl(verify: bool, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class Cluster:
    def __init__(self, ctx: WorkerContext, name: str, svc: ServiceEndpoint,
                 proxy_options: dict[str, Any]) -> None:
        self.ctx = ctx
        self.name = name
        self.proxy_options = proxy_options
        self.verify_tls = bool(proxy_options.get("secure", True))
        self.connect_timeout = svc.connectTimeout / 1000.0
        self.response_timeout = svc.timeout / 1000.0
        self.request_timeout = svc.requestTimeout / 1000.0
        pool = svc.pool
        self.max_connections = pool.maxConnections
        # Streaming uploads may hold at most this many upstream connections
        # (policies/_forward.BodyWait keeps the rest waiting, unread).
        self.max_uploads = pool.maxUploads or max(1, pool.maxConnections // 2)
        self.uploads = 0
        self.upload_waiters: deque[Any] = deque()
        self.max_idle = pool.maxIdle
        self.idle_timeout = pool.idleTimeout / 1000.0
        self.protocol = svc.protocol
        self.http2 = svc.http2
        self.dynamic = (svc.healthCheck is not None or (
            svc.discovery is not None and svc.discovery.get("type") != "static"))
        self.balancer = build_balancer(svc.loadBalancer)
        metrics = ctx.metrics
        breakers = svc.circuitBreakers
        self.limits = None if breakers is None else Limits(
            breakers.maxConnections, breakers.maxPendingRequests, breakers.maxRequests,
            breakers.maxRetries,
            lambda which: metrics.count("meshgate_upstream_overflow", (name, which)))
        self.retry = None if svc.retry is None else RetryPolicy(svc.retry)
        self.outlier = (None if svc.outlierDetection is None
                        else OutlierDetector(svc.outlierDetection, self))
        self.active = 0               # requests in flight through a Call
        self.active_retries = 0
        self.guarded = bool(self.retry or self.limits or self.outlier
                            or self.balancer.wants_latency)
        self.endpoints: list[Endpoint] = []
        self.by_key: dict[str, Endpoint] = {}
        self.single: Endpoint | None = None
        self.has_base_path = False
        self.seeded = False
        # An on-demand cluster (sidecar outbound) parks requests until its first set.
        self.awaiting_first = False
        self.parked: list[tuple[Exchange, Callable[[], Any]]] = []
        # Static endpoints serve at once; a checked or discovered cluster waits
        # for the control plane (which keeps pushing until it is told otherwise).
        self.set_endpoints(static_specs(svc) if svc.url or svc.urls else [])

    # -- the endpoint set ---------------------------------------------------
    def set_endpoints(self, specs: list[dict[str, Any]]) -> None:
        # Endpoints of the first set serve at full weight; later ones slow-start.
        now = self.ctx.now if self.by_key or self.seeded else 0.0
        self.seeded = True
        fresh: dict[str, Endpoint] = {}
        replaced: list[Endpoint] = []
        for spec in specs:
            key = spec["key"]
            ep = self.by_key.get(key) or fresh.get(key)
            if ep is not None and ep.hint != (spec.get("protocol") or "") \
                    and self.protocol == "auto" and key not in fresh:
                replaced.append(ep)      # re-registered speaking otherwise: a new pool
                ep = None
            if ep is None:
                ep = self._endpoint(spec, now)
            ep.weight = max(1, int(spec.get("weight", 1)))
            ep.zone = spec.get("zone", "") or ""
            ep.version = spec.get("version", "") or ""
            ep.id = spec.get("id", "") or ""
            healthy = bool(spec.get("healthy", True))
            if healthy and not ep.healthy and ep.added:
                ep.added = now          # back from unhealthy: slow start again (as Envoy)
            ep.healthy = healthy
            fresh[key] = ep
        removed = [ep for key, ep in self.by_key.items() if key not in fresh]
        removed += replaced
        self.by_key = fresh
        self.endpoints = list(fresh.values())
        self.has_base_path = any(ep.base_path for ep in self.endpoints)
        self.refresh()              # first, so requests failed over below pick anew
        for ep in removed:
            ep.pool.close(removed=True)
        self.awaiting_first = False
        if self.parked:
            parked, self.parked = self.parked, []
            for ex, resume in parked:
                if not ex.done:
                    resume()

    def park(self, ex: Exchange, resume: Callable[[], Any]) -> None:
        """Hold a request until the first endpoint set arrives (or PARK_TIMEOUT)."""
        self.parked.append((ex, resume))

    def _endpoint(self, spec: dict[str, Any], now: float) -> Endpoint:
        host, port, scheme = spec["host"], int(spec["port"]), spec.get("scheme", "http")
        secure = scheme == "https"
        default_port = port == (443 if secure else 80)
        shown = f"[{host}]" if ":" in host else host
        authority = shown if default_port else f"{shown}:{port}"
        path = spec.get("path", "") or ""
        protocol = self.protocol
        hint = spec.get("protocol") or ""
        pool: EndpointPool
        if protocol == "auto" and not secure and hint == "h2c":
            pool = self._h2_pool(host, port, False, False)
            pool.http1_upgrades = True   # a sidecar's port: HTTP/1.1 beside h2c
        elif protocol == "http1" or (protocol == "auto" and not secure):
            pool = self._http1_pool(host, port, secure, None)
        else:
            pool = self._h2_pool(host, port, secure, protocol == "auto")
        url = spec.get("url") or f"{scheme}://{authority}{path}"
        return Endpoint(url, host, port, scheme, authority.encode(), path.encode(), pool,
                        key=spec["key"], hint=hint, added=now)

    def _http1_pool(self, host: str, port: int, secure: bool,
                    alpn: list[str] | None) -> Pool:
        pool = Pool(self.ctx, host, port, _client_ssl(self.verify_tls, alpn) if secure else None,
                    host if secure else None, self.connect_timeout, self.response_timeout,
                    self.max_connections, self.max_idle, self.idle_timeout)
        pool.limits = self.limits
        if self.limits is not None:
            self.limits.pools.append(pool)
        return pool

    def _h2_pool(self, host: str, port: int, secure: bool, auto: bool) -> H2Pool:
        """HTTP/2: over TLS with ALPN on https endpoints, by prior knowledge on http ones."""
        settings = self.http2
        alpn = ["h2", "http/1.1"] if auto else ["h2"]
        fallback = ((lambda: self._http1_pool(host, port, True, ["http/1.1"])) if auto
                    else None)
        pool = H2Pool(self.ctx, host, port, _client_ssl(self.verify_tls, alpn) if secure else None,
                      host if secure else None, self.connect_timeout, settings.maxConnections,
                      settings.maxConcurrentStreams, settings.initialStreamWindowSize,
                      settings.initialConnectionWindowSize, self.idle_timeout, fallback)
        pool.limits = self.limits
        return pool

    def refresh(self) -> None:
        """Health, membership or ejections changed: rebuild the balancer's tables."""
        self.balancer.update(self.endpoints, self.ctx.now)
        eps = self.endpoints
        self.single = (eps[0] if len(eps) == 1 and eps[0].available
                       and not self.balancer.wants_latency else None)

    def pick(self, ex: Exchange | None, exclude: Endpoint | None = None) -> Endpoint | None:
        return self.balancer.pick(ex, exclude)

    # -- upkeep ---------------------------------------------------------------
    def close(self) -> None:
        """Retired by a reload: pools finish their work; parked requests get 503."""
        for ep in self.endpoints:
            ep.pool.close()
        parked, self.parked = self.parked, []
        for ex, _ in parked:
            if not ex.done:
                ex.responder.respond(ex, 503, _NO_ENDPOINTS)

    def sweep(self, now: float) -> None:
        for ep in self.endpoints:
            ep.pool.sweep(now)
        self.balancer.sweep(now)
        if self.parked:
            late = [(ex, r) for ex, r in self.parked if now - ex.started >= PARK_TIMEOUT]
            if late:
                self.awaiting_first = False
                self.parked = [p for p in self.parked if p not in late]
                for ex, _ in late:
                    if not ex.done:
                        ex.responder.respond(ex, 503, _NO_ENDPOINTS)
        if self.outlier is not None:
            self.outlier.sweep(now)

    def adopt(self, previous: Cluster) -> None:
        """A reload rebuilt this cluster: keep the control plane's last endpoint set."""
        if self.dynamic and previous.dynamic:
            self.set_endpoints([_spec_of(ep) for ep in previous.endpoints])

    def describe(self) -> list[dict[str, Any]]:
        now = self.ctx.now
        return [{"key": ep.key, "url": ep.url, "healthy": ep.healthy,
                 "ejected": bool(ep.ejected_until), "ejectedFor": max(0.0, ep.ejected_until - now),
                 "weight": ep.weight, "zone": ep.zone, "active": ep.active,
                 "protocol": _spoken(ep.pool),
                 "requests": ep.pool.responses, "errors": ep.pool.errors}
                for ep in self.endpoints]


def _spec_of(ep: Endpoint) -> dict[str, Any]:
    return {"key": ep.key, "host": ep.host, "port": ep.port, "scheme": ep.scheme,
            "path": ep.base_path.decode(), "weight": ep.weight, "zone": ep.zone,
            "version": ep.version, "id": ep.id, "healthy": ep.healthy, "protocol": ep.hint}


def _spoken(pool: EndpointPool) -> str:
    """What an endpoint's connections speak, for ``/clusters``."""
    if isinstance(pool, H2Pool):
        if pool.fallback is not None:
            return "http1"
        return "h2c" if pool.ssl_context is None else "h2"
    return "http1"


def build_cluster(ctx: WorkerContext, name: str, svc: ServiceEndpoint,
                  proxy_options: dict[str, Any]) -> Cluster:
    return Cluster(ctx, name, svc, proxy_options)
