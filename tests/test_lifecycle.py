"""Process lifecycle: worker processes, graceful drain, worker restart, hot reload.

Which worker holds a connection is read from /proc (the server side of each
loopback connection is a socket inode that exactly one worker has open), so
"both workers serve" is observed, not inferred.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import MESHGATE, Gateway, proxy_config, wait_until


# -- helpers -------------------------------------------------------------------
def gauge(gw: Gateway, name: str) -> float:
    for family in text_string_to_metric_families(gw.metrics()):
        if family.name == name:
            return float(family.samples[0].value)
    raise AssertionError(f"{name} not in /metrics")


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _tcp_table(port: int) -> list[tuple[int, int, int]]:
    """(state, remote port, inode) of each IPv4 socket whose local port is ``port``."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if int(local.split(":")[1], 16) == port:
            rows.append((int(state, 16), int(remote.split(":")[1], 16), int(inode)))
    return rows


TCP_ESTABLISHED, TCP_LISTEN = 0x01, 0x0A


def connection_owners(port: int, client_ports: list[int], pids: list[int]) -> dict[int, int]:
    """Client port -> pid of the worker holding the server side of that connection."""
    by_remote = {remote: inode for state, remote, inode in _tcp_table(port)
                 if state == TCP_ESTABLISHED}
    inodes = {pid: _socket_inodes(pid) for pid in pids}
    owners = {}
    for client_port in client_ports:
        inode = by_remote.get(client_port)
        owners[client_port] = next((pid for pid, held in inodes.items() if inode in held), 0)
    return owners


def listeners(port: int, pids: list[int]) -> dict[int, int]:
    """pid -> number of listening sockets on ``port`` it holds."""
    listening = {inode for state, _, inode in _tcp_table(port) if state == TCP_LISTEN}
    return {pid: len(_socket_inodes(pid) & listening) for pid in pids}


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


class Background:
    """One HTTP request on its own connection, in a thread."""

    def __init__(self, port: int, path: str) -> None:
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(port, path))
        self.thread.start()

    def _run(self, port: int, path: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            self.result = {"status": response.status, "body": response.read(),
                           "connection": response.getheader("connection")}
        except Exception as exc:
            self.result = {"error": repr(exc)}
        finally:
            conn.close()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self, timeout: float = 20) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "request did not finish"
        return self.result


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def fresh_get(gw: Gateway, path: str) -> tuple[int, bytes]:
    r = httpx.get(gw.url + path, timeout=10)
    return r.status_code, r.content


# -- worker processes ------------------------------------------------------------
def test_two_workers_share_the_port_and_both_serve(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url), workers=2)
    master, *workers = gw.pids()
    assert len(workers) == 2
    for pid in workers:
        assert b"meshgate.server.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    # each worker has its own listening socket on the one port; the master none
    assert listeners(gw.port, [master, *workers]) == {master: 0, workers[0]: 1, workers[1]: 1}

    conns = [http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10) for _ in range(24)]
    try:
        for conn in conns:
            assert get(conn, "/x") == (200, b"ok backend\n")
        client_ports = [conn.sock.getsockname()[1] for conn in conns]
        owners = connection_owners(gw.port, client_ports, workers)
    finally:
        for conn in conns:
            conn.close()
    assert 0 not in owners.values(), owners
    assert set(owners.values()) == set(workers), "one worker took every connection"
    assert gauge(gw, "meshgate_workers") == 2


# -- drain -----------------------------------------------------------------------
def test_sigterm_drains_in_flight_request_then_exits_0(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url))
    assert gauge(gw, "meshgate_upstream_connections") == 0
    slow = Background(gw.port, "/slow/1500")
    wait_until(lambda: gauge(gw, "meshgate_upstream_connections") >= 1, timeout=5)
    assert gw.process is not None
    gw.process.send_signal(signal.SIGTERM)

    wait_until(lambda: refused(gw.port), timeout=5)
    assert not slow.done, "the listener closed only after the slow request ended"
    # while draining, readiness says so (load balancers stop sending)
    assert httpx.get(gw.admin_url + "/ready", timeout=5).status_code == 503

    result = slow.wait()
    assert result.get("status") == 200, result
    assert json.loads(result["body"])["path"] == "/slow/1500"
    assert result["connection"] == "close"
    assert gw.process.wait(10) == 0
    assert refused(gw.port)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_with_no_traffic_exits_0_quickly(backend, gateway_factory, sig) -> None:
    gw = gateway_factory(proxy_config(backend.url), workers=2)
    assert fresh_get(gw, "/x") == (200, b"ok backend\n")
    pids = gw.pids()
    started = time.monotonic()
    assert gw.stop(sig) == 0
    assert time.monotonic() - started < 3
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=5)
    assert refused(gw.port)


