"""Multiplexed HTTP/2 pool for one upstream endpoint.

Streams are packed onto few connections: a request opens a stream on the
first READY connection with room (fewer streams than the lower of our
``maxConcurrentStreams`` and the peer's), so a connection fills before the
next one is opened. With none, the request waits in FIFO order and one more
connection is opened, up to ``http2.maxConnections`` (and the circuit
breakers' ``maxConnections``); a connection counts as usable only once the
peer's SETTINGS arrived, within ``connectTimeout``. The queue is bounded by
the breakers' ``maxPendingRequests``, or 1024 without breakers: beyond it a
request is answered 503 with ``x-meshgate-overloaded: true``, as the
HTTP/1.1 pool does. Waiters are served from the event loop when a stream
ends or a connection becomes ready, never inside a frame's callback.

A GOAWAY (``h2_client``) stops new streams on that connection; the streams
the peer says it never processed come back through ``unprocessed`` and are
sent again on another connection, at most ``_RESENDS`` times: always safe,
since the peer did not act on them, and a replayable body (no body, a
``Call``'s saved one, or one of at most 64 KiB kept by the stream) is sent
again with them. Idle connections close after the pool's ``idleTimeout``.

``protocol: auto`` on an https endpoint offers ALPN ``h2`` and
``http/1.1``; when the first connection settles on HTTP/1.1 the endpoint
is HTTP/1.1 from then on: this pool hands everything to an ordinary
``Pool`` (``fallback``).

``protocol: auto`` on an http endpoint that discovery says takes h2c (a
sidecar registers ``protocol: h2c``) is h2c by prior knowledge; such a port
also speaks HTTP/1.1 (``http1_upgrades``), which WebSocket handshakes use.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sized
from typing import TYPE_CHECKING, Final

from meshgate.protocol.h2_client import CLOSED, H2Connection, H2Stream
from meshgate.protocol.http1_client import upstream_failed

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange
    from meshgate.server.context import WorkerContext
    from meshgate.upstream.pool import Limits, Pool

log = logging.getLogger("meshgate.pool")

MAX_WAITING: Final = 1024     # queued requests per endpoint without circuit breakers
_RESENDS: Final = 3           # times an unprocessed stream is sent again
_NO_STREAM: Final = (b"Service Unavailable: upstream overflow\n",
                     [(b"x-meshgate-overloaded", b"true")])

# (exchange, request head, chunked body, timeout, resends so far)
_Waiter = tuple["Exchange", bytes, bool, float, int]


class H2Pool:
    def __init__(self, ctx: WorkerContext, host: str, port: int,
                 ssl_context: ssl.SSLContext | None, server_hostname: str | None,
                 connect_timeout: float, max_connections: int, max_streams: int,
                 stream_window: int, connection_window: int, idle_timeout: float,
                 fallback: Callable[[], Pool] | None = None) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port
        self.scheme = b"http" if ssl_context is None else b"https"
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.idle_timeout = idle_timeout
        self.conns: list[H2Connection] = []     # connected, not yet closed
        self.connecting = 0
        self.queue: deque[_Waiter] = deque()
        self.limits: Limits | None = None
        self.responses = 0
        self.errors = 0
        self.closed = False
        self.make_fallback = fallback            # protocol auto: the HTTP/1.1 pool, if needed
        self.fallback: Pool | None = None
        # The endpoint takes HTTP/1.1 on the same port as well (a sidecar's
        # inbound port): a WebSocket handshake may go there, on its own connection.
        self.http1_upgrades = False
        self._serving = False

    # -- EndpointPool: load as least-request sees it --------------------------------
    @property
    def open(self) -> int:
        if self.fallback is not None:
            return self.fallback.open
        return sum(len(c.streams) for c in self.conns)

    @property
    def idle(self) -> Sized:
        return () if self.fallback is None else self.fallback.idle

    @property
    def waiting(self) -> Sized:
        return self.queue if self.fallback is None else self.fallback.waiting

    # -- sending ---------------------------------------------------------------------
    def send(self, ex: Exchange, head: bytes, chunked_body: bool, timeout: float) -> None:
        if self.fallback is not None:
            self.fallback.send(ex, head, chunked_body, timeout)
            return
        self._send(ex, head, chunked_body, timeout, 0)

    def retry(self, ex: Exchange, head: bytes, chunked_body: bool, timeout: float) -> None:
        self.send(ex, head, chunked_body, timeout)

    def _send(self, ex: Exchange, head: bytes, chunked: bool, timeout: float,
              resends: int) -> None:
        conn = self._room()
        if conn is not None and not self.queue:
            conn.open_stream(ex, head, chunked, timeout, self.scheme, resends)
            return
        limits = self.limits
        if limits is not None:
            if limits.pending >= limits.max_pending:
                limits.overflow(ex, "pending")
                return
            limits.pending += 1
        elif len(self.queue) >= MAX_WAITING:
            if ex.retry is not None:
                ex.retry.overflowed()
            ex.responder.respond(ex, 503, *_NO_STREAM)
            return
        self.queue.append((ex, head, chunked, timeout, resends))
        self._grow()

    def _room(self) -> H2Connection | None:
        for conn in self.conns:
            if conn.has_room():
                return conn
        return None

    def _grow(self) -> None:
        """Waiters and no connection on its way: open one more, if the caps allow."""
        if self.connecting or self.closed or len(self.conns) >= self.max_connections:
            return
        limits = self.limits
        if limits is not None:
            if limits.connections >= limits.max_connections:
                return
            limits.connections += 1
        self.connecting += 1
        self.ctx.loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = self.ctx.loop
        conn = H2Connection(self, self.max_streams, self.stream_window,
                            self.connection_window)
        try:
            async with asyncio.timeout(self.connect_timeout or None):
                await loop.create_connection(lambda: conn, self.host, self.port,
                                             ssl=self.ssl_context,
                                             server_hostname=self.server_hostname)
                if not conn.alpn_refused:
                    await conn.ready
        except TimeoutError:
            self._connect_failed(conn, 504, b"Gateway Timeout: upstream connect timeout\n")
            return
        except (OSError, ssl.SSLError) as exc:
            log.debug("connect to %s:%s failed: %s", self.host, self.port, exc)
            self._connect_failed(conn, 502, b"Bad Gateway: upstream unreachable\n")
            return
        self.connecting -= 1
        if conn.alpn_refused:
            self._not_h2(conn)
            return
        if conn.state == CLOSED:        # the peer hung up before its SETTINGS
            self._fail_waiters(502, b"Bad Gateway: upstream unreachable\n")
            return
        self.conns.append(conn)
        self._serve()

    def _connect_failed(self, conn: H2Connection, status: int, body: bytes) -> None:
        """Waiters fail only when no connection is left that could serve them."""
        self.connecting -= 1
        conn.close()
        if conn.transport is None:       # never connected: gone() did not count it
            self._uncount()
        if not self.conns:
            self._fail_waiters(status, body)

    def _not_h2(self, conn: H2Connection) -> None:
        """TLS settled on another protocol than h2: HTTP/1.1 (auto) or a failure (h2)."""
        conn.close()
        if self.make_fallback is None:
            log.warning("%s:%s does not offer HTTP/2 (ALPN h2)", self.host, self.port)
            self._fail_waiters(502, b"Bad Gateway: upstream does not speak HTTP/2\n")
            return
        self.fallback = fallback = self.make_fallback()
        queue, self.queue = self.queue, deque()
        for ex, head, chunked, timeout, _ in queue:
            self._dequeued()
            if not ex.done:
                fallback.send(ex, head, chunked, timeout)

    def _fail_waiters(self, status: int, body: bytes) -> None:
        queue, self.queue = self.queue, deque()
        for ex, _, _, _, _ in queue:
            self._dequeued()
            if not ex.done:
                upstream_failed(ex, None, "connect-failure", status, body)

    def _dequeued(self) -> None:
        if self.limits is not None:
            self.limits.pending -= 1

    def _uncount(self) -> None:
        if self.limits is not None:
            self.limits.connections -= 1

    def _serve(self) -> None:
        """Open streams for waiters while connections have room; grow if some remain."""
        if self._serving:
            return
        self._serving = True
        try:
            queue = self.queue
            while queue:
                conn = self._room()
                if conn is None:
                    break
                ex, head, chunked, timeout, resends = queue.popleft()
                self._dequeued()
                if not ex.done:
                    conn.open_stream(ex, head, chunked, timeout, self.scheme, resends)
            if queue:
                self._grow()
        finally:
            self._serving = False

    # -- H2Owner: what connections report ----------------------------------------------
    def room(self, conn: H2Connection) -> None:
        if self.queue:
            self.ctx.loop.call_soon(self._serve)
        elif self.closed and not conn.streams:
            conn.close()

    def gone(self, conn: H2Connection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        if conn.transport is not None:
            self._uncount()
        if self.queue:
            self.ctx.loop.call_soon(self._serve)

    def unprocessed(self, stream: H2Stream) -> None:
        """The peer did not act on this stream: send it again, elsewhere."""
        ex = stream.ex
        stream.ex = None
        if ex is None or ex.done:
            return
        call = ex.retry
        replayable = (not ex.body_expected
                      or (call is not None and call.saved is not None)
                      or (call is None and stream.kept is not None and ex.body_tee is None))
        if not replayable or stream.resends >= _RESENDS:
            upstream_failed(ex, stream, "reset", 502, b"Bad Gateway: upstream refused stream\n")
            return
        if call is None and ex.body_expected:
            ex.body_sink = None                 # the kept body is read again, then the rest
            ex.body_buffer = stream.kept or None
        ex.source = None
        self._send(ex, stream.head, stream.chunked, stream.timeout, stream.resends + 1)

    # -- upkeep ------------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        if self.fallback is not None:
            self.fallback.sweep(now)
        limit = now - self.idle_timeout
        for conn in self.conns:
            if conn.deferred:
                conn.tick(now)
        for conn in [c for c in self.conns if not c.streams and c.idle_since < limit]:
            conn.close()

    def close(self, removed: bool = False) -> None:
        """Close idle connections; busy ones after their streams (see ``Pool.close``)."""
        self.closed = True
        if self.fallback is not None:
            self.fallback.close(removed)
        while removed and self.queue:
            ex, _, _, _, _ = self.queue.popleft()
            self._dequeued()
            if not ex.done:
                upstream_failed(ex, None, "removed", 503,
                                b"Service Unavailable: endpoint removed\n")
        if not self.queue:
            for conn in list(self.conns):
                conn.close()

