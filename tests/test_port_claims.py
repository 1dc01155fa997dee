"""A port another process serves is refused at start, clearly, with exit 1.

Workers share their ports with SO_REUSEPORT; without a check a second ``meshgate run``
on the same port would start and silently take part of the first one's traffic.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.gateway import Gateway, free_port, wait_until

MESHGATE = [sys.executable, "-m", "meshgate"]


def second_run(directory: Path, config: dict[str, Any], *args: str
               ) -> subprocess.CompletedProcess[str]:
    directory.mkdir(exist_ok=True)
    (directory / "gateway.config.yml").write_text(yaml.safe_dump(config))
    return subprocess.run([*MESHGATE, "run", str(directory), *args], capture_output=True,
                          text=True, timeout=30)


def test_a_second_gateway_on_the_same_port_exits_1(gateway_factory: Any,
                                                   tmp_path: Path) -> None:
    first: Gateway = gateway_factory({})
    config = {"http": {"port": first.port, "hostname": "127.0.0.1"},
              "admin": {"port": free_port(), "host": "127.0.0.1"}}
    result = second_run(tmp_path / "second", config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {first.port} is already in use" in result.stderr
    # every request still reaches the first gateway (its 404: no route)
    for _ in range(20):
        assert httpx.get(first.url + "/x", timeout=5).status_code == 404
    assert first.process is not None and first.process.poll() is None


def test_a_wildcard_bind_over_a_loopback_one_is_refused(gateway_factory: Any,
                                                        tmp_path: Path) -> None:
    first: Gateway = gateway_factory({})
    config = {"http": {"port": first.port},         # every interface
              "admin": {"port": free_port(), "host": "127.0.0.1"}}
    result = second_run(tmp_path / "second", config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {first.port}" in result.stderr


def test_a_port_held_by_another_program_is_refused(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        config = {"http": {"port": port, "hostname": "127.0.0.1"},
                  "admin": {"port": free_port(), "host": "127.0.0.1"}}
        result = second_run(tmp_path / "gw", config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port} is already in use" in result.stderr


def test_the_admin_port_in_use_is_refused(gateway_factory: Any, tmp_path: Path) -> None:
    first: Gateway = gateway_factory({})
    admin_port = first.config["admin"]["port"]
    config = {"http": {"port": free_port(), "hostname": "127.0.0.1"},
              "admin": {"port": admin_port, "host": "127.0.0.1"}}
    result = second_run(tmp_path / "second", config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"admin API cannot listen on 127.0.0.1:{admin_port}" in result.stderr


def test_a_second_sidecar_on_the_same_inbound_port_exits_1(tmp_path: Path) -> None:
    inbound = free_port()
    common = ["--app-port", str(free_port()), "--inbound-port", str(inbound),
              "--no-register"]
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen([*MESHGATE, "sidecar", "--service", "a", *common,
                              "--outbound-port", str(free_port())],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", inbound)) == 0

        wait_until(listening, timeout=15)
        second = subprocess.run([*MESHGATE, "sidecar", "--service", "b", *common,
                                 "--outbound-port", str(free_port())],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"port {inbound} is already in use" in second.stderr
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(15)


def test_the_embedded_registry_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        directory = tmp_path / "gw"
        directory.mkdir()
        (directory / "system.config.yml").write_text(yaml.safe_dump(
            {"registry": {"serve": {"host": "127.0.0.1", "port": port}}}))
        config = {"http": {"port": free_port(), "hostname": "127.0.0.1"},
                  "admin": {"port": free_port(), "host": "127.0.0.1"}}
        result = second_run(directory, config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"the registry cannot listen on 127.0.0.1:{port}" in result.stderr
