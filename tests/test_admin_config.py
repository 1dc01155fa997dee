"""EG's config routes of the Admin API: /api-endpoints, /service-endpoints, /pipelines,
/policies, /schemas -- against a real gateway, plus the in-place file editor on its own."""

from __future__ import annotations

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from meshgate.admin import config_file
from meshgate.config.loader import load_config
from tests.support.gateway import Gateway, free_port, wait_until

# A config file as people write them: comments, quoting, ${VAR} placeholders.
TEMPLATE = textwrap.dedent("""\
    # meshgate test gateway
    http:
      port: ${MG_TEST_HTTP_PORT}
      hostname: 127.0.0.1
    admin:
      port: %(admin)d
      host: 127.0.0.1
    apiEndpoints:
      api:
        host: '*'
        paths: ['/api/*', '/name']   # the first backend
    serviceEndpoints:
      backend:
        url: ${MG_TEST_BACKEND_URL}
    policies:
      - proxy
      - log
    pipelines:
      main:
        apiEndpoints:
          - api
        policies:
          - proxy:
              - action:
                  serviceEndpoint: backend
    """)


def start(gateway_factory: Any, backend_url: str, *, json_file: bool = False) -> Gateway:
    port, admin = free_port(), free_port()
    gw: Gateway = gateway_factory({"http": {"port": port}, "admin": {"port": admin,
                                                                     "host": "127.0.0.1"}},
                                  start=False,
                                  env={"MG_TEST_HTTP_PORT": str(port),
                                       "MG_TEST_BACKEND_URL": backend_url})
    text = TEMPLATE % {"admin": admin}
    (gw.directory / "gateway.config.yml").unlink()
    if json_file:
        data = yaml.safe_load(text)
        data["http"]["port"] = port
        (gw.directory / "gateway.config.json").write_text(json.dumps(data, indent=4))
    else:
        (gw.directory / "gateway.config.yml").write_text(text)
    gw.start()
    return gw


def gateway_file(gw: Gateway) -> Path:
    return next(p for p in gw.directory.iterdir() if p.name.startswith("gateway.config."))


def fetch(gw: Gateway, path: str) -> httpx.Response:
    return httpx.get(gw.url + path, timeout=5)


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.admin_url + path, timeout=10, **kwargs)


def loads_with_env(gw: Gateway) -> Any:
    return load_config(gw.directory, env=gw.env)


@pytest.fixture
def gw(backend_factory: Any, gateway_factory: Any) -> Gateway:
    return start(gateway_factory, backend_factory("a").url)


