"""Active health checks (``meshgate.upstream.health``) against real servers on loopback.

The checker runs on the test's own event loop (``asyncio.run``), as it runs
on the master's; backends are ``tests.support.backend`` processes, plus a few
in-test servers where a test must see exactly what a check sent. Intervals
are 50-100 ms; every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.config.mesh import HealthCheck
from meshgate.discovery import EndpointSpec
from meshgate.upstream.health import HealthChecker
from tests.support.aio import eventually as until
from tests.support.gateway import free_port

ROOT = Path(__file__).resolve().parent.parent


# -- helpers ----------------------------------------------------------------------------


def endpoint(port: int, scheme: str = "http") -> EndpointSpec:
    return EndpointSpec(host="127.0.0.1", port=port, scheme=scheme)


class Recorder:
    """An ``on_change`` callback that snapshots every endpoint's status at each flip."""

    def __init__(self) -> None:
        self.checker: HealthChecker | None = None
        self.flips: list[dict[str, Any]] = []

    def __call__(self) -> None:
        assert self.checker is not None
        self.flips.append({k: self.checker.status(k) for k in self.checker._states})


def make(config: dict[str, Any], targets: list[EndpointSpec]) -> tuple[HealthChecker, Recorder]:
    recorder = Recorder()
    checker = HealthChecker("svc", HealthCheck.model_validate(config), recorder)
    recorder.checker = checker
    checker.set_targets(targets)
    return checker, recorder


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


