"""Redis deployments other than one plain server: TLS, and a Sentinel-managed master.

Each test starts its own redis-server (and sentinel) on free loopback ports
and a gateway whose system.config.yml points there; consumers (the store)
and Redis-shared rate limits (the policy's own client) must both work
through it, and their keys must land on that server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Backend
from tests.support import redis_server
from tests.support.gateway import Gateway
from tests.test_auth_key import Admin, auth_config, key_of

pytestmark = pytest.mark.skipif(not redis_server.available(), reason="redis-server missing")


def _config(upstream: str) -> dict[str, Any]:
    return auth_config(upstream, [{"key-auth": None},
                                  {"rate-limit": [{"action": {"max": 2, "windowMs": 60000,
                                                              "rateLimitBy": "${consumer.id}"}}]}])


def _exercise(gw: Gateway, server: redis_server.RedisServer) -> None:
    """A consumer made through the Admin API authenticates; its third call is limited."""
    admin = Admin(gw)
    cred = admin.credential(admin.user()["id"], "key-auth")
    headers = {"authorization": f"apiKey {key_of(cred)}"}
    codes = [httpx.get(gw.url + "/echo", headers=headers, timeout=10).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    keys = {k.decode() for k in server.client().keys("deploy:*")}
    assert any(":mg:d:cred:" in k for k in keys), keys       # the store's documents
    assert any(":rate-limit:" in k for k in keys), keys      # the shared counter


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[redis_server.RedisServer]:
    server = redis_server.RedisServer(tmp_path / "redis-tls", tls=True)
    yield server
    server.stop()


def test_store_and_limits_over_tls(tls_redis: redis_server.RedisServer, backend: Backend,
                                   gateway_factory: Any) -> None:
    system = {"db": {"redis": {"host": "127.0.0.1", "port": tls_redis.port,
                               "namespace": "deploy",
                               "tls": {"caFile": str(tls_redis.ca_file)}}}}
    gw = gateway_factory(_config(backend.url), system=system)
    _exercise(gw, tls_redis)


def test_store_and_limits_through_sentinel(tmp_path: Path, backend: Backend,
                                           gateway_factory: Any) -> None:
    master = redis_server.RedisServer(tmp_path / "master")
    sentinel = redis_server.Sentinel(tmp_path / "sentinel", master)
    try:
        system = {"db": {"redis": {"sentinels": [{"host": "127.0.0.1", "port": sentinel.port}],
                                   "name": "mymaster", "namespace": "deploy"}}}
        gw = gateway_factory(_config(backend.url), system=system)
        _exercise(gw, master)
    finally:
        sentinel.stop()
        master.stop()
