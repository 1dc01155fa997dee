"""Start the processes of a mesh scenario and wait until each really serves.

Theory of operation
-------------------
Every process goes through the harness's ``procs.ProcGroup``: its own
session (process group), output to ``bench/.work/logs/mesh-*.log``, and
``stop_all`` at the end kills whole trees, Ctrl-C included. Ports are free
loopback ports picked here and passed on the command line.

Readiness is always a real request with a deadline: a Python backend
answers ``/_ctl/count``; nginx answers its token; meshgate answers
``/ready`` on its admin port and then proxies a probe path to a backend; the
registry answers ``/v1/health``; a caller sidecar proxies to the service
by name. Probe requests reach the backends, so scenarios count backend
requests as differences (``counts`` before and after a run).
"""

from __future__ import annotations

import http.client
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import procs
import targets
import yaml

WORK = targets.HERE / ".work" / "mesh"
LOGS = targets.HERE / ".work" / "logs"


class StackError(Exception):
    pass


def get(port: int, path: str, host: str = "bench", timeout: float = 2.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes],
             log: Path, timeout: float = 30.0) -> None:
    """Poll ``check`` (connection errors count as not yet) until true or the deadline."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with status {proc.returncode}:\n{tail(log)}")
        try:
            if check():
                return
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise StackError(f"{what} not ready after {timeout:.0f} s ({last}); log:\n{tail(log)}")


def tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:])


class Stack:
    """The processes of one scenario, on top of a shared ``ProcGroup``."""

    def __init__(self, group: procs.ProcGroup) -> None:
        self.group = group
        self.mine: list[subprocess.Popen[bytes]] = []
        # The registry's operator token, which sidecars register with (writes need one).
        self.token = secrets.token_urlsafe(24)

    @staticmethod
    def log(name: str) -> Path:
        return LOGS / f"mesh-{name}.log"

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.log(name)
        proc = self.group.start(argv, log, env=env, cwd=cwd)
        self.mine.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in reversed(self.mine):
            self.group.stop(proc)
        self.mine.clear()

    # -- backends ------------------------------------------------------------------
    def python_backend(self, name: str, *args: str) -> int:
        """tests/support/backend.py (``--delay MS``, ``--fail STATUS``); returns its port."""
        port = targets.free_port()
        argv = [sys.executable, "-m", "tests.support.backend", "--port", str(port),
                "--name", name, *args]
        proc, log = self._start(f"backend-{name}", argv, cwd=targets.ROOT)
        wait_for(f"backend {name}", lambda: get(port, "/_ctl/count")[0] == 200, proc, log)
        return port

    def nginx_backend(self, name: str, token: str) -> int:
        """The harness's nginx backend (1 worker, fixed body carrying ``token``)."""
        target = targets.backend(WORK / name, f"hello world {token}\n")
        proc, log = self._start(name, target.argv)
        wait_for(name, lambda: token in get(target.port, targets.PATH)[1], proc, log)
        return target.port

    # -- meshgate ------------------------------------------------------------------
    def meshgate(self, name: str, config: dict[str, Any], probes: list[str],
                 expect: str = "") -> tuple[int, int, subprocess.Popen[bytes]]:
        """``meshgate run`` (1 worker) of ``config``; ready once every probe path is a 200
        (whose body holds ``expect``). Returns (port, admin port, master process)."""
        port, admin = targets.free_port(), targets.free_port()
        config = {"http": {"port": port, "hostname": "127.0.0.1"},
                  "admin": {"port": admin, "host": "127.0.0.1"}, **config}
        directory = WORK / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "gateway.config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [str(targets.meshgate_bin()), "run", str(directory), "--workers", "1"]
        env = dict(os.environ, MESHGATE_DATA_DIR=str(directory / "data"))
        proc, log = self._start(name, argv, env=env)

        def ready() -> bool:
            if get(admin, "/ready")[0] != 200:
                return False
            answers = [get(port, path) for path in probes]
            return all(s == 200 and expect in body for s, body in answers)

        wait_for(f"meshgate {name}", ready, proc, log, timeout=60)
        return port, admin, proc

    def registry(self) -> int:
        port = targets.free_port()
        argv = [str(targets.meshgate_bin()), "registry", "--port", str(port),
                "--log-level", "warning"]
        proc, log = self._start("registry", argv,
                                env=dict(os.environ, MESHGATE_REGISTRY_TOKEN=self.token))
        wait_for("registry", lambda: get(port, "/v1/health")[0] == 200, proc, log)
        return port

    def sidecar(self, service: str, app_port: int, registry_port: int,
                *args: str) -> tuple[int, int, subprocess.Popen[bytes]]:
        """``meshgate sidecar`` (1 worker); returns (inbound, outbound, process)."""
        inbound, outbound = targets.free_port(), targets.free_port()
        argv = [str(targets.meshgate_bin()), "sidecar", "--service", service,
                "--app-port", str(app_port), "--inbound-port", str(inbound),
                "--outbound-port", str(outbound),
                "--registry", f"http://127.0.0.1:{registry_port}",
                "--instance-id", f"{service}-{inbound}", "--log-level", "warning", *args]
        proc, log = self._start(f"sidecar-{service}", argv,
                                env=dict(os.environ, MESHGATE_JOIN_TOKEN=self.token))
        wait_for(f"sidecar {service}", lambda: get(inbound, "/")[0] > 0, proc, log)
        return inbound, outbound, proc


def counts(ports: list[int]) -> list[int]:
    """Requests each Python backend has seen (``/_ctl/count``)."""
    return [int(get(port, "/_ctl/count")[1]) for port in ports]


def metric(admin_port: int, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` (Prometheus text) whose labels include ``labels``."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in get(admin_port, "/metrics", timeout=10)[1].splitlines():
        if line.startswith((name + "{", name + " ")) and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total