def test_sigterm_while_workers_start_exits_0(backend, tmp_path) -> None:
    # The master listens on the admin port before its workers are ready; a
    # SIGTERM in that window must still drain and exit 0, not hang.
    gw = Gateway(tmp_path, proxy_config(backend.url), workers=2, start=False)
    gw.process = subprocess.Popen(
        [*MESHGATE, "run", str(tmp_path), "--workers", "2"], env=gw.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        admin_port = int(gw.config["admin"]["port"])
        wait_until(lambda: not refused(admin_port), timeout=15, interval=0.005)
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(10) == 0
    finally:
        gw.stop()


def test_idle_keep_alive_connection_does_not_hold_up_shutdown(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        assert get(conn, "/x") == (200, b"ok backend\n")
        started = time.monotonic()
        assert gw.stop() == 0
        assert time.monotonic() - started < 3
        assert conn.sock is not None and conn.sock.recv(1) == b""   # closed by the server
    finally:
        conn.close()


# -- worker restart ----------------------------------------------------------------
def test_killed_worker_is_replaced_and_serving_continues(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url), workers=2)
    master, victim, survivor = gw.pids()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in gw.pids(), timeout=5)
    # the survivor keeps the port served while the replacement starts
    for _ in range(10):
        assert fresh_get(gw, "/x") == (200, b"ok backend\n")

    def replaced() -> list[int] | None:
        pids = gw.pids()
        return pids if len(pids) == 3 and gw.ready() else None

    pids = wait_until(replaced, timeout=10)
    assert pids[0] == master
    assert survivor in pids and victim not in pids
    replacement = next(p for p in pids[1:] if p != survivor)
    assert listeners(gw.port, [replacement]) == {replacement: 1}
    for _ in range(10):
        assert fresh_get(gw, "/x") == (200, b"ok backend\n")
    assert gauge(gw, "meshgate_workers") == 2
    assert f"exited with -{int(signal.SIGKILL)}" in gw.log()


def test_only_worker_killed_is_replaced(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url))
    master, worker = gw.pids()
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: worker not in gw.pids(), timeout=5)

    def replaced() -> list[int] | None:
        pids = gw.pids()
        return pids if len(pids) == 2 and gw.ready() else None

    pids = wait_until(replaced, timeout=10)
    assert pids[0] == master and pids[1] != worker
    assert fresh_get(gw, "/x") == (200, b"ok backend\n")


# -- hot reload --------------------------------------------------------------------
def two_route_config(upstream: str) -> dict[str, Any]:
    config = proxy_config(upstream, endpoint={"host": "*", "paths": ["/name", "/slow/*"]})
    return config


def with_new_route(config: dict[str, Any], upstream: str) -> dict[str, Any]:
    """``config`` with its upstream changed and a new apiEndpoint for /echo."""
    new = json.loads(json.dumps(config))
    new["serviceEndpoints"]["backend"] = {"url": upstream}
    new["apiEndpoints"]["fresh"] = {"host": "*", "paths": ["/echo"]}
    new["pipelines"]["main"]["apiEndpoints"] = ["api", "fresh"]
    return new


