"""The demo (examples/demo.py) end to end, and the example services on their own."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


@pytest.mark.timeout(90)
def test_demo_smoke() -> None:
    env = {**os.environ, "MESHGATE_ADMIN_PORT": str(free_port())}
    cmd = [sys.executable, str(EXAMPLES / "demo.py"), "--smoke", "--http-port", str(free_port())]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out = run_to_end(proc, timeout=60)
    assert proc.returncode == 0, out
    assert "smoke test passed" in out


@contextlib.contextmanager
def service(name: str) -> Iterator[int]:
    """Start examples/services/<name>.py on a free port; yields the port."""
    proc = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / "services" / f"{name}.py"), "--port", "0"],
        text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
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