# -- reads --------------------------------------------------------------------------------
def test_get_lists_sections_as_written_after_substitution(gw: Gateway) -> None:
    assert admin(gw, "GET", "/api-endpoints").json() == {
        "api": {"host": "*", "paths": ["/api/*", "/name"]}}
    assert admin(gw, "GET", "/api-endpoints/").status_code == 200     # EG's client form
    assert admin(gw, "GET", "/service-endpoints/backend").json() == {
        "url": gw.env["MG_TEST_BACKEND_URL"]}
    assert admin(gw, "GET", "/pipelines/main").json()["apiEndpoints"] == ["api"]
    assert admin(gw, "GET", "/policies").json() == ["proxy", "log"]
    missing = admin(gw, "GET", "/pipelines/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


# -- changes that apply ---------------------------------------------------------------------
def test_put_endpoint_and_pipeline_routes_traffic_without_restart(
        backend_factory: Any, gw: Gateway) -> None:
    b = backend_factory("b")
    pids = gw.pids()
    assert fetch(gw, "/second/x").status_code == 404

    assert admin(gw, "PUT", "/service-endpoints/second", json={"url": b.url}).status_code == 201
    assert admin(gw, "PUT", "/api-endpoints/second",
                 json={"host": "*", "paths": "/second/*"}).status_code == 201
    created = admin(gw, "PUT", "/pipelines/second", json={
        "apiEndpoints": ["second"],
        "policies": [{"proxy": [{"action": {"serviceEndpoint": "second"}}]}]})
    assert created.status_code == 201, created.text

    wait_until(lambda: fetch(gw, "/second/x").text.strip() == "ok b", timeout=5)
    assert fetch(gw, "/name").text == "a"
    assert gw.pids() == pids, "the change restarted processes"

    # Replacing is 204; the new definition is served.
    replaced = admin(gw, "PUT", "/api-endpoints/second", json={"paths": ["/third/*"]})
    assert replaced.status_code == 204
    wait_until(lambda: fetch(gw, "/third/x").text.strip() == "ok b", timeout=5)
    assert fetch(gw, "/second/x").status_code == 404

    on_disk = loads_with_env(gw).gateway
    assert on_disk.apiEndpoints["second"][0].paths == ["/third/*"]
    assert on_disk.pipelines["second"].apiEndpoints == ["second"]
    assert admin(gw, "GET", "/pipelines").json().keys() == {"main", "second"}


def test_untouched_lines_placeholders_and_comments_survive(backend_factory: Any,
                                                            gw: Gateway) -> None:
    path = gateway_file(gw)
    before = path.read_text()
    assert admin(gw, "PUT", "/api-endpoints/extra", json={"paths": ["/extra"]}).status_code == 201
    assert admin(gw, "PUT", "/policies/terminate").json() == {"status": "ok"}
    after = path.read_text()
    assert "${MG_TEST_HTTP_PORT}" in after and "${MG_TEST_BACKEND_URL}" in after
    assert "# meshgate test gateway" in after and "# the first backend" in after
    kept = [line for line in before.splitlines() if line not in after.splitlines()]
    assert kept == [], f"lines changed: {kept}"
    assert yaml.safe_load(after)["policies"] == ["proxy", "log", "terminate"]
    assert loads_with_env(gw).gateway.apiEndpoints["extra"][0].paths == ["/extra"]

    assert admin(gw, "DELETE", "/api-endpoints/extra").status_code == 204
    assert admin(gw, "DELETE", "/policies/terminate").status_code == 204
    assert path.read_text() == before, "add then delete did not give the original file back"


def test_json_config_file_stays_json(backend_factory: Any, gateway_factory: Any) -> None:
    gw = start(gateway_factory, backend_factory("a").url, json_file=True)
    path = gateway_file(gw)
    assert path.suffix == ".json"
    assert admin(gw, "PUT", "/api-endpoints/extra", json={"paths": ["/extra/*"]}).status_code == 201
    data = json.loads(path.read_text())
    assert data["apiEndpoints"]["extra"] == {"paths": ["/extra/*"]}
    assert data["serviceEndpoints"]["backend"]["url"] == "${MG_TEST_BACKEND_URL}"
    assert path.read_text().startswith('{\n    "')       # the file's indentation is kept
    loads_with_env(gw)


def test_concurrent_changes_are_serialized(gw: Gateway) -> None:
    def put(i: int) -> int:
        return admin(gw, "PUT", f"/api-endpoints/e{i}", json={"paths": [f"/e{i}"]}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(put, range(12)))
    assert codes == [201] * 12
    endpoints = loads_with_env(gw).gateway.apiEndpoints
    assert {f"e{i}" for i in range(12)} <= endpoints.keys()
    assert set(admin(gw, "GET", "/api-endpoints").json()) == endpoints.keys()


# -- changes that are refused -------------------------------------------------------------
@pytest.mark.parametrize(("path", "body", "reason"), [
    ("/pipelines/p", {"apiEndpoints": ["api"], "policies": [
        {"terminate": [{"action": {"statusCode": 418}}]}]},
     "pipelines.p.policies[0].terminate: policy 'terminate' is not in the policies whitelist"),
    ("/pipelines/p", {"apiEndpoints": ["api"], "policies": [
        {"proxy": [{"action": {"serviceEndpoint": "nowhere"}}]}]},
     "pipelines.p.policies[0].proxy[0].action.serviceEndpoint: unknown serviceEndpoint "
     "'nowhere'"),
    ("/pipelines/p", {"apiEndpoints": ["ghost"], "policies": []},
     "pipelines.p.apiEndpoints[0]: unknown apiEndpoint 'ghost'"),
    ("/pipelines/p", {"apiEndpoints": ["api"], "policies": [{"no-such-policy": None}]},
     "unknown policy 'no-such-policy'"),
    ("/service-endpoints/s", {"url": "ftp://x"}, "serviceEndpoints.s"),
    ("/service-endpoints/s", ["not", "a", "mapping"], "serviceEndpoints.s"),
    ("/api-endpoints/e", {"methods": 5}, "apiEndpoints.e"),
])
def test_invalid_change_is_422_with_the_reason_and_changes_nothing(
        gw: Gateway, path: str, body: Any, reason: str) -> None:
    file = gateway_file(gw)
    before = file.read_text()
    answer = admin(gw, "PUT", path, json=body)
    assert answer.status_code == 422, answer.text
    message = answer.json()["error"]
    assert reason in message
    assert str(gw.directory) not in message and "gateway.config" not in message
    assert file.read_text() == before
    assert fetch(gw, "/name").text == "a"


def test_delete_rules(gw: Gateway) -> None:
    file = gateway_file(gw)
    still_used = admin(gw, "DELETE", "/service-endpoints/backend")
    assert still_used.status_code == 422
    assert ("pipelines.main.policies[0].proxy[0].action.serviceEndpoint: unknown "
            "serviceEndpoint 'backend'") in still_used.json()["error"]
    assert "pipelines.main.apiEndpoints[0]" in admin(
        gw, "DELETE", "/api-endpoints/api").json()["error"]
    assert "not in the policies whitelist" in admin(
        gw, "DELETE", "/policies/proxy").json()["error"]
    assert admin(gw, "DELETE", "/service-endpoints/nope").status_code == 404
    assert admin(gw, "DELETE", "/pipelines/nope").status_code == 404
    assert admin(gw, "DELETE", "/policies/never-listed").status_code == 204
    assert fetch(gw, "/name").text == "a"

    # In dependency order everything goes, and the route with it.
    for path in ("/pipelines/main", "/api-endpoints/api", "/service-endpoints/backend",
                 "/policies/proxy"):
        assert admin(gw, "DELETE", path).status_code == 204, path
    wait_until(lambda: fetch(gw, "/name").status_code == 404, timeout=5)
    config = loads_with_env(gw).gateway
    assert not config.pipelines and not config.apiEndpoints and config.policies == ["log"]
    assert "${MG_TEST_HTTP_PORT}" in file.read_text()


@pytest.mark.parametrize("body", [b"{bad json", b"", b"   ", b"\xff\xfe{}", b"NaN",
                                  b'{"url": "http://x"', b"[1, 2"])
def test_malformed_body_is_400(gw: Gateway, body: bytes) -> None:
    answer = admin(gw, "PUT", "/service-endpoints/s", content=body,
                   headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]
    assert "s" not in admin(gw, "GET", "/service-endpoints").json()


def test_yaml_body_is_accepted(gw: Gateway) -> None:
    answer = admin(gw, "PUT", "/service-endpoints/s", content=b"url: http://127.0.0.1:9\n",
                   headers={"content-type": "application/yaml"})
    assert answer.status_code == 201, answer.text
    assert admin(gw, "GET", "/service-endpoints/s").json() == {"url": "http://127.0.0.1:9"}


# -- schemas ------------------------------------------------------------------------------
def test_schemas(gw: Gateway) -> None:
    everything = admin(gw, "GET", "/schemas").json()
    assert {item["type"] for item in everything} >= {"policy", "condition", "model", "config"}
    policies = admin(gw, "GET", "/schemas/policy").json()
    assert {p["name"] for p in policies} >= {"proxy", "log", "terminate"}
    assert all(p["type"] == "policy" for p in policies)
    proxy_id = "http://express-gateway.io/schemas/policies/proxy.json"
    by_id = admin(gw, "GET", "/schemas/" + quote(proxy_id, safe="")).json()    # EG's client
    assert by_id["schema"]["$id"] == proxy_id
    assert "serviceEndpoint" in by_id["schema"]["properties"]
    assert admin(gw, "GET", "/schemas/" + proxy_id).json() == by_id
    all_of = admin(gw, "GET", "/schemas/allOf").json()["schema"]
    assert all_of["properties"]["conditions"]["items"] == {
        "$ref": "http://express-gateway.io/schemas/conditions/base.json"}
    users = admin(gw, "GET", "/schemas/users").json()["schema"]
    assert users["required"] == ["username", "firstname", "lastname"]
    assert admin(gw, "GET", "/schemas/nothing-like-it").status_code == 404


# -- the file editor on its own ---------------------------------------------------------------
def edit(tmp_path: Path, text: str, change: Any, name: str = "gateway.config.yml") -> str:
    path = tmp_path / name
    path.write_text(text, newline="")
    return str(change(config_file.read_document(path)))


def test_flow_style_section_is_rewritten_in_block_style(tmp_path: Path) -> None:
    text = "policies: [proxy, log]   # flow\nhttp: {port: 8080}\nx: ${P:-1}\n"
    out = edit(tmp_path, text, lambda d: config_file.add_item(d, "policies", "terminate"))
    assert yaml.safe_load(out) == {"policies": ["proxy", "log", "terminate"],
                                   "http": {"port": 8080}, "x": "${P:-1}"}
    assert out.endswith("http: {port: 8080}\nx: ${P:-1}\n")


def test_absent_and_empty_sections(tmp_path: Path) -> None:
    out = edit(tmp_path, "http:\n  port: 1\n",
               lambda d: config_file.set_entry(d, "serviceEndpoints", "s", {"url": "http://x"}))
    assert yaml.safe_load(out)["serviceEndpoints"] == {"s": {"url": "http://x"}}
    out = edit(tmp_path, "apiEndpoints:\nhttp:\n  port: 1\n",
               lambda d: config_file.set_entry(d, "apiEndpoints", "a", {"paths": "/a"}))
    assert yaml.safe_load(out) == {"apiEndpoints": {"a": {"paths": "/a"}}, "http": {"port": 1}}


def test_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    text = "apiEndpoints:\r\n  a:\r\n    paths: /a"
    out = edit(tmp_path, text,
               lambda d: config_file.set_entry(d, "apiEndpoints", "b", {"paths": "/b"}))
    assert out.startswith("apiEndpoints:\r\n  a:\r\n    paths: /a\r\n  b:\r\n")
    assert "\n" not in out.replace("\r\n", "")
    assert yaml.safe_load(out)["apiEndpoints"]["b"] == {"paths": "/b"}


def test_entry_replaced_in_place_between_neighbours(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        serviceEndpoints:
          one:
            url: ${ONE:-http://one}   # keep
          # about two
          two:
            url: http://two
          three:
            url: ${THREE:-http://three}
        """)
    out = edit(tmp_path, text, lambda d: config_file.set_entry(
        d, "serviceEndpoints", "two", {"urls": ["http://2a", "http://2b"]}))
    assert out == text.replace("    url: http://two\n",
                               "    urls:\n      - http://2a\n      - http://2b\n")
    out = edit(tmp_path, text, lambda d: config_file.delete_entry(d, "serviceEndpoints", "two"))
    assert out == text.replace("  two:\n    url: http://two\n", "")


def test_json_placeholder_outside_a_string_falls_back_to_values(tmp_path: Path,
                                                                monkeypatch: Any) -> None:
    monkeypatch.setenv("MG_PORT", "8080")
    text = '{\n  "http": {"port": ${MG_PORT}},\n  "policies": ["proxy"]\n}\n'
    out = edit(tmp_path, text, lambda d: config_file.add_item(d, "policies", "log"),
               name="gateway.config.json")
    assert json.loads(out) == {"http": {"port": 8080}, "policies": ["proxy", "log"]}
