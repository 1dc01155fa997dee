"""The rate-limit policy: local counters, Redis-shared limits, headers, no EG delay."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from meshgate.policies._counters import (
    _LEASE_LUA,
    LEASE_FRACTION,
    LocalFixedWindow,
    LocalSlidingWindow,
    RedisLeases,
    sliding_retry,
)
from meshgate.protocol.hop import merge_extra as _merge_extra
from tests.conftest import Backend
from tests.support.gateway import Gateway, free_port, proxy_config, wait_until

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def limited(upstream: str, **action: Any) -> dict[str, Any]:
    return proxy_config(upstream, policies=[{"rate-limit": [{"action": action}]}])


def get(gw: Gateway, path: str = "/", **headers: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers=headers, timeout=10)


# -- local counters --------------------------------------------------------------------
def test_local_mode_admits_max_then_429_with_headers(backend: Backend,
                                                     gateway_factory: Any) -> None:
    gw = gateway_factory(limited(backend.url, max=3, windowMs=60000))
    before = time.time()
    for remaining in (2, 1, 0):
        r = get(gw)
        assert r.status_code == 200, r.text
        assert r.text == "ok backend\n"
        assert r.headers["ratelimit-limit"] == "3"
        assert r.headers["ratelimit-remaining"] == str(remaining)
        assert 59 <= int(r.headers["ratelimit-reset"]) <= 60
        assert r.headers["x-ratelimit-limit"] == "3"
        assert r.headers["x-ratelimit-remaining"] == str(remaining)
        assert before + 55 <= int(r.headers["x-ratelimit-reset"]) <= time.time() + 61
    r = get(gw)
    assert r.status_code == 429
    assert r.text == "Too many requests, please try again later."
    assert 55 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["ratelimit-remaining"] == "0"
    r = get(gw, accept="application/json")
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"message": "Too many requests, please try again later."}


def test_rate_limit_by_template_and_custom_answer(backend: Backend,
                                                  gateway_factory: Any) -> None:
    gw = gateway_factory(limited(backend.url, max=2, rateLimitBy="key-${req.headers.x-key}",
                                 statusCode=503, message="slow down", headers=False))
    assert [get(gw, **{"x-key": "a"}).status_code for _ in range(3)] == [200, 200, 503]
    assert [get(gw, **{"x-key": "b"}).status_code for _ in range(3)] == [200, 200, 503]
    r = get(gw, **{"x-key": "a"})
    assert r.text == "slow down"
    assert "retry-after" not in r.headers and "ratelimit-limit" not in r.headers


def test_no_delay_by_default(backend: Backend, gateway_factory: Any) -> None:
    # EG defaulted delayAfter 1 / delayMs 1000: 20 requests took 190 s (#767).
    gw = gateway_factory(limited(backend.url, max=100))
    started = time.monotonic()
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        statuses = [client.get("/").status_code for _ in range(20)]
    assert statuses == [200] * 20
    assert time.monotonic() - started < 2.0


def test_delay_only_when_configured(backend: Backend, gateway_factory: Any) -> None:
    gw = gateway_factory(limited(backend.url, max=10, delayAfter=1, delayMs=300))
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        t0 = time.monotonic()
        client.get("/")
        t1 = time.monotonic()
        client.get("/")                        # count 2: (2 - 1) * 300 ms
        t2 = time.monotonic()
    assert t1 - t0 < 0.25
    assert t2 - t1 >= 0.28


def test_max_zero_disables(backend: Backend, gateway_factory: Any) -> None:
    gw = gateway_factory(limited(backend.url, max=0))
    r = get(gw)
    assert r.status_code == 200 and "ratelimit-limit" not in r.headers


def test_sliding_window_admits_max_then_refuses(backend: Backend,
                                                gateway_factory: Any) -> None:
    gw = gateway_factory(limited(backend.url, max=4, windowMs=60000,
                                 algorithm="sliding-window"))
    assert [get(gw).status_code for _ in range(6)] == [200] * 4 + [429] * 2


def test_local_counters() -> None:
    fixed = LocalFixedWindow(0.2)
    assert [fixed.hit("k", 2)[0] for _ in range(3)] == [1, 2, 3]
    assert fixed.hit("other", 2)[0] == 1
    time.sleep(0.25)
    count, reset = fixed.hit("k", 2)
    assert count == 1 and 0.15 < reset <= 0.2 + 1e-6     # float rounding of the window end
    sliding = LocalSlidingWindow(3600.0)
    assert [sliding.hit("k", 2)[0] for _ in range(3)] == [1, 2, 3]
    assert sliding.current["k"] == 2            # refused requests are not counted
    # 10 in the previous minute, 4 in this one, a quarter in: the estimate 10 * 0.75 + 4
    # drops below 10 when 10 * (1 - t / 60) + 4 < 10, at t = 24 s, 9 s from now.
    assert sliding_retry(10, 4, 15.0, 60.0, 10) == pytest.approx(9.0)
    # 10 already in this minute: wait for it to end, then for them to weigh less than 10.
    assert sliding_retry(0, 10, 30.0, 60.0, 10) == pytest.approx(30.0)
    assert sliding_retry(0, 20, 30.0, 60.0, 10) == pytest.approx(60.0)


def test_pre_rendered_headers_replace_upstream_ones() -> None:
    # rate-limit hands the codec its headers as one block, named by "\n"-prefixed names.
    names = b"\nratelimit-limit\nratelimit-remaining\nx-ratelimit-remaining"
    lines = b"ratelimit-limit: 5\r\nratelimit-remaining: 4\r\nx-ratelimit-remaining: 4\r\n"
    plain = b"Content-Type: text/plain\r\ncontent-length: 3\r\n"
    for _ in range(2):                    # the second time from the codec's memo
        assert _merge_extra(plain, [(names, lines)]) == plain + lines
    assert _merge_extra(b"", [(names, lines)]) == lines
    upstream = (b"X-RateLimit-Remaining: 4999\r\nContent-Type: text/plain\r\n"
                b"X-RateLimit-Limit: 5000\r\n")
    assert _merge_extra(upstream, [(names, lines)]) == (
        b"Content-Type: text/plain\r\nX-RateLimit-Limit: 5000\r\n" + lines)
    mixed = [(b"access-control-allow-origin", b"*"), (names, lines), (b"vary", b"Origin")]
    assert _merge_extra(upstream + b"Vary: Accept\r\n", mixed) == (
        b"Content-Type: text/plain\r\nX-RateLimit-Limit: 5000\r\nVary: Accept\r\n"
        b"access-control-allow-origin: *\r\n" + lines + b"vary: Origin\r\n")


# -- Redis: one limit for every gateway ---------------------------------------------------
@pytest.fixture
def redis_ns() -> Iterator[str]:
    """A namespace of our own in the test Redis, deleted afterwards."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_HOST}:{REDIS_PORT}")
    namespace = f"mgtest-{uuid.uuid4().hex[:12]}"
    yield namespace
    keys = list(client.scan_iter(match=f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def redis_system(namespace: str, port: int = REDIS_PORT) -> dict[str, Any]:
    return {"db": {"redis": {"host": REDIS_HOST, "port": port, "namespace": namespace}}}


def redis_keys(namespace: str) -> dict[str, int]:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        return {k.decode(): int(client.get(k) or 0)
                for k in client.scan_iter(match=f"{namespace}:*")}
    finally:
        client.close()


def hammer(gateways: list[Gateway], total: int) -> list[int]:
    def one(i: int) -> int:
        gw = gateways[i % len(gateways)]
        return httpx.get(gw.url + "/", timeout=10).status_code

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(total)))


