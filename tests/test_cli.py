"""The ``meshgate`` command line, run as a real subprocess: validate, run, schema, env."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, free_port, proxy_config, wait_until

MESHGATE = [sys.executable, "-m", "meshgate"]

GOOD = textwrap.dedent("""\
    http:
      port: 8080
    apiEndpoints:
      api:
        host: '*'
        paths: '/*'
    serviceEndpoints:
      backend:
        url: http://127.0.0.1:9
    policies:
      - proxy
      - log
    pipelines:
      main:
        apiEndpoints:
          - api
        policies:
          - log:
              - action:
                  message: hello
          - proxy:
              - action:
                  serviceEndpoint: backend
    """)


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def meshgate(*args: str, env: dict[str, str] | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("MESHGATE_CONFIG_DIR", "EG_CONFIG_DIR")}
    full_env.update(env or {})
    return subprocess.run([*MESHGATE, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


def config_dir(root: Path, name: str, text: str) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "gateway.config.yml").write_text(text)
    return directory


def assert_one_located_error(result: subprocess.CompletedProcess[str], file: Path, line: int,
                             field: str | None) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1, output
    message = lines[0]
    assert f"{file}:{line}:" in message, message
    if field is not None:
        assert f": {field}:" in message, message
    return message


# -- validate ----------------------------------------------------------------------
def test_validate_good_config_exits_0(tmp_path) -> None:
    directory = config_dir(tmp_path, "good", GOOD)
    result = meshgate("validate", str(directory))
    assert result.returncode == 0, result.stderr
    assert str(directory / "gateway.config.yml") in result.stdout
    assert "1 apiEndpoints, 1 serviceEndpoints, 1 pipelines" in result.stdout
    assert result.stderr == ""


BAD = {
    "port-wrong-type": (GOOD.replace("port: 8080", "port: eighty"),
                        "port: eighty", "http.port", "expected an integer"),
    "port-out-of-range": (GOOD.replace("port: 8080", "port: 70000"),
                          "port: 70000", "http.port", "65535"),
    "unknown-policy": (GOOD.replace("      - log:", "      - nosuch:"),
                       "- nosuch:", "pipelines.main.policies[0].nosuch", "unknown policy"),
    "unknown-policy-in-whitelist": (GOOD.replace("  - log\n", "  - logg\n"), "- logg",
                                    "policies[1]", "unknown policy 'logg'; did you mean 'log'?"),
    "policy-not-whitelisted": (GOOD.replace("  - log\n", ""),
                               "- log:", "pipelines.main.policies[0].log", "whitelist"),
    "unknown-service-endpoint": (GOOD.replace("serviceEndpoint: backend", "serviceEndpoint: nope"),
                                 "serviceEndpoint: nope",
                                 "pipelines.main.policies[1].proxy[0].action.serviceEndpoint",
                                 "nope"),
    "unknown-api-endpoint": (GOOD.replace("      - api\n", "      - apx\n"),
                             "- apx", "pipelines.main.apiEndpoints", "apx"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_validate_bad_config_names_file_line_field(tmp_path, case) -> None:
    text, needle, field, words = BAD[case]
    directory = config_dir(tmp_path, case, text)
    result = meshgate("validate", str(directory))
    message = assert_one_located_error(result, directory / "gateway.config.yml",
                                       line_of(text, needle), None)
    assert f": {field}" in message, message
    assert words in message
    assert result.stdout == ""          # errors go to stderr


@pytest.mark.parametrize(("replace", "needle"), [
    (("    host: '*'", "    host: a: b"), "host: a: b"),
    (("  port: 8080", "\tport: 8080"), "\tport"),
])
def test_validate_yaml_syntax_error_names_file_and_line(tmp_path, replace, needle) -> None:
    text = GOOD.replace(*replace)
    directory = config_dir(tmp_path, "yaml", text)
    result = meshgate("validate", str(directory))
    message = assert_one_located_error(result, directory / "gateway.config.yml",
                                       line_of(text, needle), None)
    assert "YAML" in message


def test_validate_error_in_system_config_names_that_file(tmp_path) -> None:
    directory = config_dir(tmp_path, "sys", GOOD)
    system = "db:\n  redis:\n    port: abc\n"
    (directory / "system.config.yml").write_text(system)
    result = meshgate("validate", str(directory))
    assert_one_located_error(result, directory / "system.config.yml", 3, "db.redis.port")


def test_validate_missing_directory_exits_2(tmp_path) -> None:
    result = meshgate("validate", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "nowhere") in result.stderr


def test_run_bad_config_exits_2_without_traceback(tmp_path) -> None:
    text = GOOD.replace("port: 8080", "port: eighty")
    directory = config_dir(tmp_path, "bad", text)
    result = meshgate("run", str(directory))
    assert_one_located_error(result, directory / "gateway.config.yml", 2, "http.port")


def test_run_with_port_in_use_fails_without_traceback(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = GOOD.replace("port: 8080", f"port: {port}\n  hostname: 127.0.0.1") + (
            f"admin:\n  port: {free_port()}\n  host: 127.0.0.1\n")
        directory = config_dir(tmp_path, "busy", text)
        result = meshgate("run", str(directory))
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None)
    assert "Traceback" not in output
    assert str(port) in output


# -- schema ----------------------------------------------------------------------------
def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if isinstance(node.get("$ref"), str) else []) + [
            r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_schema_prints_a_json_schema_of_the_config() -> None:
    result = meshgate("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    for section in ("apiEndpoints", "serviceEndpoints", "pipelines", "policies", "http"):
        assert section in schema["properties"], section
    # every reference resolves inside the document
    defs = schema["$defs"]
    refs = _refs(schema)
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/"), ref
        assert ref[len("#/$defs/"):] in defs, ref
    # every registered policy has a schema for its action
    policy_use = defs["PolicyUse"]["properties"]
    for name in ("proxy", "log", "headers", "terminate"):
        assert name in policy_use
        assert f"policy.{name}" in defs


# -- where the config comes from ---------------------------------------------------------
@pytest.mark.parametrize("variable", ["MESHGATE_CONFIG_DIR", "EG_CONFIG_DIR"])
def test_config_dir_from_environment(tmp_path, variable) -> None:
    good = config_dir(tmp_path, "good", GOOD)
    bad = config_dir(tmp_path, "bad", GOOD.replace("port: 8080", "port: eighty"))
    ok = meshgate("validate", env={variable: str(good)})
    assert ok.returncode == 0, ok.stderr
    assert str(good / "gateway.config.yml") in ok.stdout
    failed = meshgate("validate", env={variable: str(bad)})
    assert_one_located_error(failed, bad / "gateway.config.yml", 2, "http.port")
    # an explicit argument wins over the environment
    explicit = meshgate("validate", str(good), env={variable: str(bad)})
    assert explicit.returncode == 0, explicit.stderr


def test_meshgate_config_dir_wins_over_eg_config_dir(tmp_path) -> None:
    good = config_dir(tmp_path, "good", GOOD)
    bad = config_dir(tmp_path, "bad", GOOD.replace("port: 8080", "port: eighty"))
    result = meshgate("validate", env={"MESHGATE_CONFIG_DIR": str(good),
                                       "EG_CONFIG_DIR": str(bad)})
    assert result.returncode == 0, result.stderr
    result = meshgate("validate", env={"MESHGATE_CONFIG_DIR": str(bad),
                                       "EG_CONFIG_DIR": str(good)})
    assert result.returncode == 2


def test_no_config_dir_anywhere_exits_2(tmp_path) -> None:
    result = meshgate("validate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "MESHGATE_CONFIG_DIR" in result.stderr and "EG_CONFIG_DIR" in result.stderr


def test_run_takes_its_config_from_eg_config_dir(backend, tmp_path) -> None:
    gw = Gateway(tmp_path, proxy_config(backend.url), start=False)
    env = {**os.environ, "EG_CONFIG_DIR": str(tmp_path), "MESHGATE_WATCH_INTERVAL": "0.1"}
    env.pop("MESHGATE_CONFIG_DIR", None)
    with gw.log_path.open("ab") as log:
        gw.process = subprocess.Popen([*MESHGATE, "run"], stdout=log, stderr=subprocess.STDOUT,
                                      env=env)
    try:
        wait_until(gw.ready, timeout=15)
        assert httpx.get(gw.url + "/x", timeout=5).text == "ok backend\n"
    finally:
        assert gw.stop() == 0


@pytest.mark.parametrize("from_env", [True, False], ids=["variable-set", "default"])
def test_env_substitution_sets_a_running_gateways_port(backend, gateway_factory,
                                                       from_env) -> None:
    port = free_port()
    config = proxy_config(backend.url)
    config["http"] = {"port": port}
    env = {"MG_TEST_HTTP_PORT": str(port)} if from_env else {}
    os.environ.pop("MG_TEST_HTTP_PORT", None)
    gw = gateway_factory(config, env=env, start=False)
    path = gw.directory / "gateway.config.yml"
    text = path.read_text()
    assert text.count(f"port: {port}") == 1
    default = free_port() if from_env else port      # a wrong default when the variable wins
    path.write_text(text.replace(f"port: {port}", f"port: ${{MG_TEST_HTTP_PORT:-{default}}}"))
    gw.start()
    assert httpx.get(gw.url + "/x", timeout=5).text == "ok backend\n"
    if from_env:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{default}/x", timeout=2)
