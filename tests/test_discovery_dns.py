"""The dns discovery provider against a real dnsmasq on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.discovery import DISCOVERY, ProviderContext
from meshgate.discovery.dns import DnsParams, DnsProvider, split_host_port
from tests.support import dnsmasq
from tests.support.aio import eventually, run

pytestmark = pytest.mark.skipif(not dnsmasq.available(), reason="dnsmasq is not installed")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dnsmasq.Dnsmasq]:
    d = dnsmasq.Dnsmasq(tmp_path)
    yield d
    d.stop()


def provider(server: dnsmasq.Dnsmasq, **params: Any) -> DnsProvider:
    params.setdefault("nameservers", [server.server])
    params.setdefault("minRefresh", 100)
    params.setdefault("timeout", 300)
    spec = DISCOVERY.get("dns")
    assert spec is not None
    built = spec.build(spec.params.model_validate(params), ProviderContext(service="users"))
    assert isinstance(built, DnsProvider)
    return built


def hosts(p: DnsProvider) -> list[tuple[str, int]] | None:
    return None if p.last is None else [(s.host, s.port) for s in p.last]


def test_params_defaults_and_validation() -> None:
    params = DnsParams.model_validate({"name": "users.svc"})
    assert (params.recordType, params.port, params.scheme) == ("A", 80, "http")
    assert (params.minRefresh, params.maxRefresh, params.nameservers) == (1000, 300000, [])
    assert split_host_port("[::1]:5353") == ("::1", 5353)
    assert split_host_port("10.0.0.2") == ("10.0.0.2", 53)
    with pytest.raises(ValueError):
        DnsParams.model_validate({"name": "x", "nameservers": ["1.2.3.4:0"]})
    with pytest.raises(ValueError):
        DnsParams.model_validate({"name": "x", "recordType": "MX"})


def test_a_records_follow_the_zone_and_ttl(server: dnsmasq.Dnsmasq) -> None:
    server.set_hosts({"users.test": ["127.0.0.2", "127.0.0.3"]})
    server.start()

    async def scenario() -> None:
        p = provider(server, name="users.test", port=8080)
        await p.start()
        try:
            await eventually(lambda: hosts(p) == [("127.0.0.2", 8080), ("127.0.0.3", 8080)])
            assert p.last is not None and p.last[0].id == "127.0.0.2:8080"
            changes = p.changes
            # TTL is 1 s: the change is seen on the next resolution, without a restart.
            server.set_hosts({"users.test": ["127.0.0.3", "127.0.0.4"]})
            await eventually(lambda: hosts(p) == [("127.0.0.3", 8080), ("127.0.0.4", 8080)],
                             timeout=4)
            assert p.changes == changes + 1 and not p.stale
            # The name is gone: NXDOMAIN is the zone saying "no instances".
            server.set_hosts({"other.test": ["127.0.0.9"]})
            await eventually(lambda: hosts(p) == [], timeout=4)
            assert not p.stale and p.error is None
        finally:
            await p.stop()

    run(scenario())


def test_srv_uses_the_lowest_priority_group(server: dnsmasq.Dnsmasq) -> None:
    name = "_http._tcp.users.test"
    server.set_srv([(name, "a.test", 8001, 10, 5), (name, "b.test", 8002, 10, 0),
                    (name, "c.test", 8003, 20, 7)],
                   {"a.test": ["127.0.0.5"], "b.test": ["127.0.0.6"], "c.test": ["127.0.0.7"]})
    server.start()

    async def scenario() -> None:
        p = provider(server, name=name, recordType="SRV", scheme="https")
        await p.start()
        try:
            await eventually(lambda: p.last)
            assert p.last is not None
            got = {(s.host, s.port, s.weight, s.scheme, s.id) for s in p.last}
            assert got == {("127.0.0.5", 8001, 5, "https", "a.test:8001"),
                           ("127.0.0.6", 8002, 1, "https", "b.test:8002")}   # weight 0 -> 1
            # The preferred group disappears: the fallback priority takes over.
            server.set_srv([(name, "c.test", 8003, 20, 7)])
            await eventually(lambda: hosts(p) == [("127.0.0.7", 8003)], timeout=4)
            assert p.last[0].weight == 7
        finally:
            await p.stop()

    run(scenario())


def test_server_down_keeps_the_set_and_marks_stale(server: dnsmasq.Dnsmasq) -> None:
    server.set_hosts({"users.test": ["127.0.0.2"]})
    server.start()

    async def scenario() -> None:
        p = provider(server, name="users.test", maxRefresh=200)
        await p.start()
        try:
            await eventually(lambda: hosts(p) == [("127.0.0.2", 80)])
            server.stop()
            await eventually(lambda: p.stale, timeout=4)
            assert hosts(p) == [("127.0.0.2", 80)] and p.error
            errors = p.errors
            await eventually(lambda: p.errors > errors)       # it keeps retrying
            assert hosts(p) == [("127.0.0.2", 80)]
            server.set_hosts({"users.test": ["127.0.0.8"]})
            server.start()
            await eventually(lambda: hosts(p) == [("127.0.0.8", 80)], timeout=5)
            assert not p.stale and p.error is None
        finally:
            await p.stop()

    run(scenario())


def test_refused_is_an_error_not_an_empty_set(server: dnsmasq.Dnsmasq) -> None:
    server.start()

    async def scenario() -> None:
        # Outside the local domain, with no upstream: dnsmasq answers REFUSED.
        p = provider(server, name="users.example")
        await p.start()
        try:
            await eventually(lambda: p.stale)
            assert p.last is None and "REFUSED" in (p.error or "")
        finally:
            await p.stop()

    run(scenario())