def test_two_gateways_on_one_redis_share_one_limit(backend: Backend, gateway_factory: Any,
                                                   redis_ns: str) -> None:
    config = limited(backend.url, max=10, windowMs=60000)
    gateways = [gateway_factory(config, system=redis_system(redis_ns), workers=2),
                gateway_factory(limited(backend.url, max=10, windowMs=60000),
                                system=redis_system(redis_ns))]
    statuses = hammer(gateways, 60)
    assert statuses.count(200) == 10
    assert statuses.count(429) == 50
    (key,) = redis_keys(redis_ns)
    assert key == f"{redis_ns}:rate-limit:main:0:127.0.0.1"


def test_redis_sliding_window_is_shared_too(backend: Backend, gateway_factory: Any,
                                            redis_ns: str) -> None:
    # Sliding windows are aligned on the clock: pick a length that puts now well inside one.
    window = next(w for w in range(600000, 700000, 1000)
                  if 60000 < (time.time() * 1000) % w < w - 120000)
    config = limited(backend.url, max=7, windowMs=window, algorithm="sliding-window")
    gateways = [gateway_factory(config, system=redis_system(redis_ns)),
                gateway_factory(limited(backend.url, max=7, windowMs=window,
                                        algorithm="sliding-window"),
                                system=redis_system(redis_ns))]
    statuses = hammer(gateways, 30)
    assert statuses.count(200) == 7
    assert list(redis_keys(redis_ns).values()) == [7]


