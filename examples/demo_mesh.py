"""Start and stop the demo's processes: registry, replicas with sidecars, gateway.

Theory of operation
-------------------
Each process is a ``Child``: started in its own session (so the terminal's
Ctrl-C reaches only the demo, which then stops every process group itself),
its output echoed line by line behind its name (but for the routine lines of
heartbeats and health checks), its port read from its "listening on
http://host:port" line when it picks one itself.

``start_mesh`` starts, in this order: the registry (port 0; its operator
token in its data dir, a join token per service made with ``meshgate registry
token create`` and handed to that service's sidecars); the apps (port
0, with ``HTTP_PROXY`` = the outbound port chosen for their sidecar, so they
call other services by name through it); a sidecar per app plus the gateway,
all at once. It returns when the gateway answers /ready, the registry lists
every replica, and the gateway's health checks pass for all of them -- before
that, the first requests of a smoke run could meet a half-built mesh.

``stop_all`` stops the gateway, sidecars and apps together (SIGTERM to each
process group, SIGKILL after 5 s), then the registry, so the sidecars can
still deregister while they stop.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "examples" / "services"
SIDECAR_CONFIG = "examples/demo/sidecar"     # outbound retries / outlier detection
REPLICAS = (("users-1", "users"), ("users-2", "users"), ("invoices-1", "invoices"),
            ("greeter-1", "greeter"))
APP_PROTOCOL = {"greeter": "h2c"}    # gRPC apps: their sidecar speaks h2c to them
SIDECAR_TTL_MS = 3000     # a sidecar killed with SIGKILL turns critical after this
LISTENING = re.compile(r"listening on http://\S+:(\d+)")
ROUTINE = re.compile(r'httpx: HTTP Request: |"GET /health ')  # heartbeats, health checks
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
LOOPBACK = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


_say_lock = threading.Lock()


def say(line: str) -> None:
    """Print one whole line: the children's echo threads print too."""
    with _say_lock:
        print(line, flush=True)


class DemoError(Exception):
    pass


