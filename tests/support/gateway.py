"""Start a real meshgate process on loopback for a test, and stop it.

``Gateway(tmp_path, config)`` writes ``gateway.config.yml`` (a dict, dumped as
YAML; ``http``/``admin`` ports are filled with free ports unless given),
starts ``meshgate run`` and waits until ``/ready`` answers 200.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

MESHGATE = [sys.executable, "-m", "meshgate"]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()


def free_port() -> int:
    """A port free on 127.0.0.1 for a server a test starts next.

    Chosen below the kernel's ephemeral range: ports handed out with bind(0)
    come from that range, and so do the local ports of every outgoing
    connection, so one of those could take the port before the server binds
    it. Below the range only another free_port() can, and random choice makes
    that unlikely.
    """
    low = max(1024, _EPHEMERAL[0] - 12000)
    for _ in range(200):
        port = random.randrange(low, _EPHEMERAL[0])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Gateway:
    def __init__(self, directory: Path, config: dict[str, Any], *, workers: int = 1,
                 system: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 start: bool = True) -> None:
        self.directory = directory
        self.config = config
        self.config.setdefault("http", {"port": free_port()})
        if self.config.get("http") is not None:
            self.config["http"].setdefault("hostname", "127.0.0.1")
        self.config.setdefault("admin", {"port": free_port(), "host": "127.0.0.1"})
        self.workers = workers
        self.env = {**os.environ, "MESHGATE_WATCH_INTERVAL": "0.1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "meshgate.log"
        self.write(config)
        if system is not None:
            (directory / "system.config.yml").write_text(yaml.safe_dump(system))
        if start:
            self.start()

    @property
    def port(self) -> int:
        return int(self.config["http"]["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.config['admin']['port']}"

    def write(self, config: dict[str, Any]) -> None:
        path = self.directory / "gateway.config.yml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.replace(path)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*MESHGATE, "run", str(self.directory), "--workers", str(self.workers)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        try:
            wait_until(self.ready, timeout=15)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"meshgate did not become ready:\n{self.log()}") from None

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"meshgate exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.admin_url + "/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=5).text

    def pids(self) -> list[int]:
        """The master and its workers."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             text=True).stdout.split()
        return [self.process.pid, *map(int, out)]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        return stop_process(self.process, sig, timeout)


def stop_process(process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
                 timeout: float = 15) -> int | None:
    """Signal a process and wait for it; SIGKILL if it outlives ``timeout``."""
    if process is None or process.poll() is not None:
        return process.returncode if process else None
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def proxy_config(upstream: str | list[str], *, policies: list[Any] | None = None,
                 proxy_action: dict[str, Any] | None = None,
                 endpoint: dict[str, Any] | None = None,
                 service: dict[str, Any] | None = None) -> dict[str, Any]:
    """The usual one-route config: apiEndpoint ``api`` -> pipeline -> proxy to ``backend``."""
    svc: dict[str, Any] = {"url": upstream} if isinstance(upstream, str) else {"urls": upstream}
    svc.update(service or {})
    action = {"serviceEndpoint": "backend", **(proxy_action or {})}
    steps = [*(policies or []), {"proxy": [{"action": action}]}]
    names = sorted({next(iter(p)) for p in steps})
    return {
        "apiEndpoints": {"api": endpoint or {"host": "*", "paths": ["/*"]}},
        "serviceEndpoints": {"backend": svc},
        "policies": names,
        "pipelines": {"main": {"apiEndpoints": ["api"], "policies": steps}},
    }
