"""The registry's control plane is authenticated: tokens, service scopes, limits.

Every test talks to a real ``meshgate registry`` process over loopback; the
token commands run as ``meshgate registry token ...`` processes on the same
data dir; sidecars and gateways are real processes too.
"""

from __future__ import annotations

import hashlib
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import MESHGATE, stop_process, wait_until
from tests.support.registry import RegistryProcess, bearer

INSTANCE = {"address": "127.0.0.1", "port": 9000}


def put(registry: RegistryProcess, service: str, ident: str, token: str | None,
        **body: Any) -> httpx.Response:
    return httpx.put(f"{registry.url}/v1/services/{service}/instances/{ident}",
                     json={**INSTANCE, **body}, timeout=5,
                     headers=bearer(token) if token else {})


def token_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHGATE, "registry", "token", *args], capture_output=True,
                          text=True, timeout=30, check=False)


def create_token(data_dir: Path, service: str) -> str:
    made = token_cli("create", "--service", service, "--data-dir", str(data_dir))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path, "--data-dir", str(tmp_path / "data"),
                           "--max-instances-per-service", "4",
                           "--max-instances-per-token", "2")
    yield proc
    proc.stop()


def test_writes_without_a_valid_token_are_401(registry: RegistryProcess) -> None:
    base = f"{registry.url}/v1/services/users/instances/u1"
    assert registry.put("users", "u1").status_code == 200
    for token in (None, "nonsense", "mgt.0123456789ab." + "A" * 43):
        headers = bearer(token) if token else {}
        assert httpx.put(base, json=INSTANCE, headers=headers).status_code == 401
        assert httpx.put(base + "/heartbeat", headers=headers).status_code == 401
        refused = httpx.delete(base, headers=headers)
        assert refused.status_code == 401 and "token" in refused.json()["detail"]
        assert httpx.post(f"{registry.url}/v1/tokens", json={"operator": True},
                          headers=headers).status_code == 401
    # Nothing changed, and reads stay open by default.
    [kept] = httpx.get(f"{registry.url}/v1/services/users").json()["instances"]
    assert kept["registeredBy"] == "operator" and kept["port"] == 8080


def test_a_join_token_writes_only_its_service(registry: RegistryProcess,
                                              tmp_path: Path) -> None:
    users = create_token(tmp_path / "data", "users")    # while the registry runs
    token_id = users.split(".")[1]
    mine = put(registry, "users", "u1", users)
    assert mine.status_code == 200 and mine.json()["registeredBy"] == token_id
    assert registry.put("invoices", "i1").status_code == 200     # the operator's
    assert registry.put("users", "u-op").status_code == 200
    for response in (put(registry, "invoices", "evil-1", users),
                     httpx.put(f"{registry.url}/v1/services/invoices/instances/i1/heartbeat",
                               headers=bearer(users)),
                     httpx.delete(f"{registry.url}/v1/services/invoices/instances/i1",
                                  headers=bearer(users)),
                     httpx.get(f"{registry.url}/v1/tokens", headers=bearer(users)),
                     httpx.post(f"{registry.url}/v1/tokens", json={"service": "invoices"},
                                headers=bearer(users))):
        assert response.status_code == 403, response.text
    assert [i["id"] for i in registry.instances("invoices")] == ["i1"]
    # Any instance of its own service, whoever registered it.
    assert httpx.put(f"{registry.url}/v1/services/users/instances/u1/heartbeat",
                     headers=bearer(users)).status_code == 200
    assert httpx.delete(f"{registry.url}/v1/services/users/instances/u-op",
                        headers=bearer(users)).status_code == 200
    # The operator does everything, tokens included.
    assert registry.delete("users", "u1").status_code == 200
    listed = httpx.get(f"{registry.url}/v1/tokens", headers=registry.headers).json()
    assert [(t["id"], t["service"]) for t in listed["tokens"]] == [(token_id, "users")]
    revoked = token_cli("revoke", token_id, "--data-dir", str(tmp_path / "data"))
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: put(registry, "users", "u2", users).status_code == 401, timeout=3)


def test_tokens_are_hashed_at_rest(registry: RegistryProcess, tmp_path: Path) -> None:
    data = tmp_path / "data"
    token = create_token(data, "users")
    made = httpx.post(f"{registry.url}/v1/tokens", json={"service": "invoices"},
                      headers=registry.headers)
    assert made.status_code == 201
    api_token = made.json()["token"]
    assert put(registry, "users", "u1", token).status_code == 200
    assert put(registry, "invoices", "i1", api_token).status_code == 200
    registry.stop()             # the last snapshot is written
    files = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    assert "tokens.json" in files and "registry.json" in files
    for secret in (token, api_token):
        part = secret.split(".")[2]
        assert all(part.encode() not in body for body in files.values())
        assert hashlib.sha256(part.encode()).hexdigest().encode() in files["tokens.json"]
    assert stat.S_IMODE((data / "tokens.json").stat().st_mode) == 0o600
    listed = token_cli("list", "--data-dir", str(data))
    assert "users" in listed.stdout and "invoices" in listed.stdout