class Child:
    """A subprocess whose output is echoed line by line, prefixed with its name."""

    def __init__(self, name: str, cmd: list[str], env: Mapping[str, str] | None = None, *,
                 essential: bool = True, last: bool = False) -> None:
        self.name = name
        self.essential = essential  # its exit ends the demo (a replica's does not)
        self.last = last            # stopped after all the others (the registry)
        self.port: int | None = None  # from the "listening on" line
        self.tail: deque[str] = deque(maxlen=50)
        self.listening = threading.Event()  # set on the "listening on" line, or at exit
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            text=True, bufsize=1, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip()
            self.tail.append(line)
            if self.port is None and (match := LISTENING.search(line)):
                self.port = int(match.group(1))
                self.listening.set()
            if not ROUTINE.search(line):  # kept in the tail, not echoed
                say(f"{self.name:>18} | {line}")
        self.listening.set()

    def wait_listening(self, timeout: float = 15) -> int:
        if not self.listening.wait(timeout) or self.port is None:
            raise DemoError(f"{self.name} did not start:\n{self.output()}")
        return self.port

    def alive(self) -> bool:
        if self.proc.poll() is None:
            return True
        if self.essential:
            raise DemoError(f"{self.name} exited with code {self.proc.returncode}:\n"
                            f"{self.output()}")
        return False

    def output(self) -> str:
        self.reader.join(timeout=2)  # let the last lines of a dead process arrive
        return "\n".join(self.tail) or "(no output)"

    def kill(self, sig: int, timeout: float = 10) -> None:
        """Send sig to this process only (as `kill` would) and wait for it to exit."""
        self.essential = False
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DemoError(f"{self.name} still runs {timeout}s after signal {sig}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # the child and anything it started
                os.killpg(self.proc.pid, signal.SIGTERM)

    def reap(self, timeout: float = 5) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"demo: {self.name} ignored SIGTERM for {timeout}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def stop_all(children: list[Child]) -> None:
    for wave in ([c for c in children if not c.last], [c for c in children if c.last]):
        for child in reversed(wave):  # the gateway first
            child.stop()
        for child in reversed(wave):
            child.reap()


def fetch(url: str, timeout: float = 5, headers: Mapping[str, str] | None = None,
          body: dict[str, object] | None = None) -> tuple[int, str]:
    """GET (or POST a JSON body to) url; (status, body), or (0, reason) without an answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with NO_PROXY.open(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as err:
        return 0, str(err)


def fetch_json(url: str) -> object:
    status, body = fetch(url, timeout=2)
    try:
        return json.loads(body) if status == 200 else None
    except ValueError:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, ready: Callable[[], bool], children: list[Child],
             timeout: float = 30) -> None:
    """Poll ready() until true; a child exiting or the deadline passing is a DemoError."""
    deadline = time.monotonic() + timeout
    while not ready():
        for child in children:
            child.alive()
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Replica:
    name: str          # users-1: the app's --name, the sidecar's --instance-id
    service: str       # users: the name registered in the registry
    app: Child
    sidecar: Child
    inbound: int       # the sidecar's ports
    outbound: int


@dataclass
class Mesh:
    children: list[Child]
    registry: Child
    registry_port: int
    replicas: dict[str, Replica]
    gateway: Child
    http_port: int
    admin_port: int

    def layout(self) -> list[tuple[Child, str]]:
        """(process, what it listens on), in start order, for the banner."""
        rows = [(self.registry, f"http://127.0.0.1:{self.registry_port}  (registry API)")]
        for r in self.replicas.values():
            rows.append((r.app, f"127.0.0.1:{r.app.port}  (HTTP_PROXY=127.0.0.1:{r.outbound})"))
            rows.append((r.sidecar, f"in 127.0.0.1:{r.inbound} (registered as "
                                    f"{r.service}/{r.name}), out 127.0.0.1:{r.outbound}"))
        rows.append((self.gateway, f"http :{self.http_port}, admin :{self.admin_port}"))
        return rows

    def watch(self) -> None:
        """Run until an essential child exits; note each replica process that exits."""
        noted: set[str] = set()
        while True:
            for child in self.children:
                if not child.alive() and child.name not in noted:
                    noted.add(child.name)
                    say(f"demo: {child.name} exited with code {child.proc.returncode}; "
                        "the mesh routes around it")
            time.sleep(0.5)


def start_mesh(children: list[Child], data_dir: Path, http_port: int, admin_port: int,
               gateway_env: Mapping[str, str]) -> Mesh:
    """Start every process (appended to children as they start); return once all serve."""
    meshgate = str(Path(sys.executable).parent / "meshgate")  # the venv's console script
    if not Path(meshgate).exists():
        raise DemoError(f"{meshgate} not found; run `make install` first")
    registry = Child("registry", [meshgate, "registry", "--port", "0",
                                  "--data-dir", str(data_dir / "registry")], LOOPBACK, last=True)
    children.append(registry)
    registry_url = f"http://127.0.0.1:{registry.wait_listening()}"
    tokens = {service: join_token(meshgate, data_dir, service) for _, service in REPLICAS}

    apps: dict[str, tuple[Child, int, int]] = {}
    for name, service in REPLICAS:
        inbound, outbound = free_port(), free_port()
        proxy = f"http://127.0.0.1:{outbound}"
        app = Child(name, [sys.executable, "-u", str(SERVICES / f"{service}.py"),
                           "--port", "0", "--name", name],
                    {"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""},
                    essential=False)
        children.append(app)
        apps[name] = (app, inbound, outbound)

    replicas: dict[str, Replica] = {}
    for name, service in REPLICAS:
        app, inbound, outbound = apps[name]
        sidecar = Child(f"{name}/sidecar", [
            meshgate, "sidecar", "--service", service, "--instance-id", name,
            "--app-port", str(app.wait_listening()), "--inbound-port", str(inbound),
            "--outbound-port", str(outbound), "--registry", registry_url,
            "--token-file", str(tokens[service]), "--ttl", str(SIDECAR_TTL_MS),
            "--app-protocol", APP_PROTOCOL.get(service, "http1"),
            "--config", SIDECAR_CONFIG], LOOPBACK, essential=False)
        children.append(sidecar)
        replicas[name] = Replica(name, service, app, sidecar, inbound, outbound)

    gateway = Child("gateway", [meshgate, "run", "examples/demo"], {
        **LOOPBACK, **gateway_env, "REGISTRY_URL": registry_url,
        "MESHGATE_HTTP_PORT": str(http_port), "MESHGATE_ADMIN_PORT": str(admin_port),
        "MESHGATE_DATA_DIR": str(data_dir)})
    children.append(gateway)
    mesh = Mesh(children, registry, int(registry.port or 0), replicas, gateway, http_port,
                admin_port)
    wait_for("the gateway's /ready", lambda: fetch(
        f"http://127.0.0.1:{admin_port}/ready", timeout=1)[0] == 200, [gateway])
    wait_for("every replica in the registry", lambda: registered(registry_url) == {
        (r.service, r.name) for r in replicas.values()}, children)
    wait_for("the gateway's health checks", lambda: healthy(admin_port) == {
        (r.service, r.inbound) for r in replicas.values()}, children)
    return mesh


def join_token(meshgate: str, data_dir: Path, service: str) -> Path:
    """A registry join token for ``service`` (in the registry's data dir), in a 0600 file."""
    made = subprocess.run([meshgate, "registry", "token", "create", "--service", service,
                           "--data-dir", str(data_dir / "registry")],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        raise DemoError(f"cannot make a join token for {service}: {made.stderr.strip()}")
    path = data_dir / f"{service}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(made.stdout)
    return path


def registered(registry_url: str) -> set[tuple[str, str]]:
    """(service, instance id) of every passing instance of the demo's services."""
    found = set()
    for service in {service for _, service in REPLICAS}:
        body = fetch_json(f"{registry_url}/v1/services/{service}")
        for instance in body.get("instances", []) if isinstance(body, dict) else []:
            if instance.get("status", "passing") == "passing":
                found.add((service, instance.get("id")))
    return found


def healthy(admin_port: int) -> set[tuple[str, int]]:
    """(serviceEndpoint, port) of every endpoint all the gateway's workers deem healthy."""
    body = fetch_json(f"http://127.0.0.1:{admin_port}/clusters")
    found: set[tuple[str, int]] = set()
    for name, cluster in body.items() if isinstance(body, dict) else []:
        workers = cluster.get("workers") if isinstance(cluster, dict) else None
        views = [{e.get("url"): e.get("healthy") and not e.get("ejected") for e in endpoints}
                 for endpoints in workers or []]
        for url in set.intersection(*[{u for u, ok in v.items() if ok} for v in views] or [set()]):
            found.add((name, int(str(url).rsplit(":", 1)[1])))
    return found
