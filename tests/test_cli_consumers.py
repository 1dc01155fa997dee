"""``meshgate users|apps|credentials|credential:scopes|scopes|tokens``, EG's ``eg`` commands,
run as subprocesses: against a real gateway, against a recording stand-in of EG's Admin
API (request shapes, output, headers), and on their error paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.gateway import Gateway, free_port

MESHGATE = [sys.executable, "-m", "meshgate"]
UNSET = ("MESHGATE_ADMIN_URL", "EG_ADMIN_URL", "MESHGATE_CONFIG_DIR", "EG_CONFIG_DIR",
         "MESHGATE_ADMIN_KEY")


def meshgate(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in UNSET}
    full_env.update(env or {})
    return subprocess.run([*MESHGATE, *args], capture_output=True, text=True, env=full_env,
                          input=stdin, timeout=60, cwd=cwd)


# -- against a real gateway ----------------------------------------------------------------
@pytest.fixture
def gw(gateway_factory: Any) -> Gateway:
    gateway: Gateway = gateway_factory({})
    return gateway


def cli(gw: Gateway, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return meshgate(*args, "--admin-url", gw.admin_url, stdin=stdin)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_users_lifecycle(gw: Gateway) -> None:
    user_id = ok(cli(gw, "users", "create", "-p", "username=bob", "-p", "firstname=Bob",
                     "-p", "lastname=B", "-q")).strip()
    assert user_id and "\n" not in user_id
    assert ok(cli(gw, "users", "info", "bob", "-q")).strip() == user_id
    info = json.loads(ok(cli(gw, "users", "info", user_id)))
    assert (info["username"], info["firstname"], info["lastname"]) == ("bob", "Bob", "B")

    duplicate = cli(gw, "users", "create", "-p", "username=bob", "-p", "firstname=Bob",
                    "-p", "lastname=B")
    assert duplicate.returncode == 1 and "409" in duplicate.stderr

    ok(cli(gw, "users", "update", "bob", "-p", "firstname=Robert"))
    assert json.loads(ok(cli(gw, "users", "info", "bob")))["firstname"] == "Robert"
    table = ok(cli(gw, "users", "list"))
    assert "bob" in table and "Robert" in table
    assert ok(cli(gw, "users", "list", "-q")).split() == ["bob"]

    ok(cli(gw, "users", "deactivate", "bob"))
    assert json.loads(ok(cli(gw, "users", "info", "bob")))["isActive"] is False
    ok(cli(gw, "users", "activate", "bob"))
    assert json.loads(ok(cli(gw, "users", "info", "bob")))["isActive"] is True

    assert ok(cli(gw, "users", "remove", "bob", "-q")).strip() == "bob"
    gone = cli(gw, "users", "info", "bob")
    assert gone.returncode == 1 and "404" in gone.stderr


def test_users_create_from_stdin(gw: Gateway) -> None:
    lines = "\n".join(json.dumps({"username": n, "firstname": n.title(), "lastname": "X"})
                      for n in ("ann", "cid")) + "\n\n"
    ids = ok(cli(gw, "users", "create", "--stdin", "-q", stdin=lines)).split()
    assert len(ids) == 2
    assert sorted(ok(cli(gw, "users", "list", "-q")).split()) == ["ann", "cid"]


def test_apps_credentials_scopes_and_tokens(gw: Gateway) -> None:
    ok(cli(gw, "users", "create", "-p", "username=bob", "-p", "firstname=Bob",
           "-p", "lastname=B", "-q"))
    app_id = ok(cli(gw, "apps", "create", "-u", "bob", "-p", "name=app1", "-q")).strip()
    assert json.loads(ok(cli(gw, "apps", "info", app_id)))["name"] == "app1"
    assert ok(cli(gw, "apps", "list", "-q")).split() == [app_id]

    ok(cli(gw, "scopes", "create", "read", "write"))
    assert sorted(ok(cli(gw, "scopes", "list", "-q")).split()) == ["read", "write"]
    assert ok(cli(gw, "scopes", "info", "read")).strip() == "read"

    pair = ok(cli(gw, "credentials", "create", "-c", "bob", "-t", "key-auth",
                  "-p", 'scopes=["read"]', "-q")).strip()
    assert re.fullmatch(r"[^:\s]+:[^:\s]+", pair), pair
    key_id = pair.split(":")[0]
    info = json.loads(ok(cli(gw, "credentials", "info", key_id, "-t", "key-auth")))
    assert info["scopes"] == ["read"]
    ok(cli(gw, "credential:scopes", "add", "write", "--id", key_id, "-t", "key-auth"))
    info = json.loads(ok(cli(gw, "credentials", "info", key_id, "-t", "key-auth")))
    assert sorted(info["scopes"]) == ["read", "write"]
    ok(cli(gw, "credential:scopes", "set", "write", "--id", key_id, "-t", "key-auth"))
    info = json.loads(ok(cli(gw, "credentials", "info", key_id, "-t", "key-auth")))
    assert info["scopes"] == ["write"]
    assert key_id in ok(cli(gw, "credentials", "list", "-c", "bob"))

    ok(cli(gw, "credentials", "deactivate", key_id, "-t", "key-auth"))
    assert ok(cli(gw, "credentials", "list", "-c", "bob", "-q")).split() == []
    assert key_id in ok(cli(gw, "credentials", "list", "-c", "bob", "-f", "archived", "-q"))

    basic = ok(cli(gw, "credentials", "create", "-c", "bob", "-t", "basic-auth",
                   "-p", "password=pw", "-q")).strip()
    assert basic.endswith(":pw") and len(basic) > 3

    ok(cli(gw, "scopes", "remove", "read"))
    revoked = cli(gw, "tokens", "revoke", "no-such-token")
    assert revoked.returncode == 1 and "404" in revoked.stderr


# -- against a recording stand-in of EG's Admin API ------------------------------------------
class Recorder(BaseHTTPRequestHandler):
    """Answers each request from ``server.routes[(method, path)]`` and records it."""

    server: Any

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.seen.append({
            "method": self.command, "path": self.path, "headers": dict(self.headers),
            "body": json.loads(body) if body else None})
        status, payload = self.server.routes.get((self.command, self.path.split("?")[0]),
                                                 (404, "Not found here"))
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain" if isinstance(payload, str)
                         else "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


class FakeAdmin(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Recorder)
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.seen: list[dict[str, Any]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def fake() -> Iterator[FakeAdmin]:
    server = FakeAdmin()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


USER = {"id": "7b0e", "username": "bob", "firstname": "Bob", "lastname": "B",
        "isActive": True, "createdAt": "Mon Jan 01 2024"}


def test_create_sends_eg_body_and_quiet_prints_id(fake: Any) -> None:
    fake.routes[("POST", "/users")] = (201, USER)
    result = meshgate("users", "create", "-p", "username=bob", "-p", "firstname=Bob",
                      "-p", "lastname=B=C", "-q", "--admin-url", fake.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "7b0e\n"
    assert fake.seen[0]["body"] == {"username": "bob", "firstname": "Bob", "lastname": "B=C"}

    loud = meshgate("users", "create", "-p", "username=bob", "--admin-url", fake.url)
    assert json.loads(loud.stdout) == USER and "Created 7b0e" in loud.stderr


def test_api_error_message_and_status(fake: Any) -> None:
    fake.routes[("GET", "/users/nobody")] = (404, "User not found: nobody")
    fake.routes[("POST", "/users")] = (409, {"error": "username bob already exists"})
    result = meshgate("users", "info", "nobody", "--admin-url", fake.url)
    assert result.returncode == 1
    assert result.stderr.strip() == "meshgate: HTTP 404 Not Found: User not found: nobody"
    result = meshgate("users", "create", "-p", "username=bob", "--admin-url", fake.url + "/")
    assert result.returncode == 1
    assert "HTTP 409 Conflict: username bob already exists" in result.stderr


def test_several_ids_carry_on_after_a_failure(fake: Any) -> None:
    fake.routes[("PUT", "/users/a/status")] = (200, {"status": "Deactivated"})
    fake.routes[("PUT", "/users/c/status")] = (200, {"status": "Deactivated"})
    result = meshgate("users", "deactivate", "a", "b", "c", "-q", "--admin-url", fake.url)
    assert result.returncode == 1
    assert result.stdout.split() == ["a", "c"]
    assert "Not found here" in result.stderr
    assert [s["body"] for s in fake.seen] == [{"status": False}] * 3


def test_credentials_quiet_prints_the_secret_pair(fake: Any) -> None:
    fake.routes[("POST", "/credentials")] = (201, {
        "keyId": "K1", "keySecret": "S1", "consumerId": "7b0e", "isActive": True,
        "scopes": ["a", "b"]})
    result = meshgate("credentials", "create", "-c", "bob", "-t", "key-auth",
                      "-p", 'scopes=["a","b"]', "-q", "--admin-url", fake.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "K1:S1\n"
    assert fake.seen[0]["body"] == {"consumerId": "bob", "type": "key-auth",
                                    "credential": {"scopes": ["a", "b"]}}

    fake.routes[("POST", "/credentials")] = (201, {"id": "bob", "password": "pw"})
    lines = json.dumps({"consumer": "bob", "type": "basic-auth", "scopes": "one"}) + "\n"
    result = meshgate("credentials", "create", "--stdin", "-q", "--admin-url", fake.url,
                      stdin=lines)
    assert result.stdout == "bob:pw\n", result.stderr
    assert fake.seen[1]["body"] == {"consumerId": "bob", "type": "basic-auth",
                                    "credential": {"scopes": ["one"]}}


def test_paths_verbs_and_bodies_follow_egs_client(fake: Any) -> None:
    fake.routes.update({
        ("PUT", "/credentials/key-auth/K%2F1/scopes/read"): (204, ""),
        ("PUT", "/credentials/key-auth/K%2F1/scopes"): (204, ""),
        ("POST", "/scopes"): (201, ""),
        ("DELETE", "/tokens/tok"): (200, {"status": "ok"}),
        ("POST", "/apps"): (201, {"id": "app1", "name": "a"}),
    })
    for args in (("credential:scopes", "add", "read", "--id", "K/1", "-t", "key-auth"),
                 ("credential-scopes", "set", "x", "y", "--keyid", "K/1", "-t", "key-auth"),
                 ("scopes", "create", "x", "y"),
                 ("token", "revoke", "tok"),
                 ("apps", "create", "-u", "bob", "-p", "name=a")):
        result = meshgate(*args, "--admin-url", fake.url)
        assert result.returncode == 0, (args, result.stderr)
    assert [(s["method"], s["path"], s["body"]) for s in fake.seen] == [
        ("PUT", "/credentials/key-auth/K%2F1/scopes/read", None),
        ("PUT", "/credentials/key-auth/K%2F1/scopes", {"scopes": ["x", "y"]}),
        ("POST", "/scopes", {"scopes": ["x", "y"]}),
        ("DELETE", "/tokens/tok", None),
        ("POST", "/apps", {"name": "a", "userId": "bob"}),
    ]


def test_list_prints_a_table_and_follows_pages_with_all(fake: Any) -> None:
    fake.routes[("GET", "/users")] = (200, {"users": [USER], "nextKey": 0})
    result = meshgate("users", "list", "--admin-url", fake.url, "--no-color")
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "username" in line)
    words = [w for w in re.split(r"[\s│┃|]+", header) if w]
    assert words[:5] == ["id", "username", "firstname", "lastname", "isActive"]
    assert "bob" in result.stdout and "yes" in result.stdout
    assert json.loads(meshgate("users", "list", "--json", "--admin-url", fake.url).stdout) \
        == [USER]
    fake.routes[("GET", "/users")] = (200, {"users": [], "nextKey": 0})
    assert meshgate("users", "list", "--admin-url", fake.url).stdout == "You have no users\n"


def test_admin_key_and_headers_are_sent(fake: Any) -> None:
    fake.routes[("GET", "/scopes")] = (200, {"scopes": ["a"]})
    result = meshgate("scopes", "list", "-q", "-H", "X-Team: blue", "--admin-url", fake.url,
                      env={"MESHGATE_ADMIN_KEY": "s3cret"})
    assert result.stdout == "a\n", result.stderr
    headers = {k.lower(): v for k, v in fake.seen[0]["headers"].items()}
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["x-team"] == "blue"


def test_admin_url_sources_in_order(fake: Any, tmp_path: Path) -> None:
    fake.routes[("GET", "/scopes")] = (200, {"scopes": ["a"]})
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "config"
    config.mkdir()
    (config / "gateway.config.yml").write_text(yaml.safe_dump(
        {"admin": {"port": fake.server_address[1], "host": "127.0.0.1"}}))

    def where(*args: str, env: dict[str, str] | None = None) -> str:
        result = meshgate("scopes", "list", "-q", *args, env=env)
        return "fake" if result.returncode == 0 else result.stderr

    # gateway.config.yml's admin section, found through --config or $EG_CONFIG_DIR
    assert where("--config", str(config)) == "fake"
    assert where(env={"EG_CONFIG_DIR": str(config)}) == "fake"
    # system.config.yml cli.url wins over it
    (config / "system.config.yml").write_text(yaml.safe_dump({"cli": {"url": dead}}))
    assert dead in where("--config", str(config))
    # then the environment, then --admin-url
    assert where("--config", str(config), env={"EG_ADMIN_URL": fake.url}) == "fake"
    assert dead in where(env={"MESHGATE_ADMIN_URL": dead, "EG_ADMIN_URL": fake.url})
    assert where("--admin-url", fake.url, env={"MESHGATE_ADMIN_URL": dead}) == "fake"


# -- error paths ---------------------------------------------------------------------------
def test_unreachable_admin_url_exits_1_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = meshgate("users", "create", "-p", "username=bob", "-q", "--admin-url", url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == f"meshgate: cannot reach the Admin API at {url}: " \
                                    "connection refused"
    by_env = meshgate("users", "remove", "a", "b", env={"EG_ADMIN_URL": url})
    assert by_env.returncode == 1 and by_env.stderr.count(url) == 1


@pytest.mark.parametrize("args", [
    ("users", "create", "-p", "username"),
    ("users", "create", "-p", "username="),
    ("users", "update", "bob", "-p", "=x"),
    ("apps", "create", "-p", "name=a"),                         # no -u / --stdin
    ("credentials", "create", "-c", "bob"),                     # no -t
    ("credentials", "list", "-f", "deleted"),
    ("users", "list", "-H", "no-colon"),
    ("users", "info"),                                          # missing argument
    ("credentials", "info", "K1"),                              # missing -t
    ("users", "frobnicate"),
])
def test_usage_errors_exit_2_before_any_request(fake: Any, args: tuple[str, ...]) -> None:
    result = meshgate(*args, "--admin-url", fake.url)
    assert result.returncode == 2, result.stderr
    assert fake.seen == []


def test_malformed_stdin_exits_2_and_sends_nothing(fake: Any) -> None:
    lines = json.dumps({"username": "a"}) + "\n{not json\n"
    result = meshgate("users", "create", "--stdin", "--admin-url", fake.url, stdin=lines)
    assert result.returncode == 2
    assert "stdin line 2" in result.stderr
    assert fake.seen == []
