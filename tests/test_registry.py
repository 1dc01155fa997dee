"""The built-in registry (memory store): API contract, TTL health, watches, restart.

Every test talks over loopback to a real ``meshgate registry`` process (one
shared by the module, each test using its own service names) or, for the
embedding API, to an ``EmbeddedRegistry`` in the test's own loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.registry.client import Registration, RegistryClient
from meshgate.registry.server import EmbeddedRegistry
from tests.support.gateway import wait_until
from tests.support.registry import Events, RegistryProcess


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path_factory.mktemp("registry"))
    yield proc
    proc.stop()


def test_register_heartbeat_deregister_list(registry: RegistryProcess) -> None:
    first = registry.put("users", "u1", address="10.1.0.1", port=9001, zone="a",
                         version="v2", tags=["blue"], metadata={"weight": 3})
    assert first.status_code == 200, first.text
    inst = first.json()
    assert inst | {"registeredAt": 0, "lastHeartbeat": 0} == {
        "id": "u1", "service": "users", "address": "10.1.0.1", "port": 9001,
        "scheme": "http", "zone": "a", "version": "v2", "tags": ["blue"],
        "metadata": {"weight": 3}, "ttl": 10000, "deregisterCriticalAfter": 30000,
        "status": "passing", "registeredAt": 0, "lastHeartbeat": 0, "registeredBy": "operator"}
    assert registry.put("users", "u2", scheme="https", ttl=60000).status_code == 200

    listed = registry.get("/v1/services/users")
    body = listed.json()
    assert body["service"] == "users"
    assert [i["id"] for i in body["instances"]] == ["u1", "u2"]
    assert body["instances"][1]["scheme"] == "https"
    assert int(listed.headers["X-Registry-Index"]) == body["index"]
    everything = registry.get("/v1/services").json()
    assert [i["id"] for i in everything["services"]["users"]] == ["u1", "u2"]
    assert everything["index"] >= body["index"]

    time.sleep(0.01)    # a later wall-clock millisecond for lastHeartbeat
    beat = registry.heartbeat("users", "u1")
    assert beat.status_code == 200
    assert beat.json()["lastHeartbeat"] > inst["lastHeartbeat"]
    assert registry.heartbeat("users", "nope").status_code == 404

    gone = registry.delete("users", "u1")
    assert gone.status_code == 200
    assert int(gone.headers["X-Registry-Index"]) > body["index"]
    assert registry.delete("users", "u1").status_code == 404
    assert [i["id"] for i in registry.instances("users")] == ["u2"]

    unknown = registry.get("/v1/services/never-registered").json()
    assert unknown["instances"] == [] and unknown["service"] == "never-registered"
    assert registry.get("/v1/health").json() == {"status": "ok"}


def test_reregistration_with_same_fields_is_not_a_change(registry: RegistryProcess) -> None:
    registry.put("same", "s1", tags=["x"])
    index = registry.get("/v1/services/same").json()["index"]
    registry.put("same", "s1", tags=["x"])
    assert registry.get("/v1/services/same").json()["index"] == index
    changed = registry.put("same", "s1", tags=["y"]).json()
    assert changed["tags"] == ["y"]
    assert registry.get("/v1/services/same").json()["index"] > index


@pytest.mark.parametrize(("body", "reason"), [
    ({"port": 80}, "address"),
    ({"address": "h", "port": 0}, "port"),
    ({"address": "h", "port": 80, "ttl": "soon"}, "ttl"),
    ({"address": "h", "port": 80, "colour": "red"}, "colour"),
    ({"address": "h", "port": 80, "id": "other"}, "match"),
    ({"address": "h", "port": 80, "tags": "a"}, "tags"),
])
def test_invalid_registration_is_422_with_reason(registry: RegistryProcess,
                                                 body: dict[str, Any], reason: str) -> None:
    response = httpx.put(f"{registry.url}/v1/services/bad/instances/b1", json=body,
                         headers=registry.headers)
    assert response.status_code == 422
    assert reason in response.text
    assert registry.instances("bad") == []


def test_invalid_names_and_wait_are_rejected(registry: RegistryProcess) -> None:
    response = httpx.put(f"{registry.url}/v1/services/-x/instances/b1",
                         json={"address": "h", "port": 1}, headers=registry.headers)
    assert response.status_code == 422 and "service" in response.text
    assert registry.get("/v1/services/x", index=1, wait="soon").status_code == 400


def test_ttl_lapse_marks_critical_then_removes(registry: RegistryProcess) -> None:
    registry.put("lapse", "l1", ttl=300, deregisterCriticalAfter=400)
    registry.put("lapse", "l2", ttl=300, deregisterCriticalAfter=5000)
    assert [i["status"] for i in registry.instances("lapse")] == ["passing", "passing"]

    def status() -> dict[str, str]:
        return {i["id"]: i["status"] for i in registry.instances("lapse")}

    wait_until(lambda: status().get("l1") == "critical", timeout=3)
    started = time.monotonic()
    wait_until(lambda: "l1" not in status(), timeout=3)
    assert time.monotonic() - started >= 0.2      # the grace was served
    assert status() == {"l2": "critical"}
    # A heartbeat brings a critical instance back.
    revived = registry.heartbeat("lapse", "l2")
    assert revived.status_code == 200 and revived.json()["status"] == "passing"
    assert status() == {"l2": "passing"}


def test_blocking_query_returns_early_on_change(registry: RegistryProcess) -> None:
    index = registry.get("/v1/services/blocky").json()["index"]

    async def scenario() -> tuple[float, dict[str, Any]]:
        async with httpx.AsyncClient(base_url=registry.url, timeout=10,
                                     headers=registry.headers) as client:
            query = asyncio.create_task(client.get("/v1/services/blocky",
                                                   params={"index": index, "wait": "5s"}))
            await asyncio.sleep(0.3)
            assert not query.done()
            started = time.monotonic()
            await client.put("/v1/services/blocky/instances/b1",
                             json={"address": "h", "port": 1})
            response = await query
            return time.monotonic() - started, response.json()

    elapsed, body = asyncio.run(scenario())
    assert elapsed < 0.5
    assert body["index"] > index and [i["id"] for i in body["instances"]] == ["b1"]


def test_blocking_query_times_out_and_ignores_other_services(
        registry: RegistryProcess) -> None:
    registry.put("quiet", "q1")
    index = registry.get("/v1/services/quiet").json()["index"]

    async def scenario() -> tuple[float, httpx.Response]:
        async with httpx.AsyncClient(base_url=registry.url, timeout=10,
                                     headers=registry.headers) as client:
            started = time.monotonic()
            query = asyncio.create_task(client.get("/v1/services/quiet",
                                                   params={"index": index, "wait": 600}))
            await asyncio.sleep(0.1)
            await client.put("/v1/services/noisy/instances/n1", json={"address": "h", "port": 1})
            response = await query
            return time.monotonic() - started, response

    elapsed, response = asyncio.run(scenario())
    assert 0.55 <= elapsed < 2.0
    assert response.json()["index"] == index
    assert response.headers["X-Registry-Index"] == str(index)
    # An index from the future (a registry that lost its state) answers at once.
    started = time.monotonic()
    registry.get("/v1/services/quiet", index=10**9, wait="5s")
    assert time.monotonic() - started < 1


def test_sse_watch_delivers_changes_quickly(registry: RegistryProcess) -> None:
    registry.put("streamed", "s1")

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=registry.url, timeout=10,
                                     headers=registry.headers) as client, \
                client.stream("GET", "/v1/watch/streamed") as one, \
                client.stream("GET", "/v1/watch") as every:
            assert one.headers["content-type"].startswith("text/event-stream")
            one_events, every_events = Events(one), Events(every)
            first = await one_events.next()
            assert [i["id"] for i in first["instances"]] == ["s1"]
            whole = await every_events.next()
            assert "streamed" in whole["services"]
            started = time.monotonic()
            await client.put("/v1/services/streamed/instances/s2",
                             json={"address": "h", "port": 2})
            second = await one_events.next()
            assert time.monotonic() - started < 0.5
            assert second["index"] > first["index"]
            assert [i["id"] for i in second["instances"]] == ["s1", "s2"]
            whole2 = await every_events.next()
            assert [i["id"] for i in whole2["services"]["streamed"]] == ["s1", "s2"]

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_client_watch_and_registration_helper(registry: RegistryProcess) -> None:
    async def scenario() -> None:
        async with RegistryClient(registry.url, token=registry.token) as client:
            seen: list[list[str]] = []

            async def watcher() -> None:
                async for _index, instances in client.watch("helped", wait=5):
                    seen.append([i["status"] for i in instances])

            task = asyncio.create_task(watcher())
            while not seen:
                await asyncio.sleep(0.01)
            reg = Registration(client, "helped", "h1", "127.0.0.1", 7000, ttl=300,
                               deregisterCriticalAfter=60000, tags=["t"])
            await reg.start()
            assert reg.instance is not None and reg.instance["tags"] == ["t"]
            await asyncio.sleep(1.2)        # four ttls: heartbeats keep it passing
            assert [i["status"] for i in await client.instances("helped")] == ["passing"]
            # The registry forgets it: the next heartbeat gets 404 and registers again.
            assert await client.deregister("helped", "h1")
            for _ in range(100):
                if await client.instances("helped"):
                    break
                await asyncio.sleep(0.02)
            assert [i["id"] for i in await client.instances("helped")] == ["h1"]
            await reg.stop()
            assert await client.instances("helped") == []
            assert await client.heartbeat("helped", "h1") is None
            assert not await client.deregister("helped", "h1")
            for _ in range(100):
                if seen and seen[-1] == []:
                    break
                await asyncio.sleep(0.02)
            task.cancel()
            assert seen[0] == [] and ["passing"] in seen and seen[-1] == []
            assert ["critical"] not in seen

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_snapshot_survives_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = RegistryProcess(tmp_path, "--data-dir", str(data))
    try:
        first.put("kept", "k1", ttl=60000, tags=["a"])
        first.put("kept", "k2", ttl=60000)
        first.delete("kept", "k2")
        index = first.get("/v1/services").json()["index"]

        def snapshot_has_it() -> bool:
            path = data / "registry.json"
            return path.exists() and json.loads(path.read_text())["index"] == index

        wait_until(snapshot_has_it, timeout=5)
        first.stop(signal.SIGKILL)
        second = RegistryProcess(tmp_path, "--data-dir", str(data))
        try:
            body = second.get("/v1/services").json()
            assert body["index"] == index
            (kept,) = body["services"]["kept"]
            assert (kept["id"], kept["tags"], kept["status"]) == ("k1", ["a"], "passing")
            second.put("kept", "k3")
            assert second.get("/v1/services").json()["index"] > index
        finally:
            second.stop()
    finally:
        first.stop(signal.SIGKILL)


def test_sigterm_with_open_watch_exits_cleanly_and_default_grace(tmp_path: Path) -> None:
    proc = RegistryProcess(tmp_path, "--deregister-critical-after", "200")
    try:
        instance = proc.put("short", "s1", ttl=200).json()
        assert instance["deregisterCriticalAfter"] == 200
        wait_until(lambda: proc.instances("short") == [], timeout=3)
        with httpx.stream("GET", proc.url + "/v1/watch") as stream:
            next(stream.iter_lines())
            started = time.monotonic()
            assert proc.stop(signal.SIGTERM) == 0
            assert time.monotonic() - started < 5
    finally:
        proc.stop(signal.SIGKILL)


def test_embedded_registry_in_the_callers_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        embedded = EmbeddedRegistry("127.0.0.1", 0, data_dir=tmp_path)
        await embedded.start()
        try:
            assert embedded.port != 0
            token = (tmp_path / "operator.token").read_text().strip()
            async with RegistryClient(embedded.url, token=token) as client:
                await client.register("emb", "e1", "127.0.0.1", 1)
                index, instances = await client.service("emb")
                assert [i["id"] for i in instances] == ["e1"] and index > 1
        finally:
            await embedded.stop()
        assert json.loads((tmp_path / "registry.json").read_text())["instances"][0]["id"] == "e1"
        with pytest.raises(httpx.ConnectError):
            httpx.get(embedded.url + "/v1/health")

    asyncio.run(asyncio.wait_for(scenario(), 10))
