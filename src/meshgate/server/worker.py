"""A worker process: listeners on shared ports, the data plane, a control channel.

Started by the master as ``python -m meshgate.server.worker``. Each worker
binds the configured ports itself with SO_REUSEPORT, so the kernel spreads
connections over workers. Once a tick (a quarter second) it advances the
coarse clock, expires upstream requests past their deadline, and sweeps
client connections for head and keep-alive timeouts and pools for stale idle
connections.

SIGTERM drains: listeners close, idle connections close, busy ones close after
their response; the worker exits when none are left or at ``drainTimeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import signal
import socket
import sys
from typing import Any

import uvloop

from meshgate import _compiled
from meshgate.config.snapshot import compile_snapshot
from meshgate.server import codecs
from meshgate.server.context import WorkerContext
from meshgate.server.control import Channel, decode_config
from meshgate.server.tls import SniSelector
from meshgate.sidecar.outbound import OutboundRouter, registry_url
from meshgate.telemetry.metrics import Metrics

log = logging.getLogger("meshgate.worker")
TICK = 0.25


class Worker:
    def __init__(self, config_dir: str, channel: Channel) -> None:
        self.config_dir = config_dir
        self.channel = channel
        self.loop = asyncio.get_running_loop()
        self.metrics = Metrics()
        self.ctx = WorkerContext(self.loop, self.metrics)
        self.servers: list[asyncio.Server] = []
        self.outbound_server: asyncio.Server | None = None
        self.stopped = asyncio.Event()
        self.reloads = 0

    async def start(self) -> None:
        for name in _compiled.stale():
            log.warning("%s was edited after it was compiled; this worker runs the old "
                        "build (run `make install` to rebuild)", name)
        first = await self.channel.receive()       # the master's validated config
        if first is None or first.get("op") != "config":
            raise RuntimeError("the master sent no config")
        cfg = decode_config(first["config"])
        self.ctx.install(compile_snapshot(cfg, self.ctx))
        gw = cfg.gateway
        if gw.http is not None:
            self.servers.append(await self.loop.create_server(
                codecs.plaintext(self.ctx), gw.http.hostname or None, gw.http.port,
                reuse_port=True, backlog=2048))
        if gw.https is not None:
            http2 = self.ctx.http2.enabled
            ssl_ctx = SniSelector(gw.https.tls, http2).server_context()
            self.servers.append(await self.loop.create_server(
                codecs.tls(self.ctx, http2), gw.https.hostname or None,
                gw.https.port, ssl=ssl_ctx, reuse_port=True, backlog=2048,
                ssl_handshake_timeout=self.ctx.head_timeout))
        if gw.sidecar is not None:
            await self._outbound(cfg)
        self.loop.create_task(self._ticker())
        self.loop.create_task(self._control())
        self.channel.send({"op": "ready", "pid": os.getpid()})

    async def _outbound(self, cfg: Any) -> None:
        """Sidecar mode: the listener the local app calls other services through."""
        side = cfg.gateway.sidecar
        registry = side.registry or registry_url(cfg)
        self.ctx.outbound = OutboundRouter(
            self.ctx, side, registry,
            lambda name: self.channel.send({"op": "subscribe", "service": name}))
        # Not in self.servers: while the inbound side drains, the app may still
        # need to call other services to finish its work.
        self.outbound_server = await self.loop.create_server(
            codecs.plaintext(self.ctx, outbound=True), side.bind, side.outboundPort,
            reuse_port=True, backlog=2048)

    def _clusters(self) -> dict[str, Any]:
        clusters = dict(self.ctx.snapshot.clusters)
        if self.ctx.outbound is not None:
            clusters.update(self.ctx.outbound.clusters)
        return clusters

    async def _ticker(self) -> None:
        ctx = self.ctx
        n = 0
        while True:
            await asyncio.sleep(TICK)
            now = ctx.now = self.loop.time()
            n += 1
            if n % 4 == 0:
                ctx.refresh_date()
                ctx.snapshot.sweep(now)
                if ctx.outbound is not None:
                    ctx.outbound.sweep(now)
            late = [c for c in ctx.upstream_conns
                    if c.ex is not None and c.deadline and c.deadline <= now]
            for conn in late:
                conn.expire()
            if ctx.timed_calls:
                for call in [c for c in ctx.timed_calls if c.deadline <= now]:
                    call.expire()
            for client in list(ctx.connections):
                client.tick(now, ctx.head_timeout, ctx.idle_timeout)

    async def _control(self) -> None:
        while True:
            message = await self.channel.receive()
            if message is None:          # the master is gone: stop serving
                self.drain()
                return
            op = message.get("op")
            if op == "metrics":
                self.channel.send({"op": "metrics", "id": message.get("id"),
                                   "data": self._export()})
            elif op == "reload":
                self.channel.send(self._reload(message))
            elif op == "endpoints":
                self._endpoints(message)
            elif op == "clusters":
                self.channel.send({"op": "clusters", "id": message.get("id"), "data": {
                    name: c.describe() for name, c in self._clusters().items()}})

    def _export(self) -> dict[str, Any]:
        counters = self.metrics.counters
        labelled = self.metrics.labelled = {}
        for name, cluster in self._clusters().items():
            for ep in cluster.endpoints:
                labels = (name, ep.key)
                counters[("meshgate_endpoint_requests", labels)] = ep.pool.responses
                counters[("meshgate_endpoint_errors", labels)] = ep.pool.errors
                if ep.latency_count:
                    counters[("meshgate_endpoint_response_seconds", labels)] = ep.latency_sum
                    counters[("meshgate_endpoint_timed_responses", labels)] = ep.latency_count
                labelled[("meshgate_endpoint_ejected", labels)] = 1 if ep.ejected_until else 0
                labelled[("meshgate_endpoint_active_requests", labels)] = ep.active
        self.metrics.gauges = {
            "meshgate_downstream_connections": len(self.ctx.connections),
            "meshgate_upstream_connections": sum(
                ep.pool.open for c in self.ctx.snapshot.clusters.values() for ep in c.endpoints),
            "meshgate_retries_active": sum(
                c.active_retries for c in self.ctx.snapshot.clusters.values()),
            "meshgate_workers": 1,
            "meshgate_config_reloads": self.reloads,
        }
        return self.metrics.export()

    def _reload(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            cfg = decode_config(message["config"])
            snapshot = compile_snapshot(cfg, self.ctx, self.ctx.snapshot)
        except Exception as exc:       # the old config keeps serving
            log.error("reload failed, keeping the running config: %s", exc)
            return {"op": "reloaded", "ok": False, "error": str(exc)}
        self.ctx.swap(snapshot)
        if self.ctx.outbound is not None:
            self.ctx.outbound.reset()
        self.reloads += 1
        return {"op": "reloaded", "ok": True}

    def _endpoints(self, message: dict[str, Any]) -> None:
        """The control plane's new endpoint set for one cluster."""
        name = message.get("cluster", "")
        endpoints = message.get("endpoints") or []
        self.ctx.endpoint_sets[name] = endpoints
        cluster = self.ctx.snapshot.clusters.get(name)
        if cluster is not None and cluster.dynamic:
            cluster.set_endpoints(endpoints)
        if self.ctx.outbound is not None:
            self.ctx.outbound.endpoints(name, endpoints)

    def drain(self) -> None:
        if self.ctx.draining:
            return
        self.ctx.draining = True
        for server in self.servers:
            server.close()
        for conn in list(self.ctx.connections):
            conn.drain()
        self.stopped.set()


