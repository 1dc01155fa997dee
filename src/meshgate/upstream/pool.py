"""Keep-alive connection pool for one upstream endpoint.

Idle connections are kept on a stack (the most recently used is the warmest);
a request takes one if there is one, otherwise a new connection is opened --
the only place a task is created on the proxy path. At ``max_connections``
requests wait in FIFO order for a connection to come back. Idle connections
older than ``idle_timeout`` are closed by the worker's sweep.

With circuit breakers configured, the cluster's ``Limits`` are shared by the
pools of all its endpoints: new connections count against
``maxConnections`` and waiters against ``maxPendingRequests``; a request that
would exceed the pending limit is answered 503 at once (an overflow).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshgate.protocol.http1_client import UpstreamConnection, upstream_failed

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange
    from meshgate.server.context import WorkerContext

log = logging.getLogger("meshgate.pool")


class Pool:
    def __init__(self, ctx: WorkerContext, host: str, port: int,
                 ssl_context: ssl.SSLContext | None, server_hostname: str | None,
                 connect_timeout: float, response_timeout: float,
                 max_connections: int, max_idle: int, idle_timeout: float) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: list[UpstreamConnection] = []
        self.open = 0                     # connections open or opening
        self.waiting: deque[tuple[Exchange, bytes, bool, float]] = deque()
        self.closed = False
        self.limits: Limits | None = None     # the cluster's circuit breakers, if any
        self.responses = 0                    # response heads received (per endpoint stats)
        self.errors = 0                       # ... with a 5xx status

    def _can_open(self) -> bool:
        if self.open >= self.max_connections:
            return False
        limits = self.limits
        return limits is None or limits.connections < limits.max_connections or limits.reclaim()

    def _opening(self) -> None:
        self.open += 1
        if self.limits is not None:
            self.limits.connections += 1

    def _gone(self) -> None:
        self.open -= 1
        limits = self.limits
        if limits is not None:
            limits.connections -= 1
            limits.wake(self)     # a waiter of another endpoint may use the freed slot

    def _dequeued(self) -> None:
        if self.limits is not None:
            self.limits.pending -= 1

    def send(self, ex: Exchange, head: bytes, chunked_body: bool, timeout: float) -> None:
        """Send a request on an idle connection, a new one, or wait for one."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn._closed:
                conn.reused = True
                conn.start(ex, head, chunked_body, timeout)
                return
        if not self._can_open():
            limits = self.limits
            if limits is not None:
                if limits.pending >= limits.max_pending:
                    limits.overflow(ex, "pending")
                    return
                limits.pending += 1
            self.waiting.append((ex, head, chunked_body, timeout))
            return
        self._opening()
        self.ctx.loop.create_task(self._connect(ex, head, chunked_body, timeout))

    def retry(self, ex: Exchange, head: bytes, chunked_body: bool, timeout: float) -> None:
        """A reused connection died before answering: once more on a fresh one."""
        self._opening()
        self.ctx.loop.create_task(self._connect(ex, head, chunked_body, timeout))

    async def _connect(self, ex: Exchange, head: bytes, chunked_body: bool,
                       timeout: float) -> None:
        loop = self.ctx.loop
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port,
                                       ssl=self.ssl_context,
                                       server_hostname=self.server_hostname),
                self.connect_timeout or None)
        except TimeoutError:
            self._gone()
            self._refuse(ex, 504, b"Gateway Timeout: upstream connect timeout\n")
            return
        except (OSError, ssl.SSLError) as exc:
            self._gone()
            log.debug("connect to %s:%s failed: %s", self.host, self.port, exc)
            self._refuse(ex, 502, b"Bad Gateway: upstream unreachable\n")
            return
        if ex.done:
            self.release(conn)
        else:
            conn.start(ex, head, chunked_body, timeout)

    def _refuse(self, ex: Exchange, status: int, body: bytes) -> None:
        self._serve_waiting()
        upstream_failed(ex, None, "connect-failure", status, body)

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished cleanly: give it to a waiter or keep it idle.

        A waiter gets it from the event loop, on a later turn: never from
        inside the read that ended the previous response, so whatever else
        arrives on it first closes it instead of reaching the waiter.
        """
        if self.waiting:
            self.ctx.loop.call_soon(self._hand_over, conn)
            return
        self._keep_idle(conn)

    def _hand_over(self, conn: UpstreamConnection) -> None:
        if conn._closed:
            return                          # forget() already served the waiters
        waiting = self.waiting
        while waiting:
            ex, head, chunked, timeout = waiting.popleft()
            self._dequeued()
            if not ex.done:
                conn.reused = True
                conn.start(ex, head, chunked, timeout)
                return
        self._keep_idle(conn)

    def _keep_idle(self, conn: UpstreamConnection) -> None:
        if self.closed or len(self.idle) >= self.max_idle:
            conn._close()
            return
        conn.idle_since = self.ctx.now
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed (idempotent)."""
        if not conn.forgotten:
            conn.forgotten = True
            self._gone()
            if conn in self.idle:
                self.idle.remove(conn)
            self._serve_waiting()

    def _serve_waiting(self) -> None:
        waiting = self.waiting
        while waiting and self._can_open() and waiting:
            ex, head, chunked, timeout = waiting.popleft()
            self._dequeued()
            if not ex.done:
                self._opening()
                self.ctx.loop.create_task(self._connect(ex, head, chunked, timeout))

    def sweep(self, now: float) -> None:
        limit = now - self.idle_timeout
        stale = [c for c in self.idle if c.idle_since < limit]
        for conn in stale:
            conn._close()

    def close(self, removed: bool = False) -> None:
        """Close idle connections; busy ones close when their exchange ends.

        On a reload (``removed`` False) waiters are still served as busy
        connections come back. An endpoint that discovery removed fails its
        waiters (kind ``removed``): a Call picks another endpoint for free, an
        unguarded request gets 503.
        """
        self.closed = True
        if self.limits is not None and self in self.limits.pools:
            self.limits.pools.remove(self)
        for conn in list(self.idle):
            conn._close()
        while removed and self.waiting:
            ex, _, _, _ = self.waiting.popleft()
            self._dequeued()
            if not ex.done:
                upstream_failed(ex, None, "removed", 503,
                                b"Service Unavailable: endpoint removed\n")


