"""Control surfaces refuse the browser: the Admin API, the registry and a sidecar's admin.

A page the operator opens can send "simple" cross-site writes (text/plain, forms) to
localhost, and a DNS-rebound name can reach it as if same-origin. Each test talks to a
real ``meshgate run`` / ``meshgate registry`` / ``meshgate sidecar`` process over
loopback and checks both the answer and that nothing was written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, free_port, proxy_config, stop_process, wait_until
from tests.support.registry import RegistryProcess

MESHGATE = [sys.executable, "-m", "meshgate"]
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = proxy_config("http://127.0.0.1:9")
    config["admin"] = {"port": free_port(), "host": "127.0.0.1", "hosts": ["admin.internal"]}
    gateway = Gateway(tmp_path_factory.mktemp("guard"), config)
    yield gateway
    gateway.stop()


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.admin_url + path, timeout=10, **kwargs)


def make_user(gw: Gateway) -> str:
    username = name("u")
    made = admin(gw, "POST", "/users", json={"username": username, "firstname": "A",
                                             "lastname": "B"})
    assert made.status_code == 200, made.text
    return username


def credentials(gw: Gateway, username: str) -> list[Any]:
    answer = admin(gw, "GET", f"/credentials/{username}")
    assert answer.status_code == 200, answer.text
    return list(answer.json().get("credentials", []))


def key_body(username: str) -> bytes:
    return json.dumps({"consumerId": username, "type": "key-auth", "credential": {}}).encode()


# -- the Admin API ----------------------------------------------------------------------
def test_text_plain_write_is_415_and_creates_nothing(gw: Gateway) -> None:
    username = make_user(gw)
    answer = admin(gw, "POST", "/credentials", content=key_body(username),
                   headers={"content-type": "text/plain"})
    assert answer.status_code == 415, answer.text
    assert "application/json" in answer.json()["error"]
    for form in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert admin(gw, "POST", "/credentials", content=key_body(username),
                     headers={"content-type": form}).status_code == 415
    # a body with no Content-Type at all (a Blob without a type)
    assert admin(gw, "POST", "/credentials", content=key_body(username)).status_code == 415
    assert credentials(gw, username) == []


def test_the_cross_site_key_creation_is_refused(gw: Gateway) -> None:
    """The page's request: text/plain, a JSON body, the page's Origin."""
    username = make_user(gw)
    answer = admin(gw, "POST", "/credentials", content=key_body(username),
                   headers={"content-type": "text/plain", "origin": EVIL})
    assert answer.status_code == 403, answer.text
    assert credentials(gw, username) == []


@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1:1",
                                    "http://localhost.evil.example"])
def test_a_foreign_origin_cannot_write(gw: Gateway, origin: str) -> None:
    username = name("o")
    answer = admin(gw, "POST", "/users", headers={"origin": origin},
                   json={"username": username, "firstname": "A", "lastname": "B"})
    assert answer.status_code == 403, answer.text
    assert admin(gw, "GET", f"/users/{username}").status_code == 404


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_sec_fetch_site_other_than_same_origin_cannot_write(gw: Gateway, site: str) -> None:
    username = name("s")
    answer = admin(gw, "POST", "/users", headers={"sec-fetch-site": site},
                   json={"username": username, "firstname": "A", "lastname": "B"})
    assert answer.status_code == 403, answer.text
    assert admin(gw, "GET", f"/users/{username}").status_code == 404


def test_same_origin_writes_pass(gw: Gateway) -> None:
    """The API's own /docs page (same origin) and clients without Origin keep working."""
    port = gw.config["admin"]["port"]
    username = name("same")
    answer = admin(gw, "POST", "/users", json={"username": username, "firstname": "A",
                                               "lastname": "B"},
                   headers={"origin": f"http://127.0.0.1:{port}",
                            "sec-fetch-site": "same-origin"})
    assert answer.status_code == 200, answer.text
    assert admin(gw, "DELETE", f"/users/{username}").status_code == 204   # no body, no type


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_rebound_host_is_421(gw: Gateway, method: str) -> None:
    username = name("h")
    body = {"username": username, "firstname": "A", "lastname": "B"}
    answer = admin(gw, method, "/users", headers={"host": "evil.example"},
                   **({"json": body} if method == "POST" else {}))
    assert answer.status_code == 421, answer.text
    assert "admin.hosts" in answer.json()["error"]
    assert admin(gw, "GET", f"/users/{username}").status_code == 404
    # probes and scrapers are not refused by name
    assert admin(gw, "GET", "/ready", headers={"host": "evil.example"}).status_code == 200


