"""Benchmark of the built-in registry: watch latency and the cost of 10k instances.

Run: ``.venv/bin/python bench/registry_bench.py [--watchers 50 --changes 1000 ...]``

Theory of operation
-------------------
Each part starts its own ``meshgate registry`` process (memory store, free
loopback port) and stops it at the end.

1. Watch latency. ``--watchers`` SSE streams watch one service (as sidecars
   would), each on a raw asyncio connection that only reads the ``id:`` line
   of every event (the index), stamping its arrival. The driver makes
   ``--changes`` changes to that service (alternately registering and
   deregistering an extra instance, next to ``--base`` steady ones), one every
   ``--interval`` ms; each change's index comes back in ``X-Registry-Index``.
   A watcher has seen change k at its first event with index >= k's; the
   change's latency is the time from just before its PUT to the moment the
   last watcher saw it. Prints p50 / p99 / max.
2. Scale. Registers ``--instances`` across ``--services`` services, then
   reads the registry's RSS (VmRSS in /proc) and times ``GET /v1/services``:
   the first read (everything encoded), a read after one change (one service
   re-encoded), and the median of repeated reads (served from the cache).

Targets: p99 change-to-watcher < 1 s; 10k instances < 100 MB RSS; full list < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "meshgate", "registry", "--port", str(self.port),
             "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("registry exited at start")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("registry did not start")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- part 1: watch latency ---------------------------------------------------------


class Watcher:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.indexes: list[int] = []
        self.ready = asyncio.Event()

    async def run(self, port: int, service: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /v1/watch/{service} HTTP/1.1\r\nHost: bench\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        try:
            while line := await reader.readline():
                if line.startswith(b"id: "):
                    self.times.append(time.perf_counter())
                    self.indexes.append(int(line[4:]))
                    self.ready.set()
        finally:
            writer.close()

    def seen_at(self, index: int) -> float | None:
        at = bisect.bisect_left(self.indexes, index)
        return self.times[at] if at < len(self.times) else None


async def watch_latency(args: argparse.Namespace) -> None:
    registry = Registry()
    try:
        async with httpx.AsyncClient(base_url=registry.url, timeout=10) as client:
            for i in range(args.base):
                await client.put(f"/v1/services/bench/instances/base{i}",
                                 json={"address": "10.0.0.1", "port": 1000 + i, "ttl": 600000})
            watchers = [Watcher() for _ in range(args.watchers)]
            tasks = [asyncio.create_task(w.run(registry.port, "bench")) for w in watchers]
            await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in watchers)), 20)
            sent: list[tuple[float, int]] = []
            started = time.perf_counter()
            for k in range(args.changes):
                due = started + k * args.interval / 1000
                if (delay := due - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                t0 = time.perf_counter()
                path = f"/v1/services/bench/instances/extra{k // 2}"
                if k % 2 == 0:
                    response = await client.put(path, json={"address": "10.0.0.2",
                                                            "port": 2000, "ttl": 600000})
                else:
                    response = await client.delete(path)
                sent.append((t0, int(response.headers["X-Registry-Index"])))
            last = sent[-1][1]
            deadline = time.perf_counter() + 10
            while (any(not w.indexes or w.indexes[-1] < last for w in watchers)
                   and time.perf_counter() < deadline):
                await asyncio.sleep(0.01)
            for task in tasks:
                task.cancel()
        latencies, missed = [], 0
        for t0, index in sent:
            seen = [w.seen_at(index) for w in watchers]
            if any(s is None for s in seen):
                missed += 1
                continue
            latencies.append((max(s for s in seen if s is not None) - t0) * 1000)
        events = sum(len(w.indexes) for w in watchers)
        print(f"watch latency: {args.watchers} SSE watchers, {args.changes} changes every "
              f"{args.interval} ms, {args.base} steady instances; {events} events received")
        print(f"  change -> every watcher: p50 {percentile(latencies, 0.5):.1f} ms  "
              f"p99 {percentile(latencies, 0.99):.1f} ms  max {max(latencies):.1f} ms"
              f"{f'  ({missed} never seen)' if missed else ''}")
    finally:
        registry.stop()


# -- part 2: 10k instances -----------------------------------------------------------


async def scale(args: argparse.Namespace) -> None:
    registry = Registry()
    try:
        idle_rss = registry.rss_mb()
        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=registry.url, timeout=30, limits=limits) as client:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(args.instances):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    service = f"svc{i % args.services}"
                    response = await client.put(
                        f"/v1/services/{service}/instances/i{i}",
                        json={"address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                              "port": 8080, "zone": f"zone-{i % 3}", "version": "v1",
                              "tags": ["http", "bench"], "metadata": {"team": "bench"},
                              "ttl": 600000})
                    response.raise_for_status()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            took = time.perf_counter() - started

            async def timed_list() -> tuple[float, int]:
                t0 = time.perf_counter()
                response = await client.get("/v1/services")
                body = response.content
                return (time.perf_counter() - t0) * 1000, len(body)

            cold, size = await timed_list()
            await client.put("/v1/services/svc0/instances/i0",
                             json={"address": "10.9.9.9", "port": 8080, "ttl": 600000})
            after_change, _ = await timed_list()
            warm = [(await timed_list())[0] for _ in range(args.repeat)]
            rss = registry.rss_mb()
        print(f"scale: {args.instances} instances in {args.services} services registered in "
              f"{took:.1f} s ({args.instances / took:.0f}/s, {args.concurrency} concurrent)")
        print(f"  registry RSS: {rss:.1f} MB (idle {idle_rss:.1f} MB)")
        print(f"  GET /v1/services ({size / 1e6:.2f} MB): first {cold:.1f} ms, after one change "
              f"{after_change:.1f} ms, median of {args.repeat} {statistics.median(warm):.1f} ms")
    finally:
        registry.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=20.0, help="ms between changes")
    parser.add_argument("--base", type=int, default=10, help="steady instances in the service")
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--part", choices=["all", "watch", "scale"], default="all")
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.part in ("all", "watch"):
        asyncio.run(watch_latency(args))
    if args.part in ("all", "scale"):
        asyncio.run(scale(args))


if __name__ == "__main__":
    main()
