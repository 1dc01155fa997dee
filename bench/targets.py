"""Generated configs and command lines for every benchmark target."""

from __future__ import annotations

import atexit
import getpass
import grp
import os
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEMPLATES = HERE / "templates"
PATH = "/hello"  # what wrk requests; every proxy forwards it to the backend unchanged


@dataclass
class Target:
    key: str
    label: str
    argv: list[str]
    port: int
    env: dict[str, str] | None = None
    cwd: Path | None = None
    ready_timeout: float = 30.0
    admin_url: str | None = None  # must answer 200 before the proxied path is tried
    headers: dict[str, str] | None = None  # sent with every request (wrk -H)
    setup: Callable[[Target], None] | None = None  # once the admin API answers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _render(name: str, dest: Path, **values: object) -> Path:
    text = (TEMPLATES / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key.upper()}@", str(value))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    return dest


def _nginx(key: str, label: str, template: str, work: Path, **values: object) -> Target:
    prefix = work / key
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    # As root, workers would drop to "nobody"; keep them the invoking user.
    user = ""
    if os.geteuid() == 0:
        user = f"user {getpass.getuser()} {grp.getgrgid(os.getgid()).gr_name};"
    port = free_port()
    conf = _render(template, prefix / "nginx.conf", prefix=prefix, port=port, user=user, **values)
    argv = ["nginx", "-e", "stderr", "-p", f"{prefix}/", "-c", str(conf)]
    return Target(key, label, argv, port)


def backend(work: Path, body: str) -> Target:
    return _nginx("backend", "backend direct (nginx)", "nginx-backend.conf", work,
                  body=body.replace("\n", "\\n"))


def nginx_proxy(work: Path, backend_port: int) -> Target:
    return _nginx("nginx", "nginx proxy", "nginx-proxy.conf", work, backend_port=backend_port)


def haproxy(work: Path, backend_port: int) -> Target:
    port = free_port()
    conf = _render("haproxy.cfg", work / "haproxy" / "haproxy.cfg", port=port,
                   backend_port=backend_port)
    return Target("haproxy", "HAProxy", ["haproxy", "-db", "-f", str(conf)], port)


def _dump(path: Path, data: dict[str, Any]) -> None:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False))


def gateway_config(port: int, admin_port: int, backend_port: int,
                   endpoints: int = 1) -> dict[str, Any]:
    """EG-format gateway.config.yml; with endpoints > 1, the matching one comes last."""
    api = {f"svc{i}": {"host": f"svc{i}.example.com", "paths": [f"/svc{i}/*"]}
           for i in range(endpoints - 1)}
    api["api"] = {"host": "*", "paths": ["/*"]}
    names = list(api)
    chunk = 1000
    pipelines = {f"pipeline{n // chunk}": {
                     "apiEndpoints": names[n : n + chunk],
                     "policies": [{"proxy": [{"action": {"serviceEndpoint": "backend"}}]}]}
                 for n in range(0, len(names), chunk)}
    return {
        "http": {"port": port, "hostname": "127.0.0.1"},
        "admin": {"port": admin_port, "host": "127.0.0.1"},
        "apiEndpoints": api,
        "serviceEndpoints": {"backend": {"url": f"http://127.0.0.1:{backend_port}"}},
        "policies": ["proxy"],
        "pipelines": pipelines,
    }


def meshgate_bin() -> Path:
    local = Path(sys.prefix) / "bin" / "meshgate"
    return local if local.exists() else ROOT / ".venv" / "bin" / "meshgate"


def meshgate(work: Path, backend_port: int, endpoints: int = 1) -> Target:
    key = "meshgate" if endpoints == 1 else f"meshgate-{endpoints // 1000}k"
    label = "meshgate" if endpoints == 1 else f"meshgate, {endpoints:,} apiEndpoints"
    port, admin = free_port(), free_port()
    config_dir = work / key
    shutil.rmtree(config_dir, ignore_errors=True)
    _dump(config_dir / "gateway.config.yml", gateway_config(port, admin, backend_port, endpoints))
    argv = [str(meshgate_bin()), "run", str(config_dir), "--workers", "1"]
    return Target(key, label, argv, port, ready_timeout=120.0,
                  admin_url=f"http://127.0.0.1:{admin}/ready")