def test_local_and_configured_hosts_pass(gw: Gateway) -> None:
    port = gw.config["admin"]["port"]
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}",
                 "127.0.0.2", "admin.internal", f"ADMIN.internal:{port}"):
        answer = admin(gw, "GET", "/users", headers={"host": host})
        assert answer.status_code == 200, (host, answer.text)


def test_answers_are_not_for_browsers(gw: Gateway) -> None:
    answer = admin(gw, "GET", "/users", headers={"origin": EVIL})
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in answer.headers
    refused = admin(gw, "POST", "/users", headers={"origin": EVIL}, json={})
    assert refused.headers["x-content-type-options"] == "nosniff"


def test_the_cli_still_works(gw: Gateway) -> None:
    username = name("cli")
    made = subprocess.run([*MESHGATE, "users", "create", "--admin-url", gw.admin_url,
                           "-p", f"username={username}", "-p", "firstname=C",
                           "-p", "lastname=L", "-q"], capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    keyed = subprocess.run([*MESHGATE, "credentials", "create", "--admin-url", gw.admin_url,
                            "-c", username, "-t", "key-auth", "-q"], capture_output=True,
                           text=True, timeout=60)
    assert keyed.returncode == 0, keyed.stderr
    assert len(credentials(gw, username)) == 1


# -- the registry ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    process = RegistryProcess(tmp_path_factory.mktemp("registry-guard"),
                              "--allowed-host", "registry.internal")
    yield process
    process.stop()


def test_registry_refuses_browser_writes(registry: RegistryProcess) -> None:
    path = f"{registry.url}/v1/services/users/instances/evil-1"
    body = json.dumps({"address": "127.0.0.1", "port": 9}).encode()
    cases = [({"content-type": "text/plain"}, 415),
             ({"content-type": "application/json", "origin": EVIL}, 403),
             ({"content-type": "application/json", "sec-fetch-site": "cross-site"}, 403),
             ({"content-type": "application/json", "host": "evil.example"}, 421)]
    for headers, status in cases:
        answer = httpx.put(path, content=body, headers={**registry.headers, **headers},
                           timeout=5)
        assert answer.status_code == status, (headers, answer.text)
        assert answer.json()["detail"]       # the registry's error shape
    assert registry.instances("users") == []
    assert registry.put("users", "ok-1", address="127.0.0.1", port=9).status_code == 200


def test_registry_hosts(registry: RegistryProcess) -> None:
    for host, status in (("evil.example", 421), ("registry.internal:8500", 200),
                         (f"localhost:{registry.port}", 200)):
        answer = httpx.get(f"{registry.url}/v1/services", headers={"host": host}, timeout=5)
        assert answer.status_code == status, (host, answer.text)
    assert "--allowed-host" in httpx.get(f"{registry.url}/v1/services",
                                         headers={"host": "evil.example"}).json()["detail"]
    health = httpx.get(f"{registry.url}/v1/health", headers={"host": "evil.example"})
    assert health.status_code == 200


# -- a sidecar's admin --------------------------------------------------------------------
def test_sidecar_admin_refuses_a_rebound_host(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "sidecar.log").open("wb")
    process = subprocess.Popen(
        [*MESHGATE, "sidecar", "--service", "guarded", "--app-port", str(free_port()),
         "--inbound-port", "0", "--outbound-port", "0", "--admin-port", str(port),
         "--no-register"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / "sidecar.log").read_text()
        try:
            return httpx.get(url + "/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout=15)
        assert httpx.get(url + "/clusters", timeout=5).status_code == 200
        assert httpx.get(url + "/clusters", headers={"host": "evil.example"},
                         timeout=5).status_code == 421
        assert httpx.put(url + "/service-endpoints/x", content=b'{"url": "http://x"}',
                         headers={"content-type": "text/plain"},
                         timeout=5).status_code == 415
    finally:
        stop_process(process)


def test_the_refusals_are_documented(gw: Gateway, registry: RegistryProcess) -> None:
    paths = admin(gw, "GET", "/openapi.json").json()["paths"]
    assert "421" in paths["/users"]["get"]["responses"]
    assert {"403", "415", "421"} <= set(paths["/users"]["post"]["responses"])
    registry_paths = httpx.get(f"{registry.url}/openapi.json", timeout=5).json()["paths"]
    put = registry_paths["/v1/services/{service}/instances/{instance_id}"]["put"]
    assert {"403", "415", "421"} <= set(put["responses"])
