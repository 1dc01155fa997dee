"""The demo (examples/demo.py) end to end, and the example services on their own.

The demo tests run the whole mesh -- registry, four replicas with their
sidecars, the gateway -- as real processes, so they are marked slow (each
takes some 8 s). The service tests start single example services.
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_to_end(proc: subprocess.Popen[str], timeout: float) -> str:
    """Wait for proc; on timeout stop it with SIGTERM (so it stops its children), then SIGKILL."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out = proc.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
        pytest.fail(f"{proc.args!r} did not finish in {timeout}s:\n{out}")


def demo(*args: str) -> tuple[subprocess.Popen[str], int]:
    """Start examples/demo.py on free ports; (process, gateway http port)."""
    http_port = free_port()
    env = {**os.environ, "MESHGATE_ADMIN_PORT": str(free_port())}
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "demo.py"), "--http-port", str(http_port), *args],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, http_port


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demo_smoke_plays_the_scenario() -> None:
    """Run as documented: no port given, so --smoke must not need 8080 or 9876 free."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MESHGATE_HTTP_PORT", "MESHGATE_ADMIN_PORT")}
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "demo.py"), "--smoke"], cwd=ROOT,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = run_to_end(proc, timeout=60)
    assert proc.returncode == 0, out
    assert "smoke test passed" in out and "FAIL" not in out, out
    for line in ("invoices joined user 2 with the record a users replica sent",
                 "invoices-1's sidecar, Host: users: 10/10 requests succeeded",
                 "after users-1's app died: 20/20 requests succeeded, served by users-2",
                 "users-1's sidecar deregistered it",
                 "gRPC through the gateway: Hello -> {'message': 'Hello, Ada', "
                 "'servedBy': 'greeter-1'}, Count streamed 3 messages",
                 "gRPC through invoices-1's sidecar: Hello",
                 "the app's gRPC status comes back through the gateway: INVALID_ARGUMENT",
                 "the registry lists ['users-2']",
                 "429 (want 429)"):
        assert line in out, out
    ports = {int(p) for p in re.findall(r"GET http://127\.0\.0\.1:(\d+)/users/1 ", out)}
    admin = {int(p) for p in re.findall(r"GET http://127\.0\.0\.1:(\d+)/clusters", out)}
    assert len(ports) == 1 and len(admin) == 1 and not (ports | admin) & {8080, 9876}, out
    http_port = ports.pop()
    assert "ignored SIGTERM" not in out, out
    with pytest.raises(ConnectionRefusedError):     # the gateway is gone with the demo
        socket.create_connection(("127.0.0.1", http_port), timeout=5).close()


class Output:
    """The lines a process prints, collected by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demo_banner_kill_command_and_sigterm_stop_everything() -> None:
    proc, http_port = demo()
    output = Output(proc)
    try:
        wait_until(lambda: "Ctrl-C stops everything." in output.lines or proc.poll() is not None,
                   timeout=45, interval=0.1)
        text = output.text()
        assert proc.poll() is None, text
        pids = {m[1]: int(m[2]) for m in re.finditer(r"^  (\S+)\s+(\d+)  ", text, re.M)}
        assert set(pids) == {"registry", "users-1", "users-1/sidecar", "users-2",
                             "users-2/sidecar", "invoices-1", "invoices-1/sidecar",
                             "greeter-1", "greeter-1/sidecar", "gateway"}
        kill = re.search(r"^  kill (\d+)$", text, re.M)
        assert kill is not None and int(kill[1]) == pids["users-1"], text

        os.kill(pids["users-1"], signal.SIGTERM)       # what the banner tells the user to do
        wait_until(lambda: "demo: users-1 exited" in output.text(), timeout=10)
        for _ in range(6):
            status, user = get(http_port, "/users/1")
            assert status == 200 and isinstance(user, dict), user
            assert user["servedBy"] == "users-2"
        assert proc.poll() is None                     # a replica's death does not end the demo

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output.thread.join(timeout=5)
    assert proc.returncode == 0, output.text()
    assert output.lines[-1].startswith("demo: stopped"), output.text()
    wait_until(lambda: all(gone(pid) for pid in pids.values()), timeout=5)


