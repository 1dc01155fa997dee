"""``Store.consume_token``: verify and delete a single-use token in one atomic step.

On both engines -- SQLite (one file, several store instances, each with its
own writer thread and connection) and the real Redis on 127.0.0.1:6379 (a
namespace per test, deleted after; skipped when absent) -- many concurrent
consumers of the same authorization code get it exactly once, and a
presentation that does not match (wrong secret, wrong kind) leaves it alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from meshgate.store.service import ConsumerStore
from meshgate.store.sqlite import SqliteBackend
from meshgate.store.tokens import TOKENS
from tests.support.aio import run

CODE = "authorization_code"
StoreFactory = Callable[[], ConsumerStore]


def redis_up() -> bool:
    try:
        import redis
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping())
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes store instances sharing one engine: one SQLite file, or one Redis namespace."""
    if request.param == "sqlite":
        path = tmp_path / "data" / "meshgate.db"
        yield lambda: ConsumerStore(SqliteBackend(path))
        return
    if not redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    import redis
    import redis.asyncio as aioredis

    from meshgate.store.redis import RedisBackend

    namespace = f"mgtest-consume-{uuid.uuid4().hex[:10]}"
    yield lambda: ConsumerStore(RedisBackend(
        aioredis.Redis(host="127.0.0.1", port=6379, decode_responses=True), namespace))
    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@asynccontextmanager
async def stores(make: StoreFactory, n: int) -> AsyncIterator[list[ConsumerStore]]:
    opened = [make() for _ in range(n)]
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


async def client_app(store: ConsumerStore) -> str:
    """An active app (the consumer codes are issued to); its id."""
    user = await store.create_user({"username": f"u-{uuid.uuid4().hex[:8]}",
                                    "firstname": "Ada", "lastname": "L"})
    app = await store.create_app({"name": f"a-{uuid.uuid4().hex[:8]}"}, user["id"])
    return str(app["id"])


async def race(calls: list[Awaitable[Any]]) -> list[Any]:
    """Run the calls at the same moment; their results."""
    start = asyncio.Event()

    async def one(call: Awaitable[Any]) -> Any:
        await start.wait()
        return await call

    tasks = [asyncio.ensure_future(one(c)) for c in calls]
    await asyncio.sleep(0)
    start.set()
    return await asyncio.gather(*tasks)


def test_concurrent_consumers_get_a_code_once(make_store: StoreFactory) -> None:
    async def main() -> None:
        async with stores(make_store, 2) as (a, b):
            app = await client_app(a)
            for _ in range(15):
                _, code = await a.issue_token(CODE, app, ttl_ms=60000, scopes=["read"],
                                              props={"authenticatedUserId": "u1"})
                # 8 consumers over two store instances (two connections / processes' worth)
                results = await race([s.consume_token(code, CODE) for s in (a, b) * 4])
                won = [r for r in results if r is not None]
                assert len(won) == 1, results
                token = won[0]
                assert token.consumer_id == app and token.scopes == ("read",)
                assert token.props["authenticatedUserId"] == "u1"
                assert token.consumer is not None and token.consumer.id == app
                # gone for good, index entries included
                assert await a.get_token(code) is None
                assert await b.consume_token(code, CODE) is None
                assert code.partition("|")[0] not in {t.id for t in await b.tokens_of(app)}

    run(main())


def test_a_presentation_that_does_not_match_leaves_the_token(make_store: StoreFactory) -> None:
    async def main() -> None:
        async with stores(make_store, 1) as (store,):
            app = await client_app(store)
            _, code = await store.issue_token(CODE, app, ttl_ms=60000)
            token_id = code.partition("|")[0]
            assert await store.consume_token(f"{token_id}|{'0' * 32}", CODE) is None
            assert await store.consume_token(token_id, CODE) is None          # no secret
            assert await store.consume_token(code, "access_token") is None     # wrong kind
            assert await store.consume_token("nothing|here", CODE) is None
            assert await store.get_token(code) is not None
            assert await store.consume_token(code, CODE) is not None
            _, expired = await store.issue_token(CODE, app, ttl_ms=-1)
            assert await store.consume_token(expired, CODE) is None

    run(main())


def test_consumed_access_token_stops_verifying_at_once(make_store: StoreFactory) -> None:
    """Other kinds may sit in the verification cache: consuming one flushes it."""
    async def main() -> None:
        async with stores(make_store, 1) as (store,):
            app = await client_app(store)
            _, access = await store.issue_token("access_token", app, ttl_ms=60000)
            assert await store.verify_token(access) is not None      # now cached
            assert await store.consume_token(access, "access_token") is not None
            assert await store.verify_token(access) is None

    run(main())


def test_sqlite_take_is_atomic_across_store_instances(tmp_path: Path) -> None:
    """The backend step itself, many takers on separate connections to one file."""
    async def main() -> None:
        path = tmp_path / "shared.db"
        backends = [SqliteBackend(path) for _ in range(4)]
        try:
            for n in range(20):
                await backends[0].apply([_put(f"k{n}")], bump=False)
                taken = await race([b.take(TOKENS, f"k{n}", lambda d: True)
                                    for b in backends * 2])
                assert sum(t is not None for t in taken) == 1, taken
                assert await backends[1].get(TOKENS, f"k{n}") is None
                assert await backends[2].keys_by(TOKENS, "consumer", "c") == []
        finally:
            for backend in backends:
                await backend.close()

    run(main())


def _put(key: str) -> Any:
    from meshgate.store.backend import Put
    return Put(TOKENS, key, {"id": key}, {"consumer": ["c"]})
