"""A cluster is a serviceEndpoint: its endpoints, how to pick one, timeouts, pools.

Endpoints come from ``url`` / ``urls`` today; discovery providers will feed
the same ``Endpoint`` list later. Each endpoint owns one connection pool per
worker. ``pick()`` is round-robin over the endpoints, as Express Gateway's
``urls`` strategy.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from meshgate.upstream.pool import Pool

if TYPE_CHECKING:
    from meshgate.server.context import WorkerContext


@dataclass(eq=False)
class Endpoint:
    url: str
    host: str
    port: int
    scheme: str
    authority: bytes      # Host header value for changeOrigin
    base_path: bytes      # path of the url, prepended to the request path
    pool: Pool


class Cluster:
    def __init__(self, name: str, endpoints: list[Endpoint],
                 proxy_options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.endpoints = endpoints
        self.proxy_options = proxy_options or {}
        self._next = 0
        # With one endpoint there is nothing to choose: the proxy skips pick().
        self.single: Endpoint | None = endpoints[0] if len(endpoints) == 1 else None

    def pick(self) -> Endpoint:
        endpoints = self.endpoints
        i = self._next
        self._next = (i + 1) % len(endpoints)
        return endpoints[i]

    def close(self) -> None:
        for ep in self.endpoints:
            ep.pool.close()

    def sweep(self, now: float) -> None:
        for ep in self.endpoints:
            ep.pool.sweep(now)


def _client_ssl(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def build_cluster(ctx: WorkerContext, name: str, urls: list[str], *,
                  connect_timeout_ms: int, timeout_ms: int, max_connections: int,
                  max_idle: int, idle_timeout_ms: int, proxy_options: dict[str, Any],
                  ) -> Cluster:
    verify_tls = bool(proxy_options.get("secure", True))
    endpoints = []
    for url in urls:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        host = parts.hostname or "127.0.0.1"
        default_port = (secure and port == 443) or (not secure and port == 80)
        authority = host if default_port else f"{host}:{port}"
        if ":" in host and not default_port:
            authority = f"[{host}]:{port}"
        base = parts.path.rstrip("/")
        pool = Pool(ctx, host, port,
                    _client_ssl(verify_tls) if secure else None,
                    host if secure else None,
                    connect_timeout_ms / 1000.0, timeout_ms / 1000.0,
                    max_connections, max_idle, idle_timeout_ms / 1000.0)
        endpoints.append(Endpoint(url, host, port, parts.scheme, authority.encode(),
                                  base.encode(), pool))
    return Cluster(name, endpoints, proxy_options)