def meshgate_auth(work: Path, backend_port: int, redis: bool) -> Target:
    """The bare config behind key-auth and a rate limit that never trips.

    The consumer store is SQLite, or Redis (with Redis-shared limits) when
    ``redis``; the limit (1e9 a minute) is high so every request is counted
    and admitted, which is what the benchmark should cost.
    """
    key = "meshgate-auth-redis" if redis else "meshgate-auth"
    label = ("meshgate, key-auth + rate-limit (Redis)" if redis
             else "meshgate, key-auth + rate-limit")
    port, admin = free_port(), free_port()
    config_dir = work / key
    shutil.rmtree(config_dir, ignore_errors=True)
    config = gateway_config(port, admin, backend_port)
    config["policies"] = ["key-auth", "rate-limit", "proxy"]
    limit: dict[str, Any] = {"max": 1_000_000_000, "windowMs": 60000}
    for pipeline in config["pipelines"].values():
        pipeline["policies"] = [{"key-auth": None}, {"rate-limit": [{"action": limit}]},
                                *pipeline["policies"]]
    _dump(config_dir / "gateway.config.yml", config)
    system: dict[str, Any] = {"db": {"redis": {"emulate": True}}}
    if redis:
        system = {"db": {"redis": {"host": "127.0.0.1", "port": 6379,
                                   "namespace": _redis_namespace()}}}
    _dump(config_dir / "system.config.yml", system)
    argv = [str(meshgate_bin()), "run", str(config_dir), "--workers", "1"]
    env = dict(os.environ, MESHGATE_DATA_DIR=str(config_dir / "data"))
    admin_url = f"http://127.0.0.1:{admin}"
    return Target(key, label, argv, port, env=env, ready_timeout=60.0,
                  admin_url=f"{admin_url}/ready", setup=lambda t: _create_key(t, admin_url))


def _redis_namespace() -> str:
    """A fresh namespace in the shared Redis, emptied when the benchmark exits."""
    import redis

    namespace = f"meshgate-bench-{os.getpid()}-{len(_NAMESPACES)}"
    if not _NAMESPACES:       # the client is made now: at exit it could not register itself
        atexit.register(_drop_namespaces, redis.Redis(host="127.0.0.1", port=6379,
                                                      socket_timeout=5))
    _NAMESPACES.append(namespace)
    return namespace


_NAMESPACES: list[str] = []


def _drop_namespaces(client: Any) -> None:
    import redis

    try:
        for namespace in _NAMESPACES:
            keys = list(client.scan_iter(f"{namespace}:*", count=1000))
            if keys:
                client.delete(*keys)
    except redis.RedisError as exc:
        print(f"could not remove the benchmark's Redis keys: {exc}", file=sys.stderr)


def _create_key(target: Target, admin_url: str) -> None:
    """A user and a key-auth credential through the Admin API; wrk sends the key."""
    import httpx

    user = httpx.post(f"{admin_url}/users", json={
        "username": "bench", "firstname": "Bench", "lastname": "Mark"}, timeout=10)
    user.raise_for_status()
    cred = httpx.post(f"{admin_url}/credentials", json={
        "consumerId": "bench", "type": "key-auth", "credential": {}}, timeout=10)
    cred.raise_for_status()
    body = cred.json()
    target.headers = {"Authorization": f"apiKey {body['keyId']}:{body['keySecret']}"}


def express_gateway(work: Path, eg_prefix: Path, backend_port: int) -> Target:
    """EG laid out as `eg gateway create` does: config/, its models/, starter system config."""
    package = eg_prefix / "node_modules" / "express-gateway"
    config_dir = work / "eg-config"
    shutil.rmtree(config_dir, ignore_errors=True)
    port, admin = free_port(), free_port()
    _dump(config_dir / "gateway.config.yml", gateway_config(port, admin, backend_port))
    starter = package / "bin/generators/gateway/templates/basic/config/system.config.yml"
    shutil.copy(starter, config_dir / "system.config.yml")
    shutil.copytree(package / "lib/config/models", config_dir / "models")
    argv = ["node", "-e", "require('express-gateway')().load(process.argv[1]).run()",
            str(config_dir)]
    env = dict(os.environ, NODE_ENV="production", LOG_LEVEL="warn")
    return Target("eg", "Express Gateway", argv, port, env=env, cwd=eg_prefix,
                  ready_timeout=60.0)
