"""``meshgate validate`` builds every policy as a worker would, and leaves nothing behind.

Run as a real subprocess: errors that only show when a policy is built (a
key file that is not there) exit 2 with one line per failure naming the
file, line, pipeline and policy and no traceback; a good config exits 0
without creating the consumer store's file or folder and without
connecting to the Redis it names.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.gateway import proxy_config
from tests.test_cli import line_of, meshgate


def write(directory: Path, gateway: dict[str, Any],
          system: dict[str, Any] | None = None) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "gateway.config.yml").write_text(yaml.safe_dump(gateway, sort_keys=False))
    if system is not None:
        (directory / "system.config.yml").write_text(yaml.safe_dump(system))
    return directory


def files_under(path: Path) -> set[Path]:
    return set(path.rglob("*")) if path.exists() else set()


def refused(directory: Path) -> list[str]:
    """``meshgate validate`` exits 2 without a traceback; its non-empty lines."""
    result = meshgate("validate", str(directory))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    return [ln for ln in output.splitlines() if ln.strip()]


def auth_gateway(policies: list[Any]) -> dict[str, Any]:
    config = proxy_config("http://127.0.0.1:9", policies=policies)
    config["http"] = {"port": 8080}
    return config


def test_a_policy_that_does_not_build_is_named(tmp_path: Path) -> None:
    config = auth_gateway([{"jwt": [{"action": {"secretOrPublicKeyFile": "keys/missing.pem"}}]}])
    directory = write(tmp_path / "cfg", config)
    lines = refused(directory)
    assert len(lines) == 1, lines
    gateway_file = directory / "gateway.config.yml"
    text = gateway_file.read_text()
    line = line_of(text, "secretOrPublicKeyFile") - 1      # its ``- action:``
    assert text.splitlines()[line - 1].strip() == "- action:"
    message = lines[0]
    assert f"{gateway_file}:{line}: pipelines.main.policies[0].jwt[0].action:" in message
    assert "pipeline 'main', policy 'jwt'" in message
    assert "missing.pem" in message


def test_every_failure_gets_a_line_and_system_keys_count(tmp_path: Path) -> None:
    """The oauth2 policy signs with system.config.yml's key: building it reads the file."""
    config = auth_gateway([{"oauth2": None},
                           {"jwt": [{"action": {"secretOrPublicKeyFile": "nope.pem"}}]}])
    config["pipelines"]["other"] = {"apiEndpoints": ["api"], "policies": [
        {"jwt": [{"action": {"secretOrPublicKeyFile": "gone.pem"}}]}]}
    system = {"accessTokens": {"tokenType": "jwt", "secretOrPrivateKeyFile": "signing.pem"}}
    directory = write(tmp_path / "cfg", config, system)
    lines = refused(directory)
    assert len(lines) == 3, lines
    assert "pipeline 'main', policy 'oauth2'" in lines[0] and "signing.pem" in lines[0]
    assert "pipelines.main.policies[0].oauth2" in lines[0]
    assert "pipeline 'main', policy 'jwt'" in lines[1] and "nope.pem" in lines[1]
    assert "pipeline 'other', policy 'jwt'" in lines[2] and "gone.pem" in lines[2]
    # the same config, keys in place: it builds
    (directory / "signing.pem").write_text("a-shared-secret")
    for name in ("nope.pem", "gone.pem"):
        (directory / name).write_text("another-secret")
    result = meshgate("validate", str(directory))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_good_config_builds_without_leaving_anything(tmp_path: Path) -> None:
    config = auth_gateway([
        {"key-auth": [{"action": {}}]},
        {"oauth2": [{"action": {"requirePkce": True}}]},
        {"rate-limit": [{"action": {"max": 10}}]},
    ])
    directory = write(tmp_path / "cfg", config)
    before = files_under(directory)
    # the store's default place (<config>/data) ...
    result = meshgate("validate", str(directory))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok (1 apiEndpoints, 1 serviceEndpoints, 1 pipelines)" in result.stdout
    assert files_under(directory) == before
    # ... and MESHGATE_DATA_DIR
    data_dir = tmp_path / "data-dir"
    result = meshgate("validate", str(directory), env={"MESHGATE_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert not data_dir.exists()
    assert files_under(directory) == before


def test_redis_is_not_contacted(tmp_path: Path) -> None:
    """A consumer store and rate limits on Redis: the port listens (so a connection
    would be accepted), and validation opens none."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        config = auth_gateway([
            {"key-auth": [{"action": {}}]},
            {"rate-limit": [{"action": {"max": 10, "store": "redis"}}]},
        ])
        system = {"db": {"redis": {"host": "127.0.0.1", "port": listener.getsockname()[1],
                                   "namespace": "mg-validate"}}}
        directory = write(tmp_path / "cfg", config, system)
        before = files_under(directory)
        result = meshgate("validate", str(directory))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert files_under(directory) == before
        with pytest.raises(BlockingIOError):
            listener.accept()