class BackendProcess:
    """``tests.support.backend`` on a chosen port, so it can be killed and restarted."""

    def __init__(self, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.backend", "--port", str(port)],
            stdout=subprocess.PIPE, cwd=ROOT, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("listening on"), line
        self.port = int(line.split()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def spawn() -> Iterator[Callable[[int], BackendProcess]]:
    started: list[BackendProcess] = []

    def start(port: int = 0) -> BackendProcess:
        started.append(BackendProcess(port))
        return started[-1]

    yield start
    for b in started:
        b.kill()


async def recording_server(answer: bytes, tls: ssl.SSLContext | None = None
                           ) -> tuple[asyncio.Server, list[bytes], list[float]]:
    """A server that records each request head (and its arrival time) and answers."""
    heads: list[bytes] = []
    arrivals: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrivals.append(time.monotonic())
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    return server, heads, arrivals


# -- HTTP checks --------------------------------------------------------------------------


def test_new_endpoint_is_unhealthy_until_its_first_pass_which_runs_at_once(backend) -> None:
    async def scenario() -> None:
        ep = endpoint(backend.port)
        checker, rec = make({"path": "/status/200", "interval": 10000,
                             "healthyThreshold": 3}, [ep])
        assert not checker.is_healthy(ep.key)
        assert checker.status(ep.key)["lastCheck"] is None
        started = time.monotonic()
        await checker.start()
        try:
            await until(lambda: checker.is_healthy(ep.key), timeout=2)
            # one pass is enough at startup (despite healthyThreshold 3), and it did
            # not wait for the 10 s interval
            assert time.monotonic() - started < 2
            assert len(rec.flips) == 1
            assert rec.flips[0][ep.key]["consecutiveSuccesses"] == 1
            status = checker.status(ep.key)
            assert status["healthy"] is True and status["lastError"] is None
            assert abs(status["lastCheck"] - time.time()) < 5
        finally:
            await checker.stop()

    run(scenario)


@pytest.mark.parametrize(("path", "expected", "healthy"), [
    ("/status/503", None, False),
    ("/status/404", None, False),
    ("/status/302", None, True),             # default 200-399
    ("/status/503", ["503"], True),
    ("/status/204", ["200-202", 204], True),
    ("/status/200", ["201-299"], False),
])
def test_status_decides(backend, path: str, expected: list[Any] | None, healthy: bool) -> None:
    async def scenario() -> None:
        ep = endpoint(backend.port)
        config: dict[str, Any] = {"path": path, "interval": 50, "healthyThreshold": 1}
        if expected is not None:
            config["expectedStatuses"] = expected
        checker, rec = make(config, [ep])
        await checker.start()
        try:
            await until(lambda: checker.status(ep.key)["lastCheck"] is not None)
            await until(lambda: checker.status(ep.key)["consecutiveFailures"]
                        + checker.status(ep.key)["consecutiveSuccesses"] >= 2)
            assert checker.is_healthy(ep.key) is healthy
            status = checker.status(ep.key)
            if healthy:
                assert status["lastError"] is None
            else:
                assert status["lastError"] == f"status {path.rsplit('/', 1)[1]}"
                assert rec.flips == []          # never healthy, so nothing flipped
        finally:
            await checker.stop()

    run(scenario)


def test_nothing_listening_fails() -> None:
    async def scenario() -> None:
        ep = endpoint(free_port())
        checker, rec = make({"interval": 50}, [ep])
        await checker.start()
        try:
            await until(lambda: checker.status(ep.key)["consecutiveFailures"] >= 2)
            assert not checker.is_healthy(ep.key)
            assert "refused" in checker.status(ep.key)["lastError"].lower()
            assert rec.flips == []
        finally:
            await checker.stop()

    run(scenario)


def test_timeout_fails_the_check(backend) -> None:
    async def scenario() -> None:
        ep = endpoint(backend.port)
        checker, _ = make({"path": "/slow/3000", "timeout": 100, "interval": 50}, [ep])
        started = time.monotonic()
        await checker.start()
        try:
            await until(lambda: checker.status(ep.key)["lastCheck"] is not None)
            assert time.monotonic() - started < 1.5      # gave up long before 3 s
            assert checker.status(ep.key)["lastError"] == "timeout after 100 ms"
            assert not checker.is_healthy(ep.key)
        finally:
            await checker.stop()

    run(scenario)


def test_request_head_sent(backend) -> None:
    async def scenario() -> None:
        server, heads, _ = await recording_server(
            b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        port = server.sockets[0].getsockname()[1]
        plain = endpoint(port)
        named, _ = make({"path": "/healthz?deep=1", "host": "svc.example",
                         "interval": 10000}, [plain])
        default, _ = make({"interval": 10000}, [plain])
        async with server:
            await named.start()
            await default.start()
            try:
                await until(lambda: len(heads) >= 2)
                await until(lambda: named.is_healthy(plain.key) and default.is_healthy(plain.key))
            finally:
                await named.stop()
                await default.stop()
        lines = sorted(h.decode().lower() for h in heads)
        with_host = next(h for h in lines if "svc.example" in h)
        assert with_host.startswith("get /healthz?deep=1 http/1.1\r\n")
        assert "\r\nhost: svc.example\r\n" in with_host
        assert "\r\nuser-agent: meshgate-health\r\n" in with_host
        other = next(h for h in lines if h is not with_host)
        assert other.startswith("get / http/1.1\r\n")
        assert f"\r\nhost: 127.0.0.1:{port}\r\n" in other

    run(scenario)


def test_malformed_response_fails() -> None:
    async def scenario() -> None:
        server, _, _ = await recording_server(b"SSH-2.0-OpenSSH\r\n\r\n")
        ep = endpoint(server.sockets[0].getsockname()[1])
        checker, _ = make({"interval": 10000}, [ep])
        async with server:
            await checker.start()
            try:
                await until(lambda: checker.status(ep.key)["lastCheck"] is not None)
            finally:
                await checker.stop()
        assert not checker.is_healthy(ep.key)
        assert "malformed" in checker.status(ep.key)["lastError"]

    run(scenario)


# -- state changes ----------------------------------------------------------------------


def test_killed_backend_turns_unhealthy_then_healthy_after_restart(spawn) -> None:
    async def scenario() -> None:
        first = spawn()
        ep = endpoint(first.port)
        checker, rec = make({"path": "/status/200", "interval": 50, "unhealthyThreshold": 3,
                             "healthyThreshold": 2, "timeout": 500}, [ep])
        await checker.start()
        try:
            await until(lambda: checker.is_healthy(ep.key))
            first.kill()
            await until(lambda: not checker.is_healthy(ep.key))
            # exactly unhealthyThreshold failures in a row flipped it
            assert [f[ep.key]["healthy"] for f in rec.flips] == [True, False]
            assert rec.flips[1][ep.key]["consecutiveFailures"] == 3
            assert rec.flips[1][ep.key]["lastError"] is not None

            spawn(first.port)                   # the same instance comes back
            await until(lambda: checker.is_healthy(ep.key))
            assert [f[ep.key]["healthy"] for f in rec.flips] == [True, False, True]
            assert rec.flips[2][ep.key]["consecutiveSuccesses"] == 2
            assert checker.status(ep.key)["lastError"] is None
        finally:
            await checker.stop()

    run(scenario)


def test_unhealthy_interval_is_used_while_unhealthy(spawn) -> None:
    async def scenario() -> None:
        server = spawn()
        ep = endpoint(server.port)
        checker, _ = make({"interval": 50, "unhealthyInterval": 400,
                             "unhealthyThreshold": 2, "timeout": 500}, [ep])
        await checker.start()
        try:
            await until(lambda: checker.is_healthy(ep.key))
            server.kill()
            failures: dict[int, float] = {}

            def seen() -> bool:
                n = checker.status(ep.key)["consecutiveFailures"]
                failures.setdefault(n, time.monotonic())
                return n >= 4

            await until(seen)
            assert not checker.is_healthy(ep.key)
            # the second failure came one healthy interval after the first ...
            assert failures[2] - failures[1] < 0.3
            # ... and once unhealthy, checks are unhealthyInterval apart
            assert failures[3] - failures[2] >= 0.38
            assert failures[4] - failures[3] >= 0.38
        finally:
            await checker.stop()

    run(scenario)


def test_jitter_adds_random_delay() -> None:
    async def scenario() -> None:
        server, _, arrivals = await recording_server(b"HTTP/1.1 200 OK\r\n\r\n")
        ep = endpoint(server.sockets[0].getsockname()[1])
        checker, _ = make({"interval": 10, "jitter": 100}, [ep])
        async with server:
            await checker.start()
            try:
                await until(lambda: len(arrivals) >= 8)
            finally:
                await checker.stop()
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert all(g < 0.5 for g in gaps)
        # with no jitter every gap would be ~10 ms; with 0-100 ms extra, seven
        # gaps all under 20 ms has probability 1e-7
        assert max(gaps) > 0.02

    run(scenario)


def test_on_change_errors_do_not_stop_checks(backend) -> None:
    async def scenario() -> None:
        ep = endpoint(backend.port)
        calls: list[int] = []

        def boom() -> None:
            calls.append(1)
            raise RuntimeError("callback bug")

        checker = HealthChecker("svc", HealthCheck(interval=20), boom)
        checker.set_targets([ep])
        await checker.start()
        try:
            await until(lambda: checker.status(ep.key)["consecutiveSuccesses"] >= 3)
            assert calls == [1] and checker.is_healthy(ep.key)
        finally:
            await checker.stop()

    run(scenario)


# -- targets and lifecycle ------------------------------------------------------------------


def test_set_targets_keeps_state_of_kept_keys_and_stops_removed(backend_factory) -> None:
    async def scenario() -> None:
        a, b = backend_factory("a"), backend_factory("b")
        ep_a, ep_b = endpoint(a.port), endpoint(b.port)
        checker, _ = make({"interval": 30}, [ep_a])
        await checker.start()
        try:
            await until(lambda: checker.status(ep_a.key)["consecutiveSuccesses"] >= 3)
            checker.set_targets([ep_a, ep_b])
            assert checker.status(ep_a.key)["consecutiveSuccesses"] >= 3   # kept
            assert checker.is_healthy(ep_a.key)
            assert not checker.is_healthy(ep_b.key)                        # new: pending
            await until(lambda: checker.is_healthy(ep_b.key))

            checker.set_targets([ep_b])
            assert not checker.is_healthy(ep_a.key)
            with pytest.raises(KeyError):
                checker.status(ep_a.key)
            await until(lambda: len(_health_tasks()) == 1)
        finally:
            await checker.stop()
        assert _health_tasks() == []

    run(scenario)


def _health_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("health ")
            and not t.done()]


def test_targets_set_before_start_and_stop_cancels_everything(backend) -> None:
    async def scenario() -> None:
        eps = [endpoint(backend.port), endpoint(free_port())]
        checker, _ = make({"interval": 20, "type": "tcp"}, eps)
        await asyncio.sleep(0.05)
        assert _health_tasks() == []                 # nothing runs before start()
        await checker.start()
        assert len(_health_tasks()) == 2
        await until(lambda: checker.is_healthy(eps[0].key))
        await checker.stop()
        assert _health_tasks() == []
        last = checker.status(eps[0].key)["lastCheck"]
        await asyncio.sleep(0.1)                    # prove a negative: nothing checks now
        assert checker.status(eps[0].key)["lastCheck"] == last

    run(scenario)


# -- TCP and TLS -------------------------------------------------------------------------------


def test_tcp_check(spawn) -> None:
    async def scenario() -> None:
        server = spawn()
        up, down = endpoint(server.port), endpoint(free_port())
        checker, rec = make({"type": "tcp", "interval": 50, "unhealthyThreshold": 2,
                             "path": "/status/503"}, [up, down])    # path is unused by tcp
        await checker.start()
        try:
            await until(lambda: checker.is_healthy(up.key))
            await until(lambda: checker.status(down.key)["consecutiveFailures"] >= 2)
            assert not checker.is_healthy(down.key)
            assert checker.status(down.key)["lastError"]
            server.kill()
            await until(lambda: not checker.is_healthy(up.key))
            assert rec.flips[-1][up.key]["consecutiveFailures"] == 2
        finally:
            await checker.stop()

    run(scenario)


def _self_signed(directory: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (directory / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "c.pem", directory / "k.pem")
    return context


def test_https_check_uses_tls_without_verification(tmp_path: Path) -> None:
    async def scenario() -> None:
        tls = _self_signed(tmp_path)
        names: list[str | None] = []
        tls.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment]
        server, heads, _ = await recording_server(b"HTTP/1.1 200 OK\r\n\r\n", tls=tls)
        port = server.sockets[0].getsockname()[1]
        secure, plain = endpoint(port, "https"), endpoint(port)
        checker, _ = make({"host": "svc.example", "interval": 10000}, [secure, plain])
        async with server:
            await checker.start()
            try:
                await until(lambda: checker.status(plain.key)["lastCheck"] is not None)
                await until(lambda: checker.is_healthy(secure.key))
            finally:
                await checker.stop()
        assert names == ["svc.example"]
        assert heads and b"host: svc.example" in heads[0]
        assert not checker.is_healthy(plain.key)   # plain HTTP to a TLS port fails

    run(scenario)
