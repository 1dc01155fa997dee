"""Keep-alive connection pool for one upstream endpoint.

Idle connections are kept on a stack (the most recently used is the warmest);
a request takes one if there is one, otherwise a new connection is opened --
the only place a task is created on the proxy path. At ``max_connections``
requests wait in FIFO order for a connection to come back. Idle connections
older than ``idle_timeout`` are closed by the worker's sweep.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING

from meshgate.protocol.http1_client import UpstreamConnection

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

    def send(self, ex: Exchange, head: bytes, chunked_body: bool, timeout: float) -> None:
        """Send a request on an idle connection, a new one, or wait for one."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn._closed:
                conn.reused = True
                conn.start(ex, head, chunked_body, timeout)
                return
        if self.open >= self.max_connections:
            self.waiting.append((ex, head, chunked_body, timeout))
            return
        self.open += 1
        self.ctx.loop.create_task(self._connect(ex, head, chunked_body, timeout))

    def retry(self, ex: Exchange, head: bytes, chunked_body: bool, timeout: float) -> None:
        """A reused connection died before answering: once more on a fresh one."""
        self.open += 1
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
            self.open -= 1
            self._refuse(ex, 504, b"Gateway Timeout: upstream connect timeout\n")
            return
        except (OSError, ssl.SSLError) as exc:
            self.open -= 1
            log.debug("connect to %s:%s failed: %s", self.host, self.port, exc)
            self._refuse(ex, 502, b"Bad Gateway: upstream unreachable\n")
            return
        if ex.done:
            self.release(conn)
        else:
            conn.start(ex, head, chunked_body, timeout)

    def _refuse(self, ex: Exchange, status: int, body: bytes) -> None:
        if not ex.done:
            ex.responder.respond(ex, status, body)
        self._serve_waiting()

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished cleanly: give it to a waiter or keep it idle."""
        waiting = self.waiting
        while waiting:
            ex, head, chunked, timeout = waiting.popleft()
            if not ex.done:
                conn.reused = True
                conn.start(ex, head, chunked, timeout)
                return
        if self.closed or len(self.idle) >= self.max_idle:
            conn._close()
            return
        conn.idle_since = self.ctx.now
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed (idempotent)."""
        if not conn.forgotten:
            conn.forgotten = True
            self.open -= 1
            if conn in self.idle:
                self.idle.remove(conn)
            self._serve_waiting()

    def _serve_waiting(self) -> None:
        waiting = self.waiting
        while waiting and self.open < self.max_connections:
            ex, head, chunked, timeout = waiting.popleft()
            if not ex.done:
                self.open += 1
                self.ctx.loop.create_task(self._connect(ex, head, chunked, timeout))

    def sweep(self, now: float) -> None:
        limit = now - self.idle_timeout
        stale = [c for c in self.idle if c.idle_since < limit]
        for conn in stale:
            conn._close()

    def close(self) -> None:
        self.closed = True
        for conn in list(self.idle):
            conn._close()