def test_a_refused_key_skips_redis_until_its_window_ends(backend: Backend,
                                                         gateway_factory: Any,
                                                         redis_ns: str) -> None:
    gw = gateway_factory(limited(backend.url, max=3, windowMs=60000, store="redis",
                                 keyPrefix="precheck"), system=redis_system(redis_ns))
    assert [get(gw).status_code for _ in range(4)] == [200, 200, 200, 429]
    counts = redis_keys(redis_ns)
    assert counts == {f"{redis_ns}:rate-limit:precheck:127.0.0.1": 4}
    for _ in range(10):
        r = get(gw)
        assert r.status_code == 429
        assert 50 <= int(r.headers["retry-after"]) <= 60
    assert redis_keys(redis_ns) == counts             # answered without Redis


def test_store_redis_param_without_system_redis(backend: Backend, gateway_factory: Any,
                                                redis_ns: str) -> None:
    # No db.redis section: the policy's store: redis uses localhost:6379, namespace EG.
    prefix = f"{redis_ns}-own"
    gw = gateway_factory(limited(backend.url, max=1, store="redis", keyPrefix=prefix))
    try:
        assert [get(gw).status_code for _ in range(2)] == [200, 429]
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        assert client.get(f"EG:rate-limit:{prefix}:127.0.0.1") == b"2"
    finally:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        client.delete(f"EG:rate-limit:{prefix}:127.0.0.1")
        client.close()


def test_redis_down_falls_back_to_local_counters(backend: Backend,
                                                 gateway_factory: Any) -> None:
    gw = gateway_factory(limited(backend.url, max=2),
                         system=redis_system("unused", port=free_port()))
    assert [get(gw).status_code for _ in range(4)] == [200, 200, 429, 429]
    assert "Redis unavailable" in gw.log()


def test_a_redis_that_never_answers_costs_one_timeout(backend: Backend,
                                                      gateway_factory: Any) -> None:
    """Connections are accepted (the kernel's backlog) but never served: the first
    request waits for one 1 s socket timeout -- not redis-py's default ten retries --
    then the process counts locally."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        gw = gateway_factory(limited(backend.url, max=2),
                             system=redis_system("unused", port=silent.getsockname()[1]))
        codes = [httpx.get(gw.url, timeout=4).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        assert "Redis unavailable" in gw.log()
    finally:
        silent.close()


def test_emulated_redis_keeps_local_counters(backend: Backend, gateway_factory: Any) -> None:
    system = {"db": {"redis": {"emulate": True, "port": free_port()}}}
    gw = gateway_factory(limited(backend.url, max=1), system=system)
    assert [get(gw).status_code for _ in range(2)] == [200, 429]


# -- Redis leases: blocks of quota admitted locally -------------------------------------
@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[int]:
    """A Redis server of our own: its command statistics count our gateway's calls only."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host=REDIS_HOST, port=port, socket_connect_timeout=1)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(answers)
        yield port
    finally:
        client.close()
        server.terminate()
        server.wait(10)


def script_calls(port: int) -> int:
    client = redis.Redis(host=REDIS_HOST, port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
               for name in ("eval", "evalsha"))


def test_leases_admit_locally_with_few_redis_calls(backend: Backend, gateway_factory: Any,
                                                   own_redis: int) -> None:
    gw = gateway_factory(limited(backend.url, max=1000, windowMs=60000),
                         system=redis_system("lease", port=own_redis))
    before = script_calls(own_redis)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        responses = [client.get("/") for _ in range(500)]
    assert [r.status_code for r in responses] == [200] * 500
    calls = script_calls(own_redis) - before
    assert 5 <= calls <= 50, calls               # blocks of 1, 2, 4, ... up to 1/8 of what is left
    # One process: what it admitted of each block adds to the count at the lease, exactly.
    assert [int(r.headers["ratelimit-remaining"]) for r in responses] == list(range(999, 499, -1))
    assert [int(r.headers["x-ratelimit-remaining"]) for r in responses[-3:]] == [502, 501, 500]
    leased = redis.Redis(host=REDIS_HOST, port=own_redis).get("lease:rate-limit:main:0:127.0.0.1")
    assert 500 <= int(leased or 0) <= 1000


