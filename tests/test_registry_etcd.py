"""The etcd v3 client and the etcd-backed registry, against a real etcd.

Skipped when ``etcd`` is not on PATH. etcd lease TTLs are whole seconds with
a floor of about 2 s, so the expiry test waits a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.etcdv3 import EtcdClient, EtcdError, LeaseNotFound, prefix_range_end
from tests.support import etcd as etcd_support
from tests.support.etcd import EtcdServer
from tests.support.gateway import free_port, wait_until
from tests.support.registry import Events, RegistryProcess

# The fixtures (they skip the test when etcd is not installed).
etcd_server = etcd_support.etcd_server
etcd_factory = etcd_support.etcd_factory


def run(coro: Any, timeout: float = 20) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"") == b"\0"


def test_kv_leases_and_failover(etcd_server: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        client = EtcdClient([dead, etcd_server.url], timeout=2)
        try:
            revision, items = await client.get_prefix("/t/")
            assert items == [] and revision >= 1
            lease = await client.grant(30)
            put_rev = await client.put("/t/b", b"\x00two", lease=lease)
            assert put_rev > revision
            await client.put("/t/a", b"one")
            await client.put("/u/c", b"elsewhere")
            revision, items = await client.get_prefix("/t/")
            assert items == [("/t/a", b"one"), ("/t/b", b"\x00two")]
            assert 0 < await client.keepalive(lease) <= 30
            await client.revoke(lease)          # deletes /t/b with it
            await client.revoke(lease)          # already gone: not an error
            with pytest.raises(LeaseNotFound):
                await client.keepalive(lease)
            await client.delete("/t/a")
            assert (await client.get_prefix("/t/"))[1] == []
        finally:
            await client.close()
        with pytest.raises(EtcdError, match="no endpoint"):
            lonely = EtcdClient([dead], timeout=1)
            try:
                await lonely.get_prefix("/")
            finally:
                await lonely.close()

    run(scenario())


def test_watch_batches_and_broken_stream(etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        client = EtcdClient([etcd_server.url])
        try:
            revision, _ = await client.get_prefix("/w/")
            await client.put("/w/1", b"a")          # before the watch: replayed
            batches: list[list[tuple[str, str, bytes]]] = []
            failure: list[Exception] = []

            async def consume() -> None:
                try:
                    async for batch in client.watch_prefix("/w/", revision + 1):
                        batches.append(batch)
                except EtcdError as exc:
                    failure.append(exc)

            task = asyncio.create_task(consume())
            await client.put("/other", b"x")
            await client.delete("/w/1")
            def events() -> list[tuple[str, str, bytes]]:
                return [event for batch in batches for event in batch]

            while len(events()) < 2 and not failure:
                await asyncio.sleep(0.01)
            assert events() == [("put", "/w/1", b"a"), ("delete", "/w/1", b"")]
            await asyncio.to_thread(etcd_server.kill)
            await asyncio.wait_for(task, 5)
            assert failure, "the broken stream must raise EtcdError"
        finally:
            await client.close()

    run(scenario())


def _registry(tmp: Path, etcd: EtcdServer, *extra: str) -> RegistryProcess:
    return RegistryProcess(tmp, "--store", "etcd", "--etcd", etcd.url,
                           "--etcd-prefix", "/test/registry", *extra)


def test_two_replicas_share_state(tmp_path: Path, etcd_server: EtcdServer) -> None:
    one = _registry(tmp_path, etcd_server)
    two = _registry(tmp_path, etcd_server)
    try:
        async def scenario() -> None:
            async with httpx.AsyncClient(timeout=10, headers=one.headers) as client, \
                    client.stream("GET", f"{two.url}/v1/watch/orders") as stream:
                events = Events(stream)
                assert (await events.next())["instances"] == []
                started = time.monotonic()
                put = await client.put(f"{one.url}/v1/services/orders/instances/o1",
                                       json={"address": "10.0.0.5", "port": 81, "zone": "z"})
                assert put.status_code == 200, put.text
                seen = await events.next()
                assert time.monotonic() - started < 1
                assert [(i["id"], i["zone"], i["status"]) for i in seen["instances"]] == [
                    ("o1", "z", "passing")]
                assert seen["index"] == one.get("/v1/services/orders").json()["index"]

        run(scenario())
        # A heartbeat through the other replica renews the same leases.
        beat = two.heartbeat("orders", "o1")
        assert beat.status_code == 200 and beat.json()["status"] == "passing"
        assert one.stop(signal.SIGKILL) is not None
        # Replica two carries on alone.
        assert two.put("orders", "o2").status_code == 200
        assert [i["id"] for i in two.instances("orders")] == ["o1", "o2"]
        assert two.delete("orders", "o1").status_code == 200
        assert [i["id"] for i in two.instances("orders")] == ["o2"]
        # A new replica starts from what is in etcd.
        three = _registry(tmp_path, etcd_server)
        try:
            body = three.get("/v1/services").json()
            assert [i["id"] for i in body["services"]["orders"]] == ["o2"]
            assert body["index"] >= two.get("/v1/services").json()["index"]
        finally:
            three.stop()
    finally:
        one.stop(signal.SIGKILL)
        two.stop()


def test_lease_expiry_removes_unheartbeated_instance(tmp_path: Path,
                                                     etcd_server: EtcdServer) -> None:
    proc = _registry(tmp_path, etcd_server)
    try:
        proc.put("expiring", "e1", ttl=1000, deregisterCriticalAfter=1000)
        proc.put("expiring", "e2", ttl=60000)
        started = time.monotonic()
        wait_until(lambda: [i["id"] for i in proc.instances("expiring")] == ["e2"],
                   timeout=8, interval=0.1)
        assert time.monotonic() - started >= 0.9
        assert proc.heartbeat("expiring", "e1").status_code == 404
    finally:
        proc.stop()


def test_critical_and_revival_through_etcd(tmp_path: Path, etcd_server: EtcdServer) -> None:
    """The alive lease lapses first (critical); a heartbeat makes a new one (passing)."""
    proc = _registry(tmp_path, etcd_server)
    try:
        proc.put("flaky", "f1", ttl=1000, deregisterCriticalAfter=30000)

        def status() -> list[str]:
            return [i["status"] for i in proc.instances("flaky")]

        wait_until(lambda: status() == ["critical"], timeout=8, interval=0.1)
        beat = proc.heartbeat("flaky", "f1")
        assert beat.status_code == 200 and beat.json()["status"] == "passing"
        assert status() == ["passing"]
    finally:
        proc.stop()


@pytest.mark.slow
def test_registry_resyncs_after_etcd_restart(
        tmp_path: Path, etcd_factory: Callable[[], EtcdServer]) -> None:
    etcd = etcd_factory()
    proc = _registry(tmp_path, etcd)
    try:
        proc.put("survivor", "s1", ttl=60000)
        etcd.stop()
        failed = proc.put("survivor", "s2", ttl=60000)
        assert failed.status_code == 503 and "unavailable" in failed.text
        assert [i["id"] for i in proc.instances("survivor")] == ["s1"]  # served from the mirror
        etcd.start()
        client = EtcdClient([etcd.url])
        record = {"id": "s3", "service": "survivor", "address": "h", "port": 1, "ttl": 60000,
                  "deregisterCriticalAfter": 1000, "registeredAt": 1, "leases": [0, 0]}

        async def write_behind_its_back() -> None:
            try:
                await client.put("/test/registry/alive/survivor/s3", b"1")
                await client.put("/test/registry/instances/survivor/s3",
                                 json.dumps(record).encode())
            finally:
                await client.close()

        run(write_behind_its_back())
        wait_until(lambda: [i["id"] for i in proc.instances("survivor")] == ["s1", "s3"],
                   timeout=10, interval=0.1)
    finally:
        proc.stop()


def test_tokens_live_in_etcd_hashed_and_shared_by_replicas(tmp_path: Path,
                                                           etcd_server: EtcdServer) -> None:
    import subprocess

    from tests.support.gateway import MESHGATE
    from tests.support.registry import bearer

    one = _registry(tmp_path, etcd_server)
    two = _registry(tmp_path, etcd_server)
    try:
        made = subprocess.run([*MESHGATE, "registry", "token", "create", "--service", "users",
                               "--etcd", etcd_server.url, "--etcd-prefix", "/test/registry"],
                              capture_output=True, text=True, timeout=30, check=False)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        token_id, secret = token.split(".")[1:]
        body = {"address": "10.0.0.9", "port": 80}

        def put(proc: RegistryProcess, service: str, ident: str) -> int:
            return httpx.put(f"{proc.url}/v1/services/{service}/instances/{ident}",
                             json=body, headers=bearer(token), timeout=5).status_code

        wait_until(lambda: put(one, "users", "t1") == 200, timeout=5)
        wait_until(lambda: put(two, "users", "t2") == 200, timeout=5)
        assert put(two, "invoices", "t3") == 403

        async def stored() -> list[tuple[str, bytes]]:
            client = EtcdClient([etcd_server.url])
            try:
                return (await client.get_prefix("/test/registry/tokens/"))[1]
            finally:
                await client.close()

        [(name, value)] = run(stored())
        assert name.endswith(token_id) and secret.encode() not in value
        revoked = httpx.delete(f"{one.url}/v1/tokens/{token_id}", headers=one.headers)
        assert revoked.status_code == 200
        wait_until(lambda: put(two, "users", "t4") == 401, timeout=5)
    finally:
        one.stop()
        two.stop()
