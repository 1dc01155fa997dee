"""DiscoveryManager with static urls + active health checks against real backends."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.config.model import GatewayConfig
from meshgate.discovery.manager import DiscoveryManager
from meshgate.etcdv3 import EtcdClient
from tests.conftest import ROOT, Backend
from tests.support import dnsmasq
from tests.support.aio import eventually, run
from tests.support.etcd import EtcdServer, etcd_factory, etcd_server  # noqa: F401
from tests.support.gateway import free_port

CHECK = {"path": "/name", "interval": 100, "timeout": 300, "healthyThreshold": 1,
         "unhealthyThreshold": 1}


class Recorder:
    """The publish callback: every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []

    def __call__(self, service: str, endpoints: list[dict[str, Any]]) -> None:
        self.calls.append((service, endpoints))

    def last(self, service: str) -> dict[str, bool] | None:
        for name, endpoints in reversed(self.calls):
            if name == service:
                return {e["key"]: e["healthy"] for e in endpoints}
        return None

    def count(self, service: str) -> int:
        return sum(1 for name, _ in self.calls if name == service)


def gateway(services: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.model_validate({"serviceEndpoints": services})


def start_backend_on(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.backend", "--port", str(port)],
                            stdout=subprocess.PIPE, cwd=ROOT, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("listening on")
    return proc


@pytest.fixture
def backends(backend_factory: Callable[[str], Backend]) -> tuple[Backend, Backend]:
    return backend_factory("a"), backend_factory("b")


@pytest.fixture
def late_port() -> Iterator[tuple[int, list[subprocess.Popen[str]]]]:
    procs: list[subprocess.Popen[str]] = []
    yield free_port(), procs
    for p in procs:
        p.kill()
        p.wait()


def checks_done(manager: DiscoveryManager, service: str) -> float:
    """Sum of the last-check times: grows with every finished check."""
    return sum((e["check"] or {}).get("lastCheck") or 0
               for e in manager.clusters()[service]["endpoints"])


def test_failing_endpoint_is_published_unhealthy_then_recovers(
        backends: tuple[Backend, Backend],
        late_port: tuple[int, list[subprocess.Popen[str]]]) -> None:
    a, _ = backends
    port, procs = late_port
    down = f"http://127.0.0.1:{port}"
    recorder = Recorder()

    async def scenario() -> None:
        manager = DiscoveryManager(recorder)
        await manager.apply(gateway({
            "users": {"urls": [a.url, {"url": down + "/base/", "weight": 3, "zone": "z1"}],
                      "healthCheck": CHECK},
            "plain": {"url": a.url},                      # nothing to manage
        }))
        try:
            want = {a.url: True, down + "/base": False}
            await eventually(lambda: recorder.last("users") == want)
            published = recorder.calls[-1][1]
            late = next(e for e in published if e["port"] == port)
            assert late == {"key": down + "/base", "host": "127.0.0.1", "port": port,
                            "scheme": "http", "path": "/base", "weight": 3, "zone": "z1",
                            "version": "", "id": f"127.0.0.1:{port}", "healthy": False}
            assert set(manager.current()) == {"users"}
            assert manager.current()["users"] == published

            # Steady state: checks keep running, nothing is published again.
            count = recorder.count("users")
            done = checks_done(manager, "users")
            await eventually(lambda: checks_done(manager, "users") > done + 1)
            done = checks_done(manager, "users")
            await eventually(lambda: checks_done(manager, "users") > done + 1)
            assert recorder.count("users") == count

            view = manager.clusters()["users"]
            assert view["provider"] == "static" and not view["stale"]
            failing = next(e for e in view["endpoints"] if e["key"] == down + "/base")
            assert failing["sourceHealthy"] and not failing["healthy"]
            assert failing["check"]["lastError"]
            metrics = {(n, tuple(sorted(lb.items()))): v for n, lb, v in manager.metrics()}
            assert metrics[("meshgate_discovery_endpoints", (("service", "users"),))] == 2
            assert metrics[("meshgate_discovery_healthy_endpoints", (("service", "users"),))] == 1
            assert metrics[("meshgate_endpoint_healthy",
                            (("endpoint", down + "/base"), ("service", "users")))] == 0

            procs.append(start_backend_on(port))       # the endpoint comes up
            await eventually(lambda: recorder.last("users") == {a.url: True,
                                                                down + "/base": True})
            assert recorder.count("users") == count + 1
        finally:
            await manager.stop()

    run(scenario())


def test_apply_keeps_unchanged_replaces_changed_and_stops_removed(
        backends: tuple[Backend, Backend]) -> None:
    a, b = backends
    recorder = Recorder()

    async def scenario() -> None:
        manager = DiscoveryManager(recorder)
        services = {"users": {"urls": [a.url, b.url], "healthCheck": CHECK},
                    "orders": {"url": b.url, "healthCheck": CHECK}}
        await manager.apply(gateway(services))
        try:
            await eventually(lambda: recorder.last("users") == {a.url: True, b.url: True}
                             and recorder.last("orders") == {b.url: True})
            count = len(recorder.calls)
            before = manager.clusters()["users"]["lastUpdate"]

            # Same definitions plus a pipeline-irrelevant change: nothing restarts.
            await manager.apply(gateway({**services, "users": {**services["users"],
                                                               "timeout": 1234}}))
            assert manager.clusters()["users"]["lastUpdate"] == before

            # A new check interval restarts the checker without a flash of unhealthy.
            changed = {**services["users"], "healthCheck": {**CHECK, "interval": 150}}
            await manager.apply(gateway({"users": changed}))
            assert "orders" not in manager.current()
            await eventually(lambda: manager.clusters()["users"]["lastUpdate"] != before)
            done = checks_done(manager, "users")
            await eventually(lambda: checks_done(manager, "users") > done)
            assert len(recorder.calls) == count            # no publish: same set, same health

            # Removing the healthCheck hands the service back to the worker's static urls.
            await manager.apply(gateway({"users": {"urls": [a.url, b.url]}}))
            assert manager.current() == {} and manager.clusters() == {}
        finally:
            await manager.stop()

    run(scenario())


@pytest.mark.skipif(not dnsmasq.available(), reason="dnsmasq is not installed")
def test_provider_error_keeps_the_published_set(tmp_path: Path,
                                                backends: tuple[Backend, Backend]) -> None:
    a, _ = backends
    server = dnsmasq.Dnsmasq(tmp_path)
    server.set_hosts({"users.test": ["127.0.0.1"]})
    server.start()
    recorder = Recorder()

    async def scenario() -> None:
        manager = DiscoveryManager(recorder)
        await manager.apply(gateway({"users": {
            "discovery": {"type": "dns", "name": "users.test", "port": a.port,
                          "nameservers": [server.server], "minRefresh": 100,
                          "maxRefresh": 200, "timeout": 300},
            "healthCheck": CHECK}}))
        try:
            await eventually(lambda: recorder.last("users") == {a.url: True})
            count = len(recorder.calls)
            server.stop()
            await eventually(lambda: manager.clusters()["users"]["stale"])
            view = manager.clusters()["users"]
            assert view["error"] and [e["key"] for e in view["endpoints"]] == [a.url]
            metrics = {(n, lb.get("service")): v for n, lb, v in manager.metrics()}
            assert metrics[("meshgate_discovery_stale", "users")] == 1
            assert metrics[("meshgate_discovery_errors_total", "users")] >= 1
            assert len(recorder.calls) == count
            assert manager.current()["users"][0]["healthy"] is True
        finally:
            await manager.stop()
            server.stop()

    run(scenario())


def test_source_health_and_check_combine(etcd_server: EtcdServer,  # noqa: F811
                                         backends: tuple[Backend, Backend]) -> None:
    a, b = backends
    recorder = Recorder()

    def value(backend: Backend, healthy: bool) -> bytes:
        return json.dumps({"address": "127.0.0.1", "port": backend.port,
                           "healthy": healthy}).encode()

    async def scenario() -> None:
        client = EtcdClient([etcd_server.url])
        await client.put("/services/users/a", value(a, False))    # the source says no
        await client.put("/services/users/b", value(b, True))
        manager = DiscoveryManager(recorder)
        await manager.apply(gateway({"users": {
            "discovery": {"type": "etcd", "endpoints": [etcd_server.url],
                          "prefix": "/services/users/"},
            "healthCheck": CHECK}}))
        try:
            await eventually(lambda: recorder.last("users") == {a.url: False, b.url: True})
            view = {e["key"]: e for e in manager.clusters()["users"]["endpoints"]}
            assert view[a.url]["check"]["healthy"] is True           # the check passes...
            assert view[a.url]["sourceHealthy"] is False             # ...the source does not
            assert view[a.url]["healthy"] is False and view[a.url]["id"] == "a"
            await client.put("/services/users/a", value(a, True))
            await eventually(lambda: recorder.last("users") == {a.url: True, b.url: True},
                             timeout=2)
            b.stop()                                                  # now the check fails
            await eventually(lambda: recorder.last("users") == {a.url: True, b.url: False},
                             timeout=2)
        finally:
            await manager.stop()
            await client.close()

    run(scenario())