@contextlib.contextmanager
def service(name: str, *args: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """Start examples/services/<name>.py on a free port; yields the port."""
    proc = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / "services" / f"{name}.py"), "--port", "0", *args],
        text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get(port: int, path: str) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.getheader("Content-Type") == "application/json"
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_users_service_over_one_keep_alive_connection() -> None:
    with (
        service("users") as port,
        contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=5)) as conn,
    ):
        conn.request("GET", "/users/1")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "application/json"
        assert json.loads(resp.read())["name"] == "Ada Lovelace"
        sock = conn.sock

        conn.request("GET", "/users/999")
        resp = conn.getresponse()
        assert resp.status == 404
        assert resp.getheader("Content-Type") == "application/json"
        assert json.loads(resp.read()) == {"error": "user 999 not found"}

        body = json.dumps({"name": "Dana Scully", "email": "dana@example.com"})
        conn.request("POST", "/users", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 201
        created = json.loads(resp.read())
        assert created["id"] == 4

        conn.request("GET", "/users/4")
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (200, created)
        assert conn.sock is sock  # one keep-alive connection served all four requests


def test_replica_name_shows_in_served_by_and_health() -> None:
    with service("users", "--name", "users-7") as port:
        status, user = get(port, "/users/2")
        assert status == 200 and isinstance(user, dict)
        assert user["servedBy"] == "users-7"
        assert get(port, "/health") == (200, {"status": "ok", "replica": "users-7"})
        status, users = get(port, "/users")
        assert status == 200 and isinstance(users, list)
        assert all("servedBy" not in u for u in users)   # the list is plain data


def test_invoices_service() -> None:
    with service("invoices") as port:
        status, invoice = get(port, "/invoices/1")
        assert status == 200
        assert isinstance(invoice, dict)
        assert set(invoice) == {"id", "userId", "amount", "currency", "status"}
        status, invoices = get(port, "/invoices")
        assert status == 200 and isinstance(invoices, list) and invoice in invoices
        assert get(port, "/invoices/77") == (404, {"error": "invoice 77 not found"})
        assert get(port, "/nowhere")[0] == 404
        assert get(port, "/health") == (200, {"status": "ok", "replica": "invoices"})


def test_invoices_by_user_joins_the_user_from_users_url() -> None:
    with service("users", "--name", "users-a") as users_port:
        users_url = {"USERS_URL": f"http://127.0.0.1:{users_port}", "NO_PROXY": "*",
                     "no_proxy": "*"}
        with service("invoices", env=users_url) as port:
            status, joined = get(port, "/invoices/by-user/2")
            assert status == 200 and isinstance(joined, dict)
            assert joined["user"] == {"id": 2, "name": "Grace Hopper",
                                      "email": "grace@example.com", "servedBy": "users-a"}
            assert [i["id"] for i in joined["invoices"]] == [3]
            assert get(port, "/invoices/by-user/9") == (404, {"error": "user 9 not found"})
            assert get(port, "/invoices/by-user/x") == (404, {"error": "user x not found"})
    # users is gone: invoices says so with a 502 of its own
    with service("invoices", env=users_url) as port:
        status, body = get(port, "/invoices/by-user/1")
        assert status == 502 and isinstance(body, dict)
        assert body["error"].startswith("the users service failed")


def test_invoices_calls_users_by_name_through_http_proxy() -> None:
    # The users service itself plays the proxy: it serves absolute-form targets
    # (GET http://users/users/1) by their path, so the request must arrive there.
    with service("users", "--name", "via-proxy") as users_port:
        proxy = f"http://127.0.0.1:{users_port}"
        env = {"USERS_URL": "http://users", "HTTP_PROXY": proxy, "http_proxy": proxy,
               "NO_PROXY": "", "no_proxy": ""}
        with service("invoices", env=env) as port:
            status, joined = get(port, "/invoices/by-user/1")
        assert status == 200 and isinstance(joined, dict)
        assert joined["user"]["servedBy"] == "via-proxy"
        assert len(joined["invoices"]) == 2
