"""Sidecar mode end to end: a registry, service replicas with sidecars, a caller.

Every part is a real process on loopback: ``meshgate registry``, backends
standing in for the *users* replicas, one ``meshgate sidecar`` per replica,
and a caller's sidecar whose outbound port the test uses as the app would
(Host header, or as an HTTP proxy).
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import MESHGATE, free_port, stop_process, wait_until
from tests.support.registry import RegistryProcess


class Sidecar:
    def __init__(self, directory: Path, registry: str, service: str, app_port: int,
                 *args: str) -> None:
        self.inbound = free_port()
        self.outbound = free_port()
        self.admin = free_port()
        self.log_path = directory / f"sidecar-{service}-{self.inbound}.log"
        self.process = subprocess.Popen(
            [*MESHGATE, "sidecar", "--service", service, "--app-port", str(app_port),
             "--inbound-port", str(self.inbound), "--outbound-port", str(self.outbound),
             "--registry", registry, "--instance-id", f"{service}-{self.inbound}",
             "--admin-port", str(self.admin),
             "--ttl", "2000", *args],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT)
        wait_until(self._up, timeout=15)

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"sidecar exited:\n{self.log_path.read_text()}")
        try:
            httpx.get(f"http://127.0.0.1:{self.outbound}/", timeout=1)
            httpx.get(f"http://127.0.0.1:{self.inbound}/", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig)


@pytest.fixture
def mesh(tmp_path: Path, backend_factory: Any) -> Iterator[dict[str, Any]]:
    registry = RegistryProcess(tmp_path)
    started: list[Sidecar] = []

    def sidecar(service: str, app_port: int, *args: str) -> Sidecar:
        token_file = tmp_path / f"{service}.token"
        if not token_file.exists():
            token_file.write_text(registry.join_token(service))
        s = Sidecar(tmp_path, registry.url, service, app_port, "--token-file", str(token_file),
                    *args)
        started.append(s)
        return s

    yield {"registry": registry, "sidecar": sidecar, "backend": backend_factory}
    for s in started:
        s.stop()            # SIGTERM: deregisters, drains, removes its scratch folder
    registry.stop()


def _instances(registry: Any, service: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{registry.url}/v1/services/{service}", timeout=5).json()
    return list(body["instances"])


def test_outbound_by_host_and_as_http_proxy(mesh: dict[str, Any]) -> None:
    users = [mesh["backend"](f"users{i}") for i in range(2)]
    for u in users:
        mesh["sidecar"]("users", u.port)
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    wait_until(lambda: len(_instances(mesh["registry"], "users")) == 2, timeout=5)
    out = f"http://127.0.0.1:{caller.outbound}"
    with httpx.Client(timeout=10) as client:
        names = Counter(client.get(out + "/name", headers={"host": "users"}).text
                        for _ in range(10))
    assert names == {"users0": 5, "users1": 5}
    with httpx.Client(proxy=out, timeout=10) as client:
        r = client.get("http://users/echo")
    assert r.status_code == 200 and r.json()["path"] == "/echo"
    # The sidecar's own Admin API: metrics of the outbound calls, the users cluster.
    admin = f"http://127.0.0.1:{caller.admin}"
    assert 'service_endpoint="users"' in httpx.get(admin + "/metrics", timeout=5).text
    workers = httpx.get(admin + "/clusters", timeout=5).json()["users"]["workers"]
    assert len(workers[0]) == 2


def test_inbound_forwards_to_the_local_app_and_registers(mesh: dict[str, Any]) -> None:
    app = mesh["backend"]("invoices")
    side = mesh["sidecar"]("invoices", app.port, "--zone", "z1", "--version", "v2")
    r = httpx.get(f"http://127.0.0.1:{side.inbound}/name", timeout=5)
    assert r.text == "invoices"
    [instance] = wait_until(lambda: _instances(mesh["registry"], "invoices"), timeout=5)
    assert instance["port"] == side.inbound
    assert instance["zone"] == "z1" and instance["version"] == "v2"


def test_sigterm_deregisters_before_draining(mesh: dict[str, Any]) -> None:
    users = [mesh["backend"](f"users{i}") for i in range(2)]
    sides = [mesh["sidecar"]("users", u.port) for u in users]
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    wait_until(lambda: len(_instances(mesh["registry"], "users")) == 2, timeout=5)
    out = f"http://127.0.0.1:{caller.outbound}/name"
    with httpx.Client(timeout=10, headers={"host": "users"}) as client:
        assert {client.get(out).text for _ in range(4)} == {"users0", "users1"}
        sides[0].stop()
        assert len(_instances(mesh["registry"], "users")) == 1
        # No request reaches the stopped replica once it has left the registry.
        wait_until(lambda: {client.get(out).text for _ in range(4)} == {"users1"}, timeout=1.5)
        assert all(client.get(out).status_code == 200 for _ in range(20))


def test_unknown_service_is_a_503_and_ip_literals_404(mesh: dict[str, Any]) -> None:
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    out = f"http://127.0.0.1:{caller.outbound}/"
    r = httpx.get(out, headers={"host": "nobody"}, timeout=10)
    assert r.status_code == 503
    r = httpx.get(out, headers={"host": "127.0.0.1"}, timeout=10)
    assert r.status_code == 404


def test_app_death_deregisters_and_recovery_registers_again(mesh: dict[str, Any]) -> None:
    app = mesh["backend"]("users0")
    port = app.port
    mesh["sidecar"]("users", port, "--app-health-path", "/status/200")
    wait_until(lambda: len(_instances(mesh["registry"], "users")) == 1, timeout=5)
    app.process.kill()
    app.process.wait()
    # Two failed checks a second apart: gone from the registry long before the TTL.
    wait_until(lambda: not _instances(mesh["registry"], "users"), timeout=4)
    mesh["backend"]("users0", "--port", str(port))
    wait_until(lambda: len(_instances(mesh["registry"], "users")) == 1, timeout=5)


def test_inbound_port_keeps_the_framing_the_caller_sent(mesh: dict[str, Any]) -> None:
    """A Connection header naming Content-Length cannot unframe a request on its way
    through a sidecar's inbound port to the app (the gateway's row-1 smuggling)."""
    from tests.test_bad_input import send_raw, status_of
    from tests.test_request_integrity import StrictBackend, smuggling_post

    app = StrictBackend()
    try:
        side = mesh["sidecar"]("invoices", int(app.url.rsplit(":", 1)[1]), "--no-register")
        smuggled = b"GET /admin/delete-everything HTTP/1.1\r\nHost: app\r\n\r\n"
        response, _ = send_raw(side.inbound, smuggling_post(smuggled), timeout=3)
        assert status_of(response) == 200
        # A probe on a fresh connection: once it is in, anything smuggled would be too.
        assert httpx.get(f"http://127.0.0.1:{side.inbound}/probe", timeout=5).text == "/probe"
        posts = [r for r in app.requests if r.line.startswith(b"POST")]
        assert [r.target for r in posts] == [b"/public/x"]
        assert posts[0].body == smuggled
        assert posts[0].header(b"content-length") == [b"%d" % len(smuggled)]
        assert not [t for t in app.targets() if t.startswith(b"/admin")]
    finally:
        app.close()


def test_http2_on_the_outbound_and_inbound_ports(mesh: dict[str, Any]) -> None:
    from tests.support.h2client import H2Client

    users = mesh["backend"]("users0")
    side = mesh["sidecar"]("users", users.port)
    caller = mesh["sidecar"]("web", free_port(), "--no-register")
    wait_until(lambda: len(_instances(mesh["registry"], "users")) == 1, timeout=5)
    with H2Client(caller.outbound) as c:       # routed by service name, as for HTTP/1.1
        r = c.get("/name", authority="users")
        assert (r.status, bytes(r.body)) == (200, b"users0")
    with H2Client(side.inbound) as c:
        r = c.get("/name")
        assert (r.status, bytes(r.body)) == (200, b"users0")