def test_two_gateways_with_large_leases_still_admit_exactly_max(
        backend: Backend, gateway_factory: Any, redis_ns: str) -> None:
    # 100 allowed: blocks of up to 12 early on, of 1 near the limit; 3 processes.
    gateways = [gateway_factory(limited(backend.url, max=100, windowMs=60000),
                                system=redis_system(redis_ns), workers=2),
                gateway_factory(limited(backend.url, max=100, windowMs=60000),
                                system=redis_system(redis_ns))]
    statuses = hammer(gateways, 300)
    assert statuses.count(200) == 100
    assert statuses.count(429) == 200


def test_lease_script_grants_a_fraction_of_what_remains(redis_ns: str) -> None:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        lease = client.register_script(_LEASE_LUA)
        key = f"{redis_ns}:lease-script"

        def ask(limit: int, want: int) -> list[int]:
            grant, count, ttl = lease(keys=[key], args=[limit, want, 60000, LEASE_FRACTION])
            assert 59000 <= ttl <= 60000
            return [grant, count]

        assert ask(100, 1000) == [12, 12]         # 100 // 8
        assert ask(100, 5) == [5, 17]             # what was asked for
        assert ask(20, 1000) == [1, 18]           # near the limit: one at a time
        assert ask(20, 1000) == [1, 19]
        assert ask(20, 1000) == [1, 20]
        assert ask(20, 1000) == [0, 21]           # refused, and counted like before
    finally:
        client.close()


class FakeLeaseRedis:
    """The lease script's arithmetic in Python, with a delay and call statistics."""

    def __init__(self, delay: float = 0.002) -> None:
        self.delay = delay
        self.counts: dict[str, tuple[int, float]] = {}    # key -> (count, expiry)
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0

    def register_script(self, text: str) -> Any:
        return self.run

    async def run(self, keys: list[str], args: list[int]) -> list[int]:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight -= 1
        limit, want, window_ms, fraction = args
        now = time.monotonic()
        count, expiry = self.counts.get(keys[0], (0, 0.0))
        if expiry <= now:
            count, expiry = 0, now + window_ms / 1000
        left = limit - count
        grant = max(min(want, max(1, left // fraction), left), 0)
        count += grant or 1
        self.counts[keys[0]] = (count, expiry)
        return [grant, count, int((expiry - now) * 1000)]


def admitted(outcomes: list[tuple[int, float]], limit: int) -> int:
    return sum(count <= limit for count, _ in outcomes)


def test_concurrent_requests_share_one_lease_request() -> None:
    fake = FakeLeaseRedis()
    leases = RedisLeases(fake, "ns", 60.0)

    async def burst(n: int, limit: int) -> list[tuple[int, float]]:
        return await asyncio.gather(*(leases.hit("k", limit) for _ in range(n)))

    outcomes = asyncio.run(burst(60, 10**6))
    assert admitted(outcomes, 10**6) == 60
    assert sorted(count for count, _ in outcomes) == list(range(1, 61))
    assert fake.most_in_flight == 1                # the others waited on the one in flight
    assert fake.calls <= 7                         # blocks of 1, 2, 4, 8, 16, 32
    assert leases.requests == fake.calls


def test_leases_never_admit_more_than_max_across_processes() -> None:
    fake = FakeLeaseRedis(delay=0.0005)
    processes = [RedisLeases(fake, "ns", 60.0) for _ in range(3)]

    async def hammer_all() -> list[tuple[int, float]]:
        tasks = [processes[i % 3].hit("k", 50) for i in range(300)]
        return await asyncio.gather(*tasks)

    outcomes = asyncio.run(hammer_all())
    # Every process keeps receiving requests: whatever it leased is used, so exactly 50.
    assert admitted(outcomes, 50) == 50
    assert fake.counts["ns:k"][0] >= 50


def test_a_finished_windows_lease_is_dropped() -> None:
    fake = FakeLeaseRedis(delay=0.0)
    leases = RedisLeases(fake, "ns", 0.5)

    async def scenario() -> None:
        for _ in range(7):                          # blocks of 1, 2 and 4
            await leases.hit("k", 1000)
        await leases.hit("k", 1000)                 # a block of 8: 7 left
        lease = leases.leases["k"]
        assert lease.left == 7 and lease.chunk == 8
        loop = asyncio.get_running_loop()
        assert leases.take("k", loop.time()) is lease
        await asyncio.sleep(0.55)
        assert leases.take("k", loop.time()) is None          # the window is over
        count, reset = await leases.hit("k", 1000)
        assert count == 1 and 0.4 < reset <= 0.5
        assert leases.leases["k"] is not lease and leases.leases["k"].chunk == 1

    asyncio.run(scenario())
