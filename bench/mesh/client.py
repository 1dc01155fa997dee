"""Small HTTP/1.1 load clients on raw asyncio streams (keep-alive, GET only).

Theory of operation
-------------------
wrk measures throughput well but cannot send a fixed number of requests nor
a constant rate (wrk2 is not packaged here), so the mesh benchmark brings
its own two clients:

* ``burst``  -- ``total`` requests over ``concurrency`` keep-alive
  connections, each connection sending its next request as soon as the
  previous answer is read (closed loop). Returns the status of every request
  (0 for a connection that failed) and each request's latency.
* ``paced``  -- an open-loop schedule: request ``i`` is *due* at
  ``start + i / rate``. A scheduler sleeps until each due time, takes an idle
  connection (waiting for one if all are busy) and sends. Latency is taken
  from the due time, so time spent queued behind a slow answer, or behind a
  late scheduler, counts (no coordinated omission); the latency from the
  actual write is kept too, as ``service_ms``.

Responses are read by ``Content-Length`` or chunked framing; a response
with ``Connection: close`` or any socket error makes the connection
reconnect before its next request.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Outcome:
    statuses: Counter[int] = field(default_factory=Counter)
    latency_ms: list[float] = field(default_factory=list)   # from due time (paced) or write
    service_ms: list[float] = field(default_factory=list)   # from the write
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)


class Connection:
    """One keep-alive connection; ``get`` returns the status, 0 on a socket error."""

    def __init__(self, port: int, head: bytes) -> None:
        self.port = port
        self.head = head
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self.reader, self.writer

    async def get(self) -> int:
        try:
            if self.reader is None or self.writer is None:
                reader, writer = await self._connect()
            else:
                reader, writer = self.reader, self.writer
            writer.write(self.head)
            status, close = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return 0
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    close = b"\r\nconnection: close" in lower
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        await reader.readexactly(int(lower[at + 17 : end]))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)      # data and its CRLF (or the last CRLF)
            if size == 0:
                break
    elif status not in (204, 304) and status >= 200:
        await reader.read()                         # close-delimited
        close = True
    return status, close


def request_head(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mesh-bench\r\n\r\n".encode()


async def burst(port: int, path: str, total: int, concurrency: int,
                host: str = "bench") -> Outcome:
    """``total`` GETs over ``concurrency`` keep-alive connections, closed loop."""
    head = request_head(path, host)
    out = Outcome()
    left = [total]

    async def worker() -> None:
        conn = Connection(port, head)
        try:
            while left[0] > 0:
                left[0] -= 1
                t0 = time.perf_counter()
                status = await conn.get()
                ms = (time.perf_counter() - t0) * 1000
                out.statuses[status] += 1
                out.latency_ms.append(ms)
                out.service_ms.append(ms)
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.seconds = time.perf_counter() - started
    return out


async def paced(port: int, path: str, rate: float, seconds: float, connections: int,
                host: str = "bench") -> Outcome:
    """GETs at a constant ``rate`` for ``seconds``; latency counted from each due time."""
    head = request_head(path, host)
    clock = time.perf_counter      # uvloop's loop.time() only has millisecond steps
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(Connection(port, head))
    out = Outcome()
    tasks: set[asyncio.Task[None]] = set()

    async def one(conn: Connection, due: float) -> None:
        sent = clock()
        status = await conn.get()
        done = clock()
        idle.put_nowait(conn)
        out.statuses[status] += 1
        out.latency_ms.append((done - due) * 1000)
        out.service_ms.append((done - sent) * 1000)

    count = int(rate * seconds)
    start = clock() + 0.01
    for i in range(count):
        due = start + i / rate
        if (wait := due - clock()) > 0:
            await asyncio.sleep(wait)
        conn = await idle.get()
        task = asyncio.create_task(one(conn, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    out.seconds = clock() - start
    while not idle.empty():
        idle.get_nowait().close()
    return out


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine on uvloop when it is installed (less client CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..1 (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
