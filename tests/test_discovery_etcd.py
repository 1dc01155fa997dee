"""The etcd discovery provider against a real etcd on loopback."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshgate.discovery import DISCOVERY, ProviderContext
from meshgate.discovery.etcd import EtcdParams, EtcdProvider, parse_instance
from meshgate.etcdv3 import EtcdClient
from tests.support.aio import eventually, run
from tests.support.etcd import EtcdServer, etcd_factory, etcd_server  # noqa: F401

PREFIX = "/services/users/"


def instance(port: int, **extra: Any) -> bytes:
    return json.dumps({"address": "127.0.0.1", "port": port, **extra}).encode()


def provider(server: EtcdServer) -> EtcdProvider:
    spec = DISCOVERY.get("etcd")
    assert spec is not None
    params = spec.params.model_validate({"endpoints": [server.url], "prefix": PREFIX,
                                         "timeout": 1000})
    built = spec.build(params, ProviderContext(service="users"))
    assert isinstance(built, EtcdProvider)
    return built


def ports(p: EtcdProvider) -> list[int] | None:
    return None if p.last is None else sorted(s.port for s in p.last)


def test_parse_instance() -> None:
    spec = parse_instance(PREFIX + "u1", json.dumps({
        "host": "10.0.0.5", "port": "8443", "scheme": "https", "weight": 0, "zone": "z",
        "version": "v2", "healthy": False, "metadata": {"a": 1}}).encode(), PREFIX)
    assert (spec.host, spec.port, spec.scheme, spec.weight, spec.zone, spec.version) == (
        "10.0.0.5", 8443, "https", 1, "z", "v2")
    assert spec.id == "u1" and spec.healthy is False and spec.metadata == (("a", "1"),)
    for bad in (b"nope", b"[1]", b'{"port": 1}', b'{"address": "h", "port": 0}',
                b'{"address": "h", "port": 1, "scheme": "ftp"}'):
        with pytest.raises(ValueError):
            parse_instance(PREFIX + "x", bad, PREFIX)
    with pytest.raises(ValueError):
        EtcdParams.model_validate({"prefix": PREFIX, "endpoints": ["127.0.0.1:2379"]})
    assert EtcdParams.model_validate({"prefix": PREFIX}).endpoints == ["http://127.0.0.1:2379"]


def test_set_follows_puts_and_deletes(etcd_server: EtcdServer) -> None:  # noqa: F811
    async def scenario() -> None:
        client = EtcdClient([etcd_server.url])
        await client.put(PREFIX + "a", instance(9001, zone="z1", id="users-a"))
        await client.put(PREFIX + "bad", b"not json")
        await client.put("/services/users2/x", instance(9999))     # outside the prefix
        p = provider(etcd_server)
        await p.start()
        try:
            await eventually(lambda: ports(p) == [9001])
            assert p.last is not None
            assert (p.last[0].zone, p.last[0].id, p.last[0].healthy) == ("z1", "users-a", True)
            await client.put(PREFIX + "b", instance(9002, weight=3))
            await eventually(lambda: ports(p) == [9001, 9002], timeout=1)
            await client.put(PREFIX + "b", instance(9002, weight=5, healthy=False))
            await eventually(lambda: p.last is not None and p.last[1].weight == 5, timeout=1)
            assert p.last[1].healthy is False and p.last[1].id == "b"
            await client.delete(PREFIX + "a")
            await eventually(lambda: ports(p) == [9002], timeout=1)
            await client.put(PREFIX + "a", b"{}")        # turned invalid: it leaves the set
            await client.delete(PREFIX + "b")
            await eventually(lambda: ports(p) == [], timeout=1)
            assert not p.stale and p.errors == 0
        finally:
            await p.stop()
            await client.close()

    run(scenario())


def test_etcd_down_keeps_the_set_then_resyncs(etcd_server: EtcdServer) -> None:  # noqa: F811
    async def scenario() -> None:
        client = EtcdClient([etcd_server.url])
        await client.put(PREFIX + "a", instance(9001))
        await client.put(PREFIX + "b", instance(9002))
        p = provider(etcd_server)
        await p.start()
        try:
            await eventually(lambda: ports(p) == [9001, 9002])
            etcd_server.kill()
            await eventually(lambda: p.stale)
            assert ports(p) == [9001, 9002] and p.error
            errors = p.errors
            await eventually(lambda: p.errors > errors)        # it keeps retrying
            assert ports(p) == [9001, 9002]
            etcd_server.start()
            # Changes made before the provider reconnects are found by the re-list.
            await client.delete(PREFIX + "a")
            await client.put(PREFIX + "c", instance(9003))
            await eventually(lambda: ports(p) == [9002, 9003] and not p.stale, timeout=8)
            assert p.error is None
            await client.put(PREFIX + "d", instance(9004))     # and the new watch works
            await eventually(lambda: ports(p) == [9002, 9003, 9004], timeout=1)
        finally:
            await p.stop()
            await client.close()

    run(scenario())
