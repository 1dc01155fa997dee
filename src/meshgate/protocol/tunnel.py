"""A byte tunnel between two transports: what a WebSocket connection becomes after its 101.

Theory of operation
-------------------
Each transport gets a ``_Side`` protocol (``set_protocol``); a side writes
what it reads to its peer's transport. Nothing is parsed: frames, masks,
pings, the close handshake and any negotiated extension (permessage-deflate)
pass untouched, end to end.

Flow control is symmetric: when a side's transport cannot take more
(``pause_writing``), its peer stops reading until it drains. Half-close: an
EOF from one side is passed on as ``write_eof`` and the other direction
keeps flowing; the tunnel closes when both sides sent EOF, when either
connection is lost, or when the peer cannot half-close (TLS).

The ``Tunnel`` sits in the worker's connection set, so the worker's sweep
calls ``tick``: no byte in either direction for ``idle_timeout`` closes both
connections, and so does a reload, ``drain_timeout`` after it (the tunnel
runs on the config it was opened with until then). On SIGTERM the worker
waits for tunnels as for any connection, up to ``drainTimeout``, then exits,
closing them. Bytes moved are added to the metrics once per tick, so the
relay itself counts with one integer add per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshgate.server.context import WorkerContext

OPENED = "meshgate_websocket_tunnels_opened"
CLOSED = "meshgate_websocket_tunnels_closed"
BYTES = "meshgate_websocket_bytes"


class _Side(asyncio.Protocol):
    """One connection of the tunnel; ``peer`` is the other one."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: _Side = self
        self.received = 0                # bytes read from this side (sent to the peer)
        self.eof = False                 # this side will send nothing more

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer.eof or not peer.transport.can_write_eof():
            self.tunnel.close("closed")
            return False
        peer.transport.write_eof()
        return True                      # keep reading the other way

    def pause_writing(self) -> None:
        peer = self.peer.transport
        if not peer.is_closing():
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer.transport
        if not peer.is_closing():
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close("closed")


class Tunnel:
    """A client connection and its upstream one, relaying bytes until either ends."""

    def __init__(self, ctx: WorkerContext, client: asyncio.Transport,
                 upstream: asyncio.Transport, held: bytes, rest: bytes,
                 idle_timeout: float, service: str, release: Callable[[], None]) -> None:
        self.ctx = ctx
        self.idle_timeout = idle_timeout
        self.service = service
        self.release = release
        self.snapshot: Any = ctx.snapshot
        self.retire_at = 0.0             # set by a reload: closed at this time
        self.closed = False
        self.client = _Side(self, client)
        self.upstream = _Side(self, upstream)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.counted = (0, 0)            # bytes each way already added to the metrics
        self.mark = -1
        self.since = ctx.now
        ctx.connections.add(self)
        ctx.metrics.tunnels += 1
        ctx.metrics.count(OPENED, (service,))
        client.set_protocol(self.client)
        upstream.set_protocol(self.upstream)
        if held:
            self.client.received += len(held)
            upstream.write(held)
        if rest:
            self.upstream.received += len(rest)
            client.write(rest)
        client.resume_reading()          # the codec paused it when the handshake arrived

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.client.transport.close()
        self.upstream.transport.close()
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.metrics.tunnels -= 1
        ctx.metrics.count(CLOSED, (self.service, reason))
        self._count_bytes()
        self.release()

    def _count_bytes(self) -> None:
        up, down = self.client.received, self.upstream.received
        was_up, was_down = self.counted
        metrics = self.ctx.metrics
        if up != was_up:
            metrics.count(BYTES, (self.service, "upstream"), up - was_up)
        if down != was_down:
            metrics.count(BYTES, (self.service, "downstream"), down - was_down)
        self.counted = (up, down)

    # -- the worker's sweep (the connection interface) ---------------------------
    def tick(self, now: float, head_timeout: float, idle_timeout: float) -> None:
        self._count_bytes()
        moved = self.client.received + self.upstream.received
        if moved != self.mark:
            self.mark = moved
            self.since = now
        elif self.idle_timeout and now - self.since >= self.idle_timeout:
            self.close("idle_timeout")
            return
        if self.ctx.snapshot is not self.snapshot:
            if not self.retire_at:
                self.retire_at = now + self.ctx.snapshot.server.drainTimeout / 1000.0
            elif now >= self.retire_at:
                self.close("reload")

    def drain(self) -> None:
        """SIGTERM: a tunnel has no response to end early; it runs until the worker exits."""