def test_a_fresh_registry_makes_a_private_operator_token(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    log = tmp_path / "fresh.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*MESHGATE, "registry", "--port", "0", "--data-dir", str(data)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "listening on" in log.read_text(), timeout=15)
        token_file = data / "operator.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert str(token_file) in log.read_text() and token not in log.read_text()
        url = log.read_text().split("listening on ")[1].split()[0]
        assert httpx.put(f"{url}/v1/services/users/instances/u1", json=INSTANCE,
                         headers=bearer(token)).status_code == 200
        assert httpx.put(f"{url}/v1/services/users/instances/u2",
                         json=INSTANCE).status_code == 401
    finally:
        assert stop_process(proc, signal.SIGTERM) == 0


def test_limits_on_size_and_count(registry: RegistryProcess, tmp_path: Path) -> None:
    big = registry.put("sized", "s1", metadata={"blob": "x" * 4100})
    assert big.status_code == 413 and "4096" in big.json()["detail"]
    huge = httpx.put(f"{registry.url}/v1/services/sized/instances/s1",
                     content=b'{"address": "' + b"a" * 70_000 + b'"}',
                     headers={**registry.headers, "content-type": "application/json"})
    assert huge.status_code == 413
    for address in ("http://evil/", "a b", "1.2.3", "x" * 300):
        assert registry.put("sized", "s1", address=address).status_code == 422
    assert registry.put("sized", "s1", metadata={"k": "v" * 4000}).status_code == 200
    # Per service (4 here): the fifth new instance is refused, a re-registration is not.
    for i in range(2, 5):
        assert registry.put("sized", f"s{i}").status_code == 200
    full = registry.put("sized", "s5")
    assert full.status_code == 429 and "limit per service" in full.json()["detail"]
    assert registry.put("sized", "s4", port=9100).status_code == 200
    # Per join token (2 here).
    token = create_token(tmp_path / "data", "counted")
    assert [put(registry, "counted", f"c{i}", token).status_code for i in range(3)] == [
        200, 200, 429]
    assert registry.delete("counted", "c0").status_code == 200
    assert put(registry, "counted", "c2", token).status_code == 200
    assert [i["id"] for i in registry.instances("sized")] == ["s1", "s2", "s3", "s4"]


def _sidecar(tmp_path: Path, registry: RegistryProcess, service: str, app_port: int,
             *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"sidecar-{service}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*MESHGATE, "sidecar", "--service", service, "--app-port", str(app_port),
             "--inbound-port", "0", "--outbound-port", "0", "--registry", registry.url,
             "--instance-id", f"{service}-1", *args],
            stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def test_sidecar_with_a_join_token_file_serves_traffic_on_the_port_it_bound(
        tmp_path: Path, backend_factory: Any, gateway_factory: Any) -> None:
    registry = RegistryProcess(tmp_path, "--data-dir", str(tmp_path / "data"),
                               "--require-token-for-reads")
    token_file = tmp_path / "users.token"
    token_file.write_text(create_token(tmp_path / "data", "users") + "\n")
    app = backend_factory("users-app")
    sidecar, log = _sidecar(tmp_path, registry, "users", app.port,
                            "--token-file", str(token_file))
    try:
        assert httpx.get(f"{registry.url}/v1/services/users").status_code == 401
        [instance] = wait_until(lambda: registry.instances("users"), timeout=15)
        # --inbound-port 0: the port registered is the one the sidecar listens on.
        assert instance["port"] != 0
        assert instance["registeredBy"] == token_file.read_text().split(".")[1]
        direct = httpx.get(f"http://127.0.0.1:{instance['port']}/name", timeout=5)
        assert direct.text == "users-app"
        # A gateway discovering from the registry (reads need a token: tokenFile).
        gw = gateway_factory({
            "apiEndpoints": {"api": {"host": "*", "paths": ["/*"]}},
            "serviceEndpoints": {"users": {"discovery": {
                "type": "registry", "url": registry.url, "tokenFile": str(token_file)}}},
            "policies": ["proxy"],
            "pipelines": {"main": {"apiEndpoints": ["api"], "policies": [
                {"proxy": [{"action": {"serviceEndpoint": "users"}}]}]}}})
        wait_until(lambda: httpx.get(gw.url + "/name", timeout=5).text == "users-app",
                   timeout=10)
        assert "app is up: registered users/users-1" in log.read_text()
    finally:
        stop_process(sidecar)
        registry.stop()


def test_sidecar_refused_by_the_registry_says_so_once(tmp_path: Path,
                                                       backend_factory: Any) -> None:
    registry = RegistryProcess(tmp_path, "--data-dir", str(tmp_path / "data"),
                               "--log-level", "debug")
    wrong = tmp_path / "invoices.token"
    wrong.write_text(create_token(tmp_path / "data", "invoices"))
    app = backend_factory("users-app")
    sidecar, log = _sidecar(tmp_path, registry, "users", app.port, "--token-file", str(wrong),
                            "--ttl", "300")
    try:
        # Retries every 0.1 s (a third of the ttl): the registry sees many, the log one.
        wait_until(lambda: registry.log().count("403 PUT /v1/services/users/") >= 5,
                   timeout=15)
        text = log.read_text()
        assert text.count("refused") == 1, text
        assert "403" in text and "not registered yet" in text
        assert "app is up: registered" not in text
        assert registry.instances("users") == []
    finally:
        stop_process(sidecar)
        registry.stop()