def test_config_edit_applies_without_restart_on_the_same_connection(
        backend_factory, gateway_factory) -> None:
    a, b = backend_factory("a"), backend_factory("b")
    config = two_route_config(a.url)
    gw = gateway_factory(config)
    pids = gw.pids()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        assert get(conn, "/name") == (200, b"a")
        assert get(conn, "/echo")[0] == 404
        sock = conn.sock
        local = sock.getsockname()

        gw.write(with_new_route(config, b.url))
        wait_until(lambda: fresh_get(gw, "/name") == (200, b"b"), timeout=5)

        assert get(conn, "/name") == (200, b"b")
        status, body = get(conn, "/echo")
        assert status == 200 and json.loads(body)["name"] == "b"
        assert conn.sock is sock and sock.getsockname() == local, "the connection was replaced"
    finally:
        conn.close()
    assert gw.pids() == pids, "reload restarted processes"
    assert gauge(gw, "meshgate_config_reloads") >= 1
    assert "config reloaded" in gw.log()


def test_invalid_edit_is_logged_and_the_old_config_keeps_serving(
        backend_factory, gateway_factory) -> None:
    a, b = backend_factory("a"), backend_factory("b")
    config = two_route_config(a.url)
    gw = gateway_factory(config)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        assert get(conn, "/name") == (200, b"a")
        sock = conn.sock

        bad = json.loads(json.dumps(config))
        bad["serviceEndpoints"]["backend"] = {"url": b.url}       # would apply if valid
        bad["pipelines"]["main"]["policies"].insert(0, {"no-such-policy": None})
        gw.write(bad)
        path = gw.directory / "gateway.config.yml"
        line = next(n for n, text in enumerate(path.read_text().splitlines(), 1)
                    if "no-such-policy" in text)
        wait_until(lambda: "config change rejected" in gw.log(), timeout=5)
        rejection = next(ln for ln in gw.log().splitlines() if "config change rejected" in ln)
        assert f"{path}:{line}:" in rejection
        assert "pipelines.main.policies" in rejection
        assert "Traceback" not in gw.log()

        assert get(conn, "/name") == (200, b"a")
        assert fresh_get(gw, "/name") == (200, b"a")
        assert conn.sock is sock

        # the watcher survived the bad edit: fixing the file applies it
        gw.write(with_new_route(config, b.url))
        wait_until(lambda: fresh_get(gw, "/name") == (200, b"b"), timeout=5)
        assert get(conn, "/name") == (200, b"b")
        assert conn.sock is sock
    finally:
        conn.close()


def test_worker_restarted_while_config_file_is_invalid_keeps_serving(
        backend_factory, gateway_factory) -> None:
    # The running config is the last valid one; a worker that replaces a dead
    # one must serve it too, not fail on the broken file on disk.
    a, b = backend_factory("a"), backend_factory("b")
    config = two_route_config(a.url)
    gw = gateway_factory(config)
    broken = json.loads(json.dumps(config))
    broken["serviceEndpoints"]["backend"]["url"] = "not a url"
    gw.write(broken)
    wait_until(lambda: "config change rejected" in gw.log(), timeout=5)
    master, worker = gw.pids()
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: worker not in gw.pids(), timeout=5)
    try:
        wait_until(lambda: len(gw.pids()) == 2 and gw.ready(), timeout=10)
    except TimeoutError:
        raise AssertionError(f"no worker serves after the restart:\n{gw.log()}") from None
    assert gw.pids()[0] == master
    assert fresh_get(gw, "/name") == (200, b"a")
    # and the replacement takes the next valid edit like any worker
    gw.write(with_new_route(config, b.url))
    wait_until(lambda: fresh_get(gw, "/name") == (200, b"b"), timeout=5)


def test_request_in_flight_during_reload_completes(backend_factory, gateway_factory) -> None:
    a, b = backend_factory("a"), backend_factory("b")
    config = two_route_config(a.url)
    gw = gateway_factory(config)
    assert gauge(gw, "meshgate_upstream_connections") == 0
    slow = Background(gw.port, "/slow/1500")
    wait_until(lambda: gauge(gw, "meshgate_upstream_connections") >= 1, timeout=5)

    gw.write(with_new_route(config, b.url))
    wait_until(lambda: fresh_get(gw, "/name") == (200, b"b"), timeout=5)
    assert not slow.done, "the reload was not observed while the request was in flight"

    result = slow.wait()
    assert result.get("status") == 200, result
    body = json.loads(result["body"])
    assert body["name"] == "a" and body["path"] == "/slow/1500"
    assert result["connection"] != "close"
