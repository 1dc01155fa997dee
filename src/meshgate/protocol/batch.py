"""Writes made while the loop handles one batch of ready sockets, sent after it.

A worker reads every socket that epoll reported ready, then sends what those
reads produced: one pass of wake-ups for the peers instead of one per write.
On a machine whose cores the peers share, each wake-up that preempts the
worker costs more than the write itself. Event loops differ here (uvloop up
to 0.22 deferred small writes to the end of the iteration, later releases
write at once), so meshgate does it itself.

A connection queues itself at most once per pass; ``send_queued`` must be
safe to call after the connection closed. Data that must go out before a
close is sent by the connection itself (it flushes its queue first).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Queued(Protocol):
    def send_queued(self) -> None: ...


class WriteBatch:
    __slots__ = ("_call_soon", "_queued", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._call_soon = loop.call_soon
        self._queued: list[Queued] = []
        self._scheduled = False

    def add(self, conn: Queued) -> None:
        self._queued.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        queued = self._queued
        self._queued = []
        for conn in queued:
            conn.send_queued()
