"""The consumer store under real processes: durability, Redis sharing, cache invalidation.

* SQLite: what the Admin API acknowledged survives SIGKILL of every
  gateway process; the data folder follows system.config.yml / env.
* Redis: two gateways on one Redis (a namespace per test, deleted after)
  see the same consumers. Skipped when nothing listens on 127.0.0.1:6379.
* Revocation: a credential deactivated through gateway A stops verifying
  within one second in another process that had it cached.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from meshgate.config.loader import load_config
from meshgate.store import MISS, open_store
from meshgate.store.cache import VerifyCache
from tests.support.gateway import Gateway, proxy_config, wait_until


def config() -> dict[str, Any]:
    return proxy_config("http://127.0.0.1:9")


def redis_up() -> bool:
    try:
        import redis
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping())
    except Exception:
        return False


@pytest.fixture
def redis_system() -> Iterator[dict[str, Any]]:
    """system.config.yml for a Redis store with a namespace of its own."""
    if not redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    import redis
    namespace = f"mgtest-{uuid.uuid4().hex[:10]}"
    yield {"db": {"redis": {"host": "127.0.0.1", "port": 6379, "namespace": namespace}}}
    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)


def seed(admin_url: str) -> dict[str, Any]:
    """A user, an app, a scope and one credential of each type, through the Admin API."""
    with httpx.Client(base_url=admin_url, timeout=30) as admin:
        assert admin.post("/scopes", json={"scopes": ["read"]}).status_code == 201
        user = admin.post("/users", json={"username": "ada", "firstname": "Ada",
                                          "lastname": "Lovelace"}).json()
        app = admin.post("/apps", json={"name": "engine", "userId": "ada"}).json()

        def cred(consumer: str, type_: str, **details: Any) -> dict[str, Any]:
            response = admin.post("/credentials", json={"consumerId": consumer, "type": type_,
                                                        "credential": details})
            assert response.status_code == 200, response.text
            return dict(response.json())

        return {"user": user, "app": app,
                "key": cred("ada", "key-auth", scopes=["read"]),
                "basic": cred("ada", "basic-auth", password="pa55word"),
                "oauth": cred(app["id"], "oauth2"),
                "jwt": cred(app["id"], "jwt")}


def kill_all(gw: Gateway) -> None:
    for pid in gw.pids():
        os.kill(pid, signal.SIGKILL)
    assert gw.process is not None
    gw.process.wait(10)


def store_check(directory: Path, seeded: dict[str, Any]) -> None:
    """Every seeded secret verifies through a store opened from the config folder."""
    async def check() -> None:
        store = open_store(load_config(directory))
        try:
            key, jwt = seeded["key"], seeded["jwt"]
            found = await store.verify("key-auth", key["keyId"], key["keySecret"])
            assert found is not None and found.consumer is not None
            assert found.consumer.name == "ada" and found.scopes == ("read",)
            assert await store.verify("key-auth", key["keyId"], "wrong") is None
            assert await store.verify("basic-auth", "ada", "pa55word") is not None
            assert await store.verify("basic-auth", "ada", "wrong") is None
            assert await store.verify("oauth2", seeded["app"]["id"],
                                      seeded["oauth"]["secret"]) is not None
            assert await store.verify("jwt", jwt["keyId"], jwt["keySecret"]) is not None
            looked = await store.lookup("jwt", jwt["keyId"])
            assert looked is not None and looked.secret == jwt["keySecret"]
        finally:
            await store.close()
    asyncio.run(check())


# -- SQLite -----------------------------------------------------------------------------------

def test_sqlite_store_survives_sigkill(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(config(), workers=2)
    seeded = seed(gw.admin_url)
    kill_all(gw)
    gw.start()
    with httpx.Client(base_url=gw.admin_url, timeout=30) as admin:
        assert admin.get("/users/ada").json() == seeded["user"]
        assert admin.get("/apps/engine").json() == seeded["app"]
        assert admin.get("/scopes").json() == {"scopes": ["read"]}
        kinds = {c["type"] for c in admin.get("/credentials").json()["credentials"]}
        assert kinds == {"key-auth", "basic-auth", "oauth2", "jwt"}
    store_check(gw.directory, seeded)


def test_secrets_are_not_stored_in_clear(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(config())
    seeded = seed(gw.admin_url)
    gw.stop()
    data = b"".join(p.read_bytes() for p in (gw.directory / "data").iterdir())
    for secret in (seeded["key"]["keySecret"], "pa55word", seeded["oauth"]["secret"],
                   seeded["jwt"]["keySecret"]):
        assert secret.encode() not in data
    assert b"scrypt$" in data and b"aesgcm$" in data


def test_data_folder_from_env_then_system_config(tmp_path: Path,
                                                 gateway_factory: Callable[..., Gateway]) -> None:
    env_dir = tmp_path / "from-env"
    gw = gateway_factory(config(), env={"MESHGATE_DATA_DIR": str(env_dir)})
    seed(gw.admin_url)
    assert (env_dir / "meshgate.db").is_file()
    assert not (gw.directory / "data").exists()

    gw2 = gateway_factory(config(), env={"MESHGATE_DATA_DIR": str(env_dir)},
                          system={"db": {"sqlite": {"path": "state/consumers.db"}}})
    with httpx.Client(base_url=gw2.admin_url, timeout=30) as admin:
        assert admin.get("/users/ada").status_code == 404       # a file of its own
        assert admin.post("/users", json={"username": "x", "firstname": "a",
                                          "lastname": "b"}).status_code == 200
    assert (gw2.directory / "state" / "consumers.db").is_file()


# -- Redis ----------------------------------------------------------------------------------------

def test_two_gateways_on_one_redis_share_consumers(
        gateway_factory: Callable[..., Gateway], redis_system: dict[str, Any]) -> None:
    a = gateway_factory(config(), system=redis_system)
    b = gateway_factory(config(), system=redis_system)
    seeded = seed(a.admin_url)
    with httpx.Client(base_url=b.admin_url, timeout=30) as admin:
        assert admin.get("/users/ada").json() == seeded["user"]
        assert admin.get(f"/credentials/key-auth/{seeded['key']['keyId']}").status_code == 200
        assert admin.put("/users/ada/status", json={"status": False}).json() == {
            "status": "Deactivated"}
        again = admin.post("/users", json={"username": "ada", "firstname": "A", "lastname": "L"})
        assert again.status_code == 409
    with httpx.Client(base_url=a.admin_url, timeout=30) as admin:
        assert admin.get("/users/ada").json()["isActive"] is False
        assert admin.get("/apps/engine").json()["isActive"] is False
    assert not (a.directory / "data").exists()
    a.stop()
    b.stop()
    gw = gateway_factory(config(), system=redis_system)
    with httpx.Client(base_url=gw.admin_url, timeout=30) as admin:
        assert admin.put("/users/ada/status", json={"status": True}).status_code == 200
        assert admin.put("/apps/engine/status", json={"status": True}).status_code == 200
    store_check(gw.directory, seeded)


# -- cache invalidation across processes -----------------------------------------------------------

READER = textwrap.dedent("""\
    import asyncio, sys, time
    from meshgate.config.loader import load_config
    from meshgate.store import MISS, open_store

    async def main(directory, key_id, secret):
        store = open_store(load_config(directory))
        hits, deadline, announced = 0, time.monotonic() + 30, False
        while time.monotonic() < deadline:
            answer = store.cached_verify("key-auth", key_id, secret)
            if answer is MISS:
                answer = await store.verify("key-auth", key_id, secret)
            else:
                hits += 1
                if not announced and answer is not None:
                    print("ready", flush=True)
                    announced = True
            if answer is None and announced:
                print(f"revoked {time.monotonic()} {hits}", flush=True)
                break
            await asyncio.sleep(0.005)
        await store.close()

    asyncio.run(main(*sys.argv[1:4]))
    """)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_deactivation_reaches_another_process_within_a_second(
        backend: str, gateway_factory: Callable[..., Gateway], request: Any) -> None:
    system = request.getfixturevalue("redis_system") if backend == "redis" else None
    gw = gateway_factory(config(), system=system)
    seeded = seed(gw.admin_url)
    key = seeded["key"]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(gw.directory), key["keyId"],
                               key["keySecret"]], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"    # it answers from its cache
        time.sleep(0.5)
        with httpx.Client(base_url=gw.admin_url, timeout=30) as admin:
            response = admin.put(f"/credentials/key-auth/{key['keyId']}/status",
                                 json={"status": False})
            acknowledged = time.monotonic()
        assert response.json() == {"status": "Deactivated"}
        line = wait_until(reader.stdout.readline, timeout=5)
        word, seen_at, hits = line.split()
        assert word == "revoked" and int(hits) > 10
        assert float(seen_at) - acknowledged < 1.0, f"took {float(seen_at) - acknowledged:.3f}s"
    finally:
        reader.kill()
        reader.wait()


def test_cached_answers_are_synchronous_and_flushed_by_writes(tmp_path: Path) -> None:
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config()))

    async def run() -> None:
        store = open_store(load_config(tmp_path))
        try:
            user = await store.create_user({"username": "u", "firstname": "a", "lastname": "b"})
            key = await store.create_credential(user["id"], "key-auth", None)
            await store.refresh()
            assert store.cached_verify("key-auth", key["keyId"], key["keySecret"]) is MISS
            first = await store.verify("key-auth", key["keyId"], key["keySecret"])
            assert first is not None
            assert store.cached_verify("key-auth", key["keyId"], key["keySecret"]) == first
            assert await store.verify("key-auth", key["keyId"], "nope") is None
            assert store.cached_verify("key-auth", key["keyId"], "nope") is None
            await store.set_credential_status("key-auth", key["keyId"], False)
            assert store.cached_verify("key-auth", key["keyId"], key["keySecret"]) is MISS
            assert await store.verify("key-auth", key["keyId"], key["keySecret"]) is None
        finally:
            await store.close()
    asyncio.run(run())


def test_verify_cache_is_bounded_oldest_first() -> None:
    cache = VerifyCache(size=2, proofs=2)
    cache.fresh()
    for name in ("a", "b", "c"):
        cache.put(cache.generation, name, name)
    assert cache.get("a") is MISS and cache.get("b") == "b" and cache.get("c") == "c"
    cache.put(cache.generation, "b", "b2")            # re-put: newest again
    cache.put(cache.generation, "d", "d")
    assert cache.get("c") is MISS and cache.get("b") == "b2"
    for stored in ("h1", "h2", "h3"):
        cache.prove(stored, b"x")
    assert not cache.proven("h1", b"x") and cache.proven("h3", b"x")
    generation = cache.generation
    assert cache.live(generation)
    cache.flush()
    assert not cache.live(generation) and cache.get("d") is MISS


def test_shared_secret_is_made_once_per_store(tmp_path: Path) -> None:
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config()))

    async def run() -> None:
        first, second = open_store(load_config(tmp_path)), open_store(load_config(tmp_path))
        try:
            made = await first.shared_secret("oauth2-session")
            assert len(made) == 32
            assert await second.shared_secret("oauth2-session") == made
            assert await first.shared_secret("other") != made
        finally:
            await first.close()
            await second.close()
    asyncio.run(run())