async def _main(config_dir: str, control_fd: int) -> int:
    sock = socket.socket(fileno=control_fd)
    channel = await Channel.open(sock)
    worker = Worker(config_dir, channel)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.drain)
    loop.add_signal_handler(signal.SIGINT, lambda: None)   # the master decides
    try:
        await worker.start()
    except Exception as exc:
        log.error("worker failed to start: %s", exc)
        channel.send({"op": "failed", "error": str(exc)})
        await asyncio.sleep(0)
        return 1
    await worker.stopped.wait()
    drain_timeout = worker.ctx.snapshot.server.drainTimeout / 1000.0
    try:
        await asyncio.wait_for(_until_idle(worker.ctx), drain_timeout)
    except TimeoutError:
        log.warning("drain deadline reached with %d connections open",
                    len(worker.ctx.connections))
    await _close_services(worker.ctx)
    return 0


async def _close_services(ctx: WorkerContext) -> None:
    """Close what policies opened (stores, Redis clients), each at most once."""
    for service in ctx.services.values():
        close = getattr(service, "close", None) or getattr(service, "aclose", None)
        if close is None:
            continue
        try:
            result = close()
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, 2.0)
        except Exception as exc:       # closing is best effort at exit
            log.debug("closing %r failed: %s", service, exc)


async def _until_idle(ctx: WorkerContext) -> None:
    while ctx.connections:
        await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="meshgate-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(name)s: "
                               "%(message)s")
    sys.exit(uvloop.run(_main(args.config, args.control_fd)))


if __name__ == "__main__":
    main()