class Limits:
    """A cluster's circuit breakers (Envoy's thresholds), shared by its pools."""

    __slots__ = ("connections", "max_connections", "max_pending", "max_requests",
                 "max_retries", "on_overflow", "pending", "pools", "requests", "retries",
                 "waking")

    def __init__(self, max_connections: int, max_pending: int, max_requests: int,
                 max_retries: int, on_overflow: Callable[[str], None]) -> None:
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_requests = max_requests
        self.max_retries = max_retries
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0
        self.on_overflow = on_overflow
        self.pools: list[Pool] = []      # the cluster's, to share freed connection slots
        self.waking = False              # no re-entry while slots are being handed out

    def reclaim(self) -> bool:
        """At maxConnections: close another endpoint's idle connection to make room."""
        if self.waking:
            return False
        for pool in self.pools:
            if pool.idle:
                self.waking = True
                try:
                    pool.idle.pop(0)._close()      # the coldest; _gone frees its slot
                finally:
                    self.waking = False
                return self.connections < self.max_connections
        return False

    def wake(self, freed: Pool) -> None:
        """A connection slot was freed: serve a waiter of any pool of the cluster."""
        if self.waking or not self.pending or self.connections >= self.max_connections:
            return
        self.waking = True
        try:
            for pool in self.pools:
                if pool.waiting and pool is not freed:
                    pool._serve_waiting()
                    if self.connections >= self.max_connections:
                        return
        finally:
            self.waking = False

    def overflow(self, ex: Exchange, which: str) -> None:
        """Over a limit: 503 at once, counted, never retried."""
        self.on_overflow(which)
        if ex.retry is not None:
            ex.retry.overflowed()
        if not ex.done:
            ex.responder.respond(ex, 503, b"Service Unavailable: upstream overflow\n",
                                 [(b"x-meshgate-overloaded", b"true")])
