"""Start a real single-member etcd on loopback for a test, and stop it.

Theory of operation
-------------------
``EtcdServer(data_dir)`` picks two free loopback ports (client, peer), starts
``etcd`` with its data in ``data_dir`` and polls ``/health`` until it answers
``{"health": "true"}`` (or the deadline passes, then it raises with the log).
``stop()`` terminates it (``kill()`` SIGKILLs it).

Fixtures, usable from any test module by binding them at module level::

    from tests.support import etcd as etcd_support
    etcd_server = etcd_support.etcd_server

    def test_x(etcd_server: EtcdServer) -> None:
        client = EtcdClient([etcd_server.url])

``etcd_server`` is one etcd per test; ``etcd_factory()`` starts more (each in
its own temp dir) and stops them all at the end. When ``etcd`` is not on
PATH, every test using them is skipped with that reason.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import free_port, wait_until

ETCD = shutil.which("etcd")


class EtcdServer:
    def __init__(self, data_dir: Path, *, start: bool = True) -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log_path = data_dir / "etcd.log"
        self.process: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def command(self) -> list[str]:
        if ETCD is None:
            raise RuntimeError("etcd is not on PATH")
        client = self.url
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [ETCD, "--name", "t", "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"t={peer}"]

    def start(self, timeout: float = 15.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(self.healthy, timeout=timeout, interval=0.05)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"etcd did not become healthy:\n{self.log()}") from None

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"etcd exited with {self.process.returncode}:\n{self.log()}")
        try:
            response = httpx.get(self.url + "/health", timeout=1)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _require_etcd() -> None:
    if ETCD is None:
        pytest.skip("etcd is not on PATH (install etcd 3.4+ to run the etcd tests)")


@pytest.fixture
def etcd_factory(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Callable[[], EtcdServer]]:
    _require_etcd()
    started: list[EtcdServer] = []

    def make() -> EtcdServer:
        server = EtcdServer(tmp_path_factory.mktemp("etcd"))
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def etcd_server(etcd_factory: Callable[[], EtcdServer]) -> EtcdServer:
    return etcd_factory()
