"""Credential checks under abuse, through real gateways and real sockets.

A wrong secret costs the gateway a slow hash (scrypt), so: a flood of them
must not delay anybody else's first use of a valid key; failed checks are
limited per client address and per key id (429 + ``Retry-After``, no hash
run); checks waiting for a hash are bounded (503 + ``Retry-After``); and an
unknown key id or username takes as long to refuse as a known one with a
wrong secret (no enumeration by timing).

Clients get distinct addresses by binding 127.0.0.x source addresses (Linux
routes all of 127/8 to the loopback interface).
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Backend
from tests.support.gateway import Gateway
from tests.test_auth_key import Admin, auth_config, auth_pipeline

# -- a raw client with a chosen source address -------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection from ``source`` (an address on 127/8)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0))
        return cls(reader, writer)

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: gw"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    async def answer(self) -> tuple[int, dict[str, str]]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        found = {}
        for field in fields:
            if ":" in field:
                name, _, value = field.partition(":")
                found[name.strip().lower()] = value.strip()
        await self.reader.readexactly(int(found.get("content-length", "0")))
        return int(status_line.split()[1]), found

    async def call(self, method: str, path: str, headers: dict[str, str],
                   body: bytes = b"") -> tuple[int, dict[str, str]]:
        self.send(method, path, headers, body)
        return await self.answer()

    def close(self) -> None:
        self.writer.close()


async def once(port: int, source: str, headers: dict[str, str], path: str = "/open/echo",
               method: str = "GET", body: bytes = b"") -> tuple[int, dict[str, str]]:
    conn = await Conn.open(port, source)
    try:
        return await conn.call(method, path, headers, body)
    finally:
        conn.close()


def get(port: int, source: str, headers: dict[str, str], **kw: Any) -> tuple[int, dict[str, str]]:
    return asyncio.run(once(port, source, headers, **kw))


def api_key(key_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": f"apiKey {key_id}:{secret}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def wrong() -> str:
    return uuid.uuid4().hex


def gateway(tmp: Any, backend: Backend, checks: dict[str, Any] | None) -> Gateway:
    """key-auth on /open/*, basic-auth on /basic/*, the oauth2 token endpoint."""
    config = auth_config(backend.url, [{"key-auth": None}])
    endpoint, pipeline = auth_pipeline("basic-auth", "basic", ["/basic/*"], {})
    config["apiEndpoints"] = {"basic": endpoint, **config["apiEndpoints"]}
    config["pipelines"]["basic"] = pipeline
    o_endpoint, o_pipeline = auth_pipeline("oauth2", "o", ["/o/*", "/oauth2/*"], {})
    config["apiEndpoints"] = {"o": o_endpoint, **config["apiEndpoints"]}
    config["pipelines"]["o"] = o_pipeline
    config["policies"] = sorted({*config["policies"], "basic-auth", "oauth2"})
    system = {"credentialChecks": checks} if checks is not None else None
    return Gateway(tmp, config, system=system)


# -- row 8: a flood of wrong secrets ------------------------------------------------------------


@pytest.fixture(scope="module")
def default_gw(tmp_path_factory: pytest.TempPathFactory, backend_mod: Backend
               ) -> Iterator[Gateway]:
    gw = gateway(tmp_path_factory.mktemp("abuse-default"), backend_mod, None)
    yield gw
    gw.stop()


async def _flood(port: int, target: str, on: Any, stop: Any) -> dict[int, int]:
    seen: Counter[int] = Counter()

    async def attacker(n: int) -> None:
        conn = await Conn.open(port, f"127.0.1.{n % 20 + 1}")
        try:
            while not stop.is_set():
                key_id = target if n % 2 else wrong()
                status, _ = await conn.call("GET", "/open/echo", api_key(key_id, wrong()))
                seen[status] += 1
        finally:
            conn.close()

    attackers = [asyncio.create_task(attacker(n)) for n in range(200)]
    deadline = time.monotonic() + 20
    while sum(seen.values()) < 400 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)         # polls: the flood is on, the queue full
    on.set()
    await asyncio.gather(*attackers, return_exceptions=True)
    return dict(seen)


def flood(port: int, target: str, on: Any, stop: Any, results: Any) -> None:
    """In a process of its own: 200 connections from 20 addresses send ``target`` (half
    of them random key ids) with random secrets until ``stop``."""
    results.put(asyncio.run(_flood(port, target, on, stop)))


def first_use(port: int, key_id: str, secret: str) -> float:
    """Seconds for a new connection from a clean address to get 200 with this key."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30,
                                  source_address=("127.0.2.1", 0)) as sock:
        sock.sendall(f"GET /open/echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                     f"Authorization: apiKey {key_id}:{secret}\r\n\r\n".encode())
        head = sock.recv(12)
    assert head.startswith(b"HTTP/1.1 200"), head
    return time.monotonic() - start


def test_a_flood_of_wrong_secrets_does_not_delay_a_valid_first_use(default_gw: Gateway) -> None:
    admin = Admin(default_gw)
    user = admin.user()
    target = admin.credential(user["id"], "key-auth")        # the key id under attack
    others = [admin.credential(admin.user()["id"], "key-auth") for _ in range(3)]
    mp = multiprocessing.get_context("spawn")
    on, stop, results = mp.Event(), mp.Event(), mp.Queue()
    flooder = mp.Process(target=flood, args=(default_gw.port, target["keyId"], on, stop,
                                             results), daemon=True)
    flooder.start()
    try:
        assert on.wait(30), "the flood did not start"
        waits = [first_use(default_gw.port, c["keyId"], c["keySecret"])
                 for c in [target, *others]]
    finally:
        stop.set()
        seen = results.get(timeout=30)
        flooder.join(10)
    # Each first use (its owner's included) waits for the hashes running, not the flood.
    assert max(waits) < 1.0, (waits, seen)
    # Past each address's first failures, the flood is refused without hashing.
    assert seen.get(401, 0) < 200 and set(seen) <= {401, 429, 503}, seen


# -- failed-attempt limits and the bounded queue ----------------------------------------------

STRICT = {"hashWorkers": 1, "maxWaiting": 3, "maxWaitingPerClient": 2, "maxFailures": 3,
          "maxFailuresPerId": 5, "failureWindow": 60000}


@pytest.fixture(scope="module")
def strict_gw(tmp_path_factory: pytest.TempPathFactory, backend_mod: Backend
              ) -> Iterator[Gateway]:
    gw = gateway(tmp_path_factory.mktemp("abuse-strict"), backend_mod, STRICT)
    yield gw
    gw.stop()


def _retry_after(headers: dict[str, str]) -> int:
    value = int(headers["retry-after"])
    assert 1 <= value <= 60
    return value


def test_failed_attempts_per_client_answer_429_and_spare_others(strict_gw: Gateway) -> None:
    admin = Admin(strict_gw)
    good = admin.credential(admin.user()["id"], "key-auth")
    fresh = admin.credential(admin.user()["id"], "key-auth")
    port, bad = strict_gw.port, "127.0.3.1"
    assert get(port, bad, api_key(good["keyId"], good["keySecret"]))[0] == 200   # cached now
    for _ in range(3):
        assert get(port, bad, api_key(good["keyId"], wrong()))[0] == 401
    status, headers = get(port, bad, api_key("nobody", wrong()))
    assert status == 429
    _retry_after(headers)
    # no hash for this client now, even for a right secret never seen...
    assert get(port, bad, api_key(fresh["keyId"], fresh["keySecret"]))[0] == 429
    # ... but a key it already proved is answered from the cache, and others are served
    assert get(port, bad, api_key(good["keyId"], good["keySecret"]))[0] == 200
    assert get(port, "127.0.3.2", api_key(fresh["keyId"], fresh["keySecret"]))[0] == 200


def test_basic_auth_and_oauth2_secrets_are_limited_too(strict_gw: Gateway) -> None:
    admin = Admin(strict_gw)
    user = admin.user()
    admin.credential(user["id"], "basic-auth", password="s3cret")
    port = strict_gw.port
    for _ in range(3):
        assert get(port, "127.0.4.1", basic(user["username"], wrong()),
                   path="/basic/echo")[0] == 401
    status, headers = get(port, "127.0.4.1", basic(user["username"], "s3cret"),
                          path="/basic/echo")
    assert status == 429
    _retry_after(headers)
    assert get(port, "127.0.4.2", basic(user["username"], "s3cret"),
               path="/basic/echo")[0] == 200
    app = admin.app(user["id"])
    admin.credential(app["id"], "oauth2", secret="client-secret")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(3):
        body = f"grant_type=client_credentials&client_id={app['id']}&client_secret={wrong()}"
        assert get(port, "127.0.4.3", form, path="/oauth2/token", method="POST",
                   body=body.encode())[0] == 401
    body = f"grant_type=client_credentials&client_id={app['id']}&client_secret=client-secret"
    status, headers = get(port, "127.0.4.3", form, path="/oauth2/token", method="POST",
                          body=body.encode())
    assert status == 429
    _retry_after(headers)
    assert get(port, "127.0.4.4", form, path="/oauth2/token", method="POST",
               body=body.encode())[0] == 200


def test_a_key_id_failing_from_many_addresses_takes_one_guess_per_address(
        strict_gw: Gateway) -> None:
    admin = Admin(strict_gw)
    cred = admin.credential(admin.user()["id"], "key-auth")
    port, key_id = strict_gw.port, cred["keyId"]
    for n in range(1, 6):                 # maxFailuresPerId: 5, from five addresses
        assert get(port, f"127.0.5.{n}", api_key(key_id, wrong()))[0] == 401
    # a sixth address without failures may still try (and its owner get in) ...
    assert get(port, "127.0.5.6", api_key(key_id, wrong()))[0] == 401
    status, headers = get(port, "127.0.5.6", api_key(key_id, wrong()))
    assert status == 429                  # ... but only once: 1 failure < maxFailures 3
    _retry_after(headers)
    assert get(port, "127.0.5.7", api_key(key_id, cred["keySecret"]))[0] == 200


async def _burst(port: int, sources: list[str]) -> list[tuple[int, dict[str, str]]]:
    """One request per connection, all written before any answer is read."""
    conns = [await Conn.open(port, s) for s in sources]
    try:
        for conn in conns:
            conn.send("GET", "/open/echo", api_key(wrong(), wrong()))
        return list(await asyncio.gather(*(c.answer() for c in conns)))
    finally:
        for conn in conns:
            conn.close()


def test_checks_waiting_are_bounded_503_overall_429_per_client(strict_gw: Gateway) -> None:
    port = strict_gw.port
    # one address, 12 at once: one hashes, two wait (maxWaitingPerClient), the rest 429
    answers = asyncio.run(_burst(port, ["127.0.6.1"] * 12))
    statuses = Counter(s for s, _ in answers)
    assert statuses[429] >= 8 and statuses[401] <= 3, statuses
    for status, headers in answers:
        if status == 429:
            _retry_after(headers)
    # twelve addresses at once: one hashes, three wait (maxWaiting), the rest 503
    answers = asyncio.run(_burst(port, [f"127.0.7.{n}" for n in range(1, 13)]))
    statuses = Counter(s for s, _ in answers)
    assert statuses[503] >= 7 and statuses[401] <= 4, statuses
    for status, headers in answers:
        if status == 503:
            _retry_after(headers)


# -- row 9: no enumeration by timing -----------------------------------------------------------


@pytest.fixture(scope="module")
def timing_gw(tmp_path_factory: pytest.TempPathFactory, backend_mod: Backend
              ) -> Iterator[Gateway]:
    gw = gateway(tmp_path_factory.mktemp("abuse-timing"), backend_mod,
                 {"maxFailures": 1000, "maxFailuresPerId": 1000})
    yield gw
    gw.stop()


def _medians(port: int, known: dict[str, str], unknown: dict[str, str],
             path: str, rounds: int) -> tuple[float, float]:
    """Median latency of a wrong secret for a known and an unknown id, interleaved."""
    async def run() -> tuple[float, float]:
        conn = await Conn.open(port, "127.0.8.1")
        times: dict[str, list[float]] = {"known": [], "unknown": []}
        try:
            for n in range(rounds):
                order = ["known", "unknown"] if n % 2 else ["unknown", "known"]
                for which in order:
                    name = (known if which == "known" else unknown)["name"]
                    headers = (api_key(name, wrong()) if path == "/open/echo"
                               else basic(name, wrong()))
                    start = time.perf_counter()
                    status, _ = await conn.call("GET", path, headers)
                    times[which].append(time.perf_counter() - start)
                    assert status == 401
        finally:
            conn.close()
        return statistics.median(times["known"]), statistics.median(times["unknown"])
    return asyncio.run(run())


def test_unknown_and_known_ids_take_the_same_time_to_refuse(timing_gw: Gateway) -> None:
    admin = Admin(timing_gw)
    user = admin.user()
    cred = admin.credential(user["id"], "key-auth")
    admin.credential(user["id"], "basic-auth", password="s3cret")
    port = timing_gw.port
    known, unknown = _medians(port, {"name": cred["keyId"]}, {"name": wrong()},
                              "/open/echo", 12)
    assert 0.5 <= unknown / known <= 2.0, (known, unknown)
    assert known > 0.005                  # a slow hash ran for both
    known, unknown = _medians(port, {"name": user["username"]}, {"name": wrong()},
                              "/basic/echo", 8)
    assert 0.5 <= unknown / known <= 2.0, (known, unknown)


# -- the queue's own bookkeeping (in process, real threads) ---------------------------------


def test_cancelled_and_displaced_waiters_leave_no_slot_behind() -> None:
    from meshgate.store.guard import HashQueue, Limits, Refused

    failing = {"bad"}
    queue = HashQueue(Limits(hash_workers=1, max_waiting=2, max_waiting_per_client=2),
                      lambda client: client not in failing)
    gate = threading.Event()

    async def until(check: Any) -> None:
        for _ in range(100):              # event-loop turns, not time
            if check():
                return
            await asyncio.sleep(0)
        raise AssertionError("not reached")

    async def scenario() -> bool:
        running = asyncio.create_task(queue.run("a", gate.wait, 30))
        await until(lambda: queue.busy == 1)
        bad = [asyncio.create_task(queue.run("bad", lambda: True)) for _ in range(2)]
        await until(lambda: queue.waiting == 2)
        clean = asyncio.create_task(queue.run("good", lambda: True))
        with pytest.raises(Refused) as refused:       # full: good displaces bad's newest
            await bad[1]
        assert refused.value.status == 503 and refused.value.retry_after >= 1
        bad[0].cancel()                   # a client gone while waiting
        await until(lambda: queue.waiting == 1)
        gate.set()
        assert await running and await clean
        return bad[0].cancelled()

    assert asyncio.run(scenario())
    assert (queue.busy, queue.waiting, queue.waiters) == (0, 0, {})
    queue.close()
