"""The master process: validates config, supervises workers, serves the Admin API.

Theory of operation
-------------------
The master never touches client traffic. It starts N worker processes, each
with a control socket (see ``control``), restarts any that die, and serves the
Admin API (``/ready``, ``/metrics`` summed over workers) on the admin port.

It watches the config files; a change is validated here first: if invalid the
error (file, line, field) is logged and the workers keep their Snapshot; if
valid every worker is told to reload, which it does without closing a
connection. SIGTERM or SIGINT drains: workers get SIGTERM, finish what is in
flight up to ``drainTimeout``, and the master exits 0 when they are gone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshgate.admin.adminkey import install_admin_key
from meshgate.admin.app import admin_server, create_admin_app, guard_admin
from meshgate.config.loader import ConfigError, LoadedConfig, load_config
from meshgate.discovery.manager import DiscoveryManager
from meshgate.registry.server import EmbeddedRegistry
from meshgate.server.control import Channel, encode_config
from meshgate.server.embed import bind
from meshgate.server.ports import PortBusy, PortClaims, worker_listeners
from meshgate.sidecar.outbound import outbound_service, registry_url
from meshgate.sidecar.registration import InstanceRegistration
from meshgate.telemetry.metrics import merge

log = logging.getLogger("meshgate.master")
WATCH_INTERVAL = float(os.environ.get("MESHGATE_WATCH_INTERVAL", "1.0"))


@dataclass(eq=False)
class WorkerHandle:
    index: int
    process: asyncio.subprocess.Process
    channel: Channel
    ready: bool = False
    failed: str | None = None
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)


class Master:
    def __init__(self, config: LoadedConfig, workers: int, log_level: str) -> None:
        self.config = config
        self.count = workers
        self.log_level = log_level
        self.workers: dict[int, WorkerHandle] = {}
        self.stopping = False
        self.stopped = asyncio.Event()          # every worker has exited
        self.stop_requested = asyncio.Event()
        self.ids = itertools.count(1)
        self.started = asyncio.get_running_loop().create_future()
        self.reloads = 0
        self.seen_stamp: tuple[float, ...] = ()
        self.failures: dict[int, int] = {}      # worker index -> quick successive exits
        self.store: Any = None      # the consumer store, opened by the Admin API on first use
        self.discovery = DiscoveryManager(self._publish, registry_url=registry_url(config))
        self.pending_apply: asyncio.Task[None] | None = None
        self.subscriptions: set[str] = set()    # services sidecar workers call outbound
        self.registration: Any = None           # sidecar mode: this instance's registration
        self.overlay: Any = None                # sidecar mode: applied to every loaded config
        self.embedded_registry: Any = None      # system registry.serve

    # -- Supervisor protocol for the admin app -----------------------------
    def is_ready(self) -> bool:
        return (not self.stopping and len(self.workers) == self.count
                and all(w.ready for w in self.workers.values()))

    async def collect_metrics(self) -> dict[str, Any]:
        merged = merge(await self._ask_workers("metrics"))
        merged["gauges"]["meshgate_config_reloads"] = self.reloads
        merged["control"] = self.discovery.metrics()
        return merged

    async def collect_clusters(self) -> dict[str, Any]:
        """``/clusters``: the control plane's view, with each worker's data-plane view."""
        replies = await self._ask_workers("clusters")
        control = self.discovery.clusters()
        out: dict[str, Any] = {}
        for name in [*self.config.gateway.serviceEndpoints, *sorted(self.subscriptions)]:
            workers = [r.get(name, []) for r in replies]
            out[name] = {"controlPlane": control.get(name), "workers": workers}
        return out

    async def _ask_workers(self, op: str) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        futures = []
        for handle in self.workers.values():
            if not handle.ready:
                continue
            n = next(self.ids)
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            handle.pending[n] = fut
            handle.channel.send({"op": op, "id": n})
            futures.append(fut)
        done = await asyncio.gather(*(asyncio.wait_for(f, 2.0) for f in futures),
                                    return_exceptions=True)
        return [d for d in done if isinstance(d, dict)]

    # -- the control plane's endpoint sets ---------------------------------------
    def _publish(self, cluster: str, endpoints: list[dict[str, Any]]) -> None:
        message = {"op": "endpoints", "cluster": cluster, "endpoints": endpoints}
        for handle in self.workers.values():
            handle.channel.send(message)

    def _discovered(self) -> Any:
        """The gateway config, plus the services sidecar workers asked for."""
        gateway = self.config.gateway
        side = gateway.sidecar
        if side is None or not self.subscriptions:
            return gateway
        url = registry_url(self.config)
        extra = {name: outbound_service(side, name, url) for name in sorted(self.subscriptions)
                 if name not in gateway.serviceEndpoints}
        return gateway.model_copy(update={"serviceEndpoints": {**gateway.serviceEndpoints,
                                                                 **extra}})

    def _apply_discovery(self) -> None:
        previous = self.pending_apply

        async def apply() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await self.discovery.apply(self._discovered())
            except Exception:
                log.exception("discovery could not be configured")

        self.pending_apply = asyncio.get_running_loop().create_task(apply())

    # -- workers -------------------------------------------------------------
    async def _spawn(self, index: int) -> WorkerHandle:
        ours, theirs = socket.socketpair()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshgate.server.worker",
            "--config", str(self.config.directory), "--control-fd", str(theirs.fileno()),
            "--log-level", self.log_level, pass_fds=[theirs.fileno()])
        theirs.close()
        handle = WorkerHandle(index, process, await Channel.open(ours))
        # the running config, not the file: it may have been broken since
        handle.channel.send({"op": "config", "config": encode_config(self.config)})
        for cluster, endpoints in self.discovery.current().items():
            handle.channel.send({"op": "endpoints", "cluster": cluster, "endpoints": endpoints})
        self.workers[index] = handle
        if self.stopping:               # a stop arrived while this one was starting
            process.send_signal(signal.SIGTERM)
        asyncio.get_running_loop().create_task(self._listen(handle))
        asyncio.get_running_loop().create_task(self._watch_exit(handle))
        return handle

    async def _listen(self, handle: WorkerHandle) -> None:
        while True:
            try:
                message = await handle.channel.receive()
            except (ConnectionError, ValueError):
                message = None
            if message is None:
                return
            op = message.get("op")
            if op == "ready":
                handle.ready = True
                loop = asyncio.get_running_loop()
                loop.call_later(30, self._forgive, handle)
                self._check_started()
            elif op == "failed":
                handle.failed = str(message.get("error"))
                if not self.started.done():
                    self.started.set_exception(RuntimeError(handle.failed))
            elif op in ("metrics", "clusters"):
                fut = handle.pending.pop(message.get("id", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(message.get("data") or {})
            elif op == "subscribe":
                service = str(message.get("service", ""))
                if service and service not in self.subscriptions:
                    self.subscriptions.add(service)
                    self._apply_discovery()
            elif op == "reloaded" and not message.get("ok"):
                log.error("worker %d kept its config: %s", handle.index, message.get("error"))

    def _forgive(self, handle: WorkerHandle) -> None:
        if self.workers.get(handle.index) is handle:
            self.failures.pop(handle.index, None)

    def _check_started(self) -> None:
        if not self.started.done() and self.is_ready():
            self.started.set_result(None)

    async def _watch_exit(self, handle: WorkerHandle) -> None:
        code = await handle.process.wait()
        handle.channel.close()
        if self.workers.get(handle.index) is handle:
            del self.workers[handle.index]
        if self.stopping:
            if not self.workers:
                self.stopped.set()
            return
        if not self.started.done():
            self.started.set_exception(RuntimeError(handle.failed or f"exit code {code}"))
            return
        # A worker that dies again right away waits longer each time (capped),
        # so a persistent fault (say, a certificate file removed) is retried
        # without spinning; a long-lived worker resets the backoff.
        failures = self.failures.get(handle.index, 0) + 1
        self.failures[handle.index] = failures
        delay = min(0.5 * 2 ** (failures - 1), 30.0)
        log.warning("worker %d exited with %s%s; starting a new one in %.1fs", handle.index,
                    code, f" ({handle.failed})" if handle.failed else "", delay)
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(handle.index)

    # -- config reload ---------------------------------------------------------
    def _stamp(self) -> tuple[float, ...]:
        stamps = []
        for path in (self.config.gateway_path, self.config.system_path):
            try:
                stamps.append(path.stat().st_mtime_ns if path else 0)
            except OSError:
                stamps.append(-1)
        return tuple(stamps)

    async def _watch_config(self) -> None:
        self.seen_stamp = self._stamp()
        while not self.stopping:
            await asyncio.sleep(WATCH_INTERVAL)
            if self._stamp() != self.seen_stamp:
                self.reload()

    def reload(self) -> bool:
        """Re-read the config files; apply them if valid (also called by the Admin API)."""
        self.seen_stamp = self._stamp()     # a reload of this version needs no second one
        try:
            config = load_config(self.config.directory)
            if self.overlay is not None:
                config = self.overlay(config)
        except ConfigError as exc:
            log.error("config change rejected, the running config keeps serving: %s", exc)
            return False
        self.config = config
        self.reloads += 1
        if self.registration is not None:
            self.registration.offer_h2c(config.gateway.server.http2.enabled)
        message = {"op": "reload", "config": encode_config(config)}
        for handle in self.workers.values():
            handle.channel.send(message)
        self._apply_discovery()
        log.info("config reloaded")
        return True

    # -- lifecycle -------------------------------------------------------------
    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_requested.set()
        if self.registration is not None:
            # Leave the registry first, so callers stop choosing us, then drain.
            asyncio.get_running_loop().create_task(self._deregister_then_drain())
            return
        self._drain()

    def _drain(self) -> None:
        log.info("draining")
        for handle in self.workers.values():
            if handle.process.returncode is None:
                handle.process.send_signal(signal.SIGTERM)
        if not self.workers:
            self.stopped.set()

    async def _start_registry(self) -> None:
        """system.config.yml ``registry.serve``: the registry runs in this process."""
        registry = self.config.system.registry
        serve = registry.serve if registry is not None else None
        if serve is None:
            return
        self.embedded_registry = EmbeddedRegistry(
            serve.host, serve.port, store=serve.store, data_dir=serve.dataDir,
            etcd_endpoints=serve.etcd, etcd_prefix=serve.etcdPrefix, allowed_hosts=serve.hosts)
        try:
            await self.embedded_registry.start()
        except OSError as exc:
            raise RuntimeError(f"the registry cannot listen on {serve.host}:{serve.port}: "
                               f"{exc.strerror or exc}") from None
        log.info("registry serving on http://%s:%d", serve.host, self.embedded_registry.port)

    async def _stop_registry(self) -> None:
        if self.embedded_registry is not None:
            await self.embedded_registry.stop()
            self.embedded_registry = None

    async def _register(self) -> None:
        """Sidecar mode: keep this instance registered while the local app is up."""
        side = self.config.gateway.sidecar
        if side is None or not side.selfRegister or not side.service:
            return
        url = registry_url(self.config) or "http://127.0.0.1:8500"
        self.registration = InstanceRegistration(side, url,
                                                 self.config.gateway.server.http2.enabled)
        await self.registration.start()
        log.info("registering %s/%s at %s:%d in %s once the app on port %d answers",
                 side.service, side.instanceId, side.address, side.inboundPort, url,
                 side.appPort)

    async def _deregister_then_drain(self) -> None:
        registration = self.registration
        try:
            await asyncio.wait_for(registration.stop(), 3.0)
            log.info("deregistered %s/%s", registration.service, registration.instance_id)
        except Exception as exc:      # the TTL removes us anyway
            log.warning("deregistration failed: %s", exc)
        # Callers learn of it through their watches; until then keep answering.
        await asyncio.sleep(registration.side.drainDelay / 1000.0)
        self._drain()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        admin_cfg = self.config.gateway.admin
        admin = None
        admin_task: asyncio.Future[None] = loop.create_future()
        if admin_cfg is not None:
            try:
                sock = bind(admin_cfg.host, admin_cfg.port)
            except OSError as exc:
                log.error("admin API cannot listen on %s:%s: %s",
                          admin_cfg.host, admin_cfg.port, exc.strerror or exc)
                return 1
            app = create_admin_app(self)
            if install_admin_key(app):
                log.info("admin API requires the MESHGATE_ADMIN_KEY bearer key")
            guard_admin(app, self)      # outermost: a browser is refused before anything
            admin = admin_server(app, admin_cfg.host, admin_cfg.port)
            admin_task = loop.create_task(admin.serve(sockets=[sock]))
        claims = PortClaims()
        try:
            await claims.claim(worker_listeners(self.config.gateway))
        except PortBusy as exc:
            log.error("cannot start: %s", exc)
            await _stop_admin(admin, admin_task)
            return 1
        try:
            await self._start_registry()
            await self.discovery.apply(self._discovered())
        except Exception as exc:
            log.error("discovery could not start: %s", exc)
            await _stop_admin(admin, admin_task)
            await self._stop_registry()
            return 1
        for i in range(self.count):
            if self.stopping:
                break
            await self._spawn(i)
        try:
            # A stop request while workers start ends the wait too (no hang on
            # an early SIGTERM); the drain below then handles both cases.
            await asyncio.wait([self.started, loop.create_task(self.stop_requested.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            if self.started.done():
                self.started.result()
                claims.release()        # our workers' sockets now keep the ports ours
        except RuntimeError as exc:
            log.error("could not start: %s", exc)
            self.stop()
            await self._wait_workers()
            await _stop_admin(admin, admin_task)
            return 1
        if admin is not None and admin_task.done():
            log.error("admin API stopped at start")
            self.stop()
            await self._wait_workers()
            return 1
        if not self.stopping:
            self._announce()
            await self._register()
            watcher = loop.create_task(self._watch_config())
            await self.stop_requested.wait()
            watcher.cancel()
        await self._wait_workers()
        await _stop_admin(admin, admin_task)
        await self.discovery.stop()
        await self._stop_registry()
        if self.store is not None:
            await self.store.close()
        log.info("stopped")
        return 0

    async def _wait_workers(self) -> None:
        deadline = self.config.gateway.server.drainTimeout / 1000.0 + 5
        try:
            await asyncio.wait_for(self.stopped.wait(), deadline)
        except TimeoutError:
            for handle in list(self.workers.values()):
                handle.process.kill()

    def _announce(self) -> None:
        gw = self.config.gateway
        where = []
        if gw.http is not None:
            where.append(f"http://{gw.http.hostname or '0.0.0.0'}:{gw.http.port}")
        if gw.https is not None:
            where.append(f"https://{gw.https.hostname or '0.0.0.0'}:{gw.https.port}")
        admin = f"http://{gw.admin.host}:{gw.admin.port}" if gw.admin else "off"
        log.info("meshgate serving %s with %d worker(s); admin API %s",
                 ", ".join(where) or "no listener", self.count, admin)


async def _stop_admin(admin: Any, task: asyncio.Future[None]) -> None:
    if admin is not None:
        admin.should_exit = True
        await task


async def serve(config_dir: Path, workers: int | None, log_level: str,
                overlay: Any = None) -> int:
    """Serve CONFIG_DIR; ``overlay`` (sidecar mode) rewrites every config loaded."""
    config = load_config(config_dir)
    if overlay is not None:
        config = overlay(config)
    count = workers if workers is not None else config.gateway.server.workers
    master = Master(config, max(1, count), log_level)
    master.overlay = overlay
    return await master.run()
