"""The gateway's clusters fed by the registry, end to end (embedded registry).

``system.config.yml`` ``registry.serve`` runs the registry inside ``meshgate
run``; a serviceEndpoint with ``discovery: {type: registry}`` follows it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx

from meshgate.registry.tokens import new_token
from tests.support.gateway import free_port, wait_until


def _config() -> dict[str, Any]:
    return {
        "apiEndpoints": {"api": {"host": "*", "paths": ["/*"]}},
        "serviceEndpoints": {"users": {"discovery": {"type": "registry"},
                                       "retry": {"retryOn": ["connect-failure", "reset"],
                                                 "numRetries": 2}}},
        "policies": ["proxy"],
        "pipelines": {"main": {"apiEndpoints": ["api"], "policies": [
            {"proxy": [{"action": {"serviceEndpoint": "users"}}]}]}},
    }


def _count(backend: Any) -> int:
    return int(httpx.get(backend.url + "/_ctl/count", timeout=5).text)


def test_registry_changes_reach_the_gateway_within_a_second(backend_factory, gateway_factory):
    port = free_port()
    registry = f"http://127.0.0.1:{port}"
    token = new_token(None)[1]      # the embedded registry's operator token, from the env
    auth = {"authorization": f"Bearer {token}"}
    gw = gateway_factory(_config(), system={"registry": {"serve": {"port": port}}},
                         env={"MESHGATE_REGISTRY_TOKEN": token})
    users = [backend_factory(f"users{i}") for i in range(2)]
    for i, b in enumerate(users):
        r = httpx.put(f"{registry}/v1/services/users/instances/u{i}", headers=auth,
                      json={"address": "127.0.0.1", "port": b.port, "ttl": 30000}, timeout=5)
        assert r.status_code == 200
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        wait_until(lambda: {client.get("/name").text for _ in range(6)} == {"users0", "users1"},
                   timeout=5)
        httpx.delete(f"{registry}/v1/services/users/instances/u0", timeout=5, headers=auth)
        gone = time.monotonic()
        seen: Counter[str] = Counter()
        # Keep the load on; a second after deregistration users0 gets nothing more.
        while time.monotonic() - gone < 1.0:
            seen[client.get("/name").text] += 1
        before = _count(users[0])
        results = Counter(client.get("/name").text for _ in range(50))
        assert results == {"users1": 50}
        assert _count(users[0]) == before
        httpx.delete(f"{registry}/v1/services/users/instances/u1", timeout=5, headers=auth)
        wait_until(lambda: client.get("/").status_code == 503, timeout=2)
    clusters = httpx.get(gw.admin_url + "/clusters", timeout=5).json()
    assert clusters["users"]["controlPlane"]["provider"] == "registry"


def test_registry_loss_keeps_the_last_endpoints(backend_factory, gateway_factory, tmp_path):
    from tests.support.registry import RegistryProcess

    registry = RegistryProcess(tmp_path)
    cfg = _config()
    cfg["serviceEndpoints"]["users"]["discovery"]["url"] = registry.url
    gw = gateway_factory(cfg)
    b = backend_factory("users0")
    registry.put("users", "u0", address="127.0.0.1", port=b.port, ttl=30000)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        wait_until(lambda: client.get("/name").text == "users0", timeout=5)
        registry.stop()
        assert all(client.get("/name").text == "users0" for _ in range(20))
    wait_until(lambda: "meshgate_discovery_stale" in gw.metrics() and any(
        line.startswith("meshgate_discovery_stale{") and line.endswith(" 1.0")
        for line in gw.metrics().splitlines()), timeout=5)


def test_active_health_checks_take_endpoints_out_and_back(backend_factory, gateway_factory):
    good, sick = backend_factory("good"), backend_factory("sick", "--fail", "503")
    cfg = _config()
    cfg["serviceEndpoints"]["users"] = {
        "urls": [good.url, sick.url],
        "healthCheck": {"path": "/name", "interval": 100, "unhealthyThreshold": 1,
                        "healthyThreshold": 1}}
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        wait_until(lambda: {client.get("/name").text for _ in range(6)} == {"good"}, timeout=5)
        before = _count(sick)
        assert all(client.get("/name").text == "good" for _ in range(20))
        assert _count(sick) - before <= 2          # only its health checks
        view = httpx.get(gw.admin_url + "/clusters", timeout=5).json()["users"]
        health = {ep["key"]: ep["healthy"] for ep in view["controlPlane"]["endpoints"]}
        assert health == {f"http://127.0.0.1:{good.port}": True,
                          f"http://127.0.0.1:{sick.port}": False}
        httpx.get(sick.url + "/_ctl/fail/off", timeout=5)
        wait_until(lambda: "sick" in {client.get("/name").text for _ in range(6)}, timeout=5)
