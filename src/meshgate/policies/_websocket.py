"""The proxy action of a route that allows WebSocket (``websocket`` in its parameters).

Requests that are not handshakes go to the action as it would be without
WebSocket (forward, split, mirror): routes that allow WebSocket pay one
attribute test per request, the others nothing. A handshake (``ex.upgrade``,
marked by the codec) that passed the pipeline is checked
(``handshake_refusal``: 400, or 426 for another version), counted against
``maxTunnels`` (503 beyond: a tunnel holds two connections for as long as
its peers like), and sent on a connection of its own to an endpoint the
target's balancer picks: never a pooled connection, never returned to a
pool; to another sidecar that is HTTP/1.1 too, even when the other calls
to it are h2c streams (its inbound port speaks both). Retries, circuit
breakers and mirroring do not apply to it. The head is the proxy's usual
one (X-Forwarded-*, ``eg-consumer-id``, path rewrites, request id) plus
``Connection: upgrade`` and ``Upgrade: websocket``; the ``Sec-WebSocket-*``
headers pass as the client sent them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from meshgate.protocol.tunnel import Tunnel
from meshgate.protocol.websocket import UPGRADE_LINES, UpgradeClient, handshake_refusal

if TYPE_CHECKING:
    from meshgate.policies import Action
    from meshgate.policies._forward import Forward
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint


class WebSocketParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idleTimeout: int = Field(
        300000, ge=0, description="ms without a byte either way before a tunnel closes (0: never)")
    maxTunnels: int = Field(
        1024, ge=1, description="Tunnels (and handshakes) this action keeps open per worker")


class WebSocketProxy:
    """Handshakes tunnel through the target ``choose`` picks; other requests go to ``inner``."""

    def __init__(self, inner: Action, choose: Callable[[Exchange], Forward],
                 params: WebSocketParams, ctx: Any) -> None:
        self.inner = inner
        self.choose = choose
        self.idle_timeout = params.idleTimeout / 1000.0
        self.max_tunnels = params.maxTunnels
        self.active = 0                  # handshakes and tunnels of this action, this worker

    def __call__(self, ex: Exchange) -> Any:
        if not ex.upgrade:
            return self.inner(ex)
        # No HTTP after this handshake: a tunnel, or the close (the bytes the
        # client sent after it were meant for a tunnel and are never parsed).
        ex.keep_alive = False
        refused = handshake_refusal(ex)
        if refused is not None:
            status, body, headers = refused
            ex.respond(status, body, headers)
            return True
        forward = self.choose(ex)
        if self.active >= self.max_tunnels:
            forward.cluster.ctx.metrics.count("meshgate_websocket_overflow", (forward.name,))
            ex.respond(503, b"Service Unavailable: too many WebSocket connections\n")
            return True
        self._send(ex, forward)
        return True

    def _send(self, ex: Exchange, forward: Forward) -> None:
        if ex.done:
            return
        cluster = forward.cluster
        ex.cluster_name = forward.name
        ep = cluster.single or cluster.pick(ex)
        if ep is None:
            if cluster.awaiting_first:
                cluster.park(ex, lambda: self._send(ex, forward))
            else:
                ex.respond(503, b"Service Unavailable: no healthy upstream\n")
            return
        head = forward.head(ex, ep)[0]
        head = head[:-2] + UPGRADE_LINES + b"\r\n"
        self.active += 1
        cluster.ctx.loop.create_task(self._connect(ex, forward, ep, head))

    def _release(self) -> None:
        self.active -= 1

    async def _connect(self, ex: Exchange, forward: Forward, ep: Endpoint, head: bytes) -> None:
        from meshgate.upstream.h2_pool import H2Pool
        from meshgate.upstream.pool import Pool

        ctx = forward.cluster.ctx
        pool = ep.pool
        # An HTTP/2 serviceEndpoint has no RFC 8441 upstream, unless the port
        # speaks HTTP/1.1 too (another sidecar's inbound port).
        if not isinstance(pool, Pool) and not (isinstance(pool, H2Pool)
                                               and pool.http1_upgrades):
            self._release()
            ex.respond(502, b"Bad Gateway: WebSocket needs an HTTP/1.1 serviceEndpoint\n")
            return
        key = ex.header(b"sec-websocket-key") or b""
        name = forward.name
        idle = self.idle_timeout

        def tunnel(client: asyncio.Transport, upstream: asyncio.Transport, held: bytes,
                   rest: bytes) -> None:
            Tunnel(ctx, client, upstream, held, rest, idle, name, self._release)

        client = UpgradeClient(ex, head, key.strip(), forward.first_timeout, ctx, tunnel,
                               self._release)
        try:
            await asyncio.wait_for(
                ctx.loop.create_connection(lambda: client, pool.host, pool.port,
                                           ssl=pool.ssl_context,
                                           server_hostname=pool.server_hostname),
                pool.connect_timeout or None)
        except TimeoutError:
            self._release()
            ex.respond(504, b"Gateway Timeout: upstream connect timeout\n")
        except (OSError, ssl.SSLError):
            self._release()
            ex.respond(502, b"Bad Gateway: upstream unreachable\n")


def with_websocket(action: Action, choose: Callable[[Exchange], Forward],
                   params: bool | WebSocketParams, ctx: Any) -> Action:
    """``action``, or the action that also tunnels WebSocket when ``params`` allow it."""
    if params is False:
        return action
    options = params if isinstance(params, WebSocketParams) else WebSocketParams.model_validate({})
    return WebSocketProxy(action, choose, options, ctx)
