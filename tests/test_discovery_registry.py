"""The registry discovery provider against a real registry process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.discovery import DISCOVERY, ProviderContext
from meshgate.discovery.registry import RegistryParams, RegistryProvider, registry_url
from tests.conftest import ROOT
from tests.support.aio import eventually, run
from tests.support.gateway import free_port

SERVE = ("import asyncio, sys\n"
         "from meshgate.registry.server import serve_registry\n"
         "asyncio.run(serve_registry(port=int(sys.argv[1]), data_dir=sys.argv[2]))\n")


class RegistryProcess:
    """``serve_registry`` in its own process, restartable on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> RegistryProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(self.port), str(self.data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"registry did not start: {line}{self.process.stdout.read()}")
        token = (self.data_dir / "operator.token").read_text().strip()
        self.headers = {"authorization": f"Bearer {token}"}
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def persisted(self) -> set[str]:
        """Instance ids in the registry's snapshot file (written within 100 ms)."""
        path = self.data_dir / "registry.json"
        text = path.read_text() if path.exists() else ""
        return {i for i in ("u1", "u2", "u3") if f'"{i}"' in text}

    def register(self, ident: str, port: int, **extra: Any) -> None:
        body = {"address": "127.0.0.1", "port": port, "ttl": 60000, **extra}
        httpx.put(f"{self.url}/v1/services/users/instances/{ident}", json=body,
                  timeout=5, headers=self.headers).raise_for_status()

    def deregister(self, ident: str) -> None:
        httpx.delete(f"{self.url}/v1/services/users/instances/{ident}",
                     timeout=5, headers=self.headers).raise_for_status()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    r = RegistryProcess(tmp_path / "registry").start()
    yield r
    r.kill()


def provider(url: str, **params: Any) -> RegistryProvider:
    spec = DISCOVERY.get("registry")
    assert spec is not None
    built = spec.build(spec.params.model_validate({"url": url, **params}),
                       ProviderContext(service="users"))
    assert isinstance(built, RegistryProvider)
    return built


def ids(p: RegistryProvider) -> list[str] | None:
    return None if p.last is None else sorted(s.id for s in p.last)


def test_registry_url_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHGATE_REGISTRY", raising=False)
    none = RegistryParams()
    assert registry_url(none, ProviderContext(service="s")) == "http://127.0.0.1:8500"
    monkeypatch.setenv("MESHGATE_REGISTRY", "http://reg:1/")
    assert registry_url(none, ProviderContext(service="s")) == "http://reg:1"
    ctx = ProviderContext(service="s", registry_url="http://sys:2")
    assert registry_url(none, ctx) == "http://sys:2"
    assert registry_url(RegistryParams(url="http://own:3"), ctx) == "http://own:3"


def test_set_follows_registrations(registry: RegistryProcess) -> None:
    async def scenario() -> None:
        registry.register("u1", 9001, zone="z1", version="v1", tags=["a"], metadata={"k": 1})
        p = provider(registry.url)
        await p.start()
        try:
            await eventually(lambda: ids(p) == ["u1"])
            assert p.last is not None
            first = p.last[0]
            assert (first.host, first.port, first.zone, first.version, first.healthy) == (
                "127.0.0.1", 9001, "z1", "v1", True)
            assert dict(first.metadata) == {"k": "1", "tags": "a"}
            registry.register("u2", 9002, scheme="https")
            await eventually(lambda: ids(p) == ["u1", "u2"], timeout=1)
            assert p.last[1].scheme == "https"
            registry.deregister("u1")
            await eventually(lambda: ids(p) == ["u2"], timeout=1)
            registry.deregister("u2")
            await eventually(lambda: ids(p) == [], timeout=1)
            assert not p.stale
        finally:
            await p.stop()

    run(scenario())


def test_critical_instances(registry: RegistryProcess) -> None:
    async def scenario() -> None:
        registry.register("steady", 9001)
        registry.register("silent", 9002, ttl=200)        # no heartbeats: turns critical
        everything = provider(registry.url)
        passing = provider(registry.url, onlyPassing=True)
        await everything.start()
        await passing.start()
        try:
            def health() -> dict[str, bool]:
                return {s.id: s.healthy for s in everything.last or []}

            await eventually(lambda: health() == {"steady": True, "silent": False})
            await eventually(lambda: ids(passing) == ["steady"])
        finally:
            await everything.stop()
            await passing.stop()

    run(scenario())


def test_registry_down_keeps_the_set_then_resyncs(registry: RegistryProcess) -> None:
    async def scenario() -> None:
        registry.register("u1", 9001)
        registry.register("u2", 9002)
        p = provider(registry.url)
        await p.start()
        try:
            await eventually(lambda: ids(p) == ["u1", "u2"])
            await eventually(lambda: registry.persisted() == {"u1", "u2"})
            registry.kill()
            await eventually(lambda: p.stale, timeout=2)
            assert ids(p) == ["u1", "u2"] and p.error
            errors = p.errors
            await eventually(lambda: p.errors > errors)        # it keeps retrying
            assert ids(p) == ["u1", "u2"]
            registry.start()           # same port and data dir: the instances come back
            registry.register("u3", 9003)
            await eventually(lambda: ids(p) == ["u1", "u2", "u3"] and not p.stale, timeout=8)
            assert p.error is None
            registry.deregister("u1")
            await eventually(lambda: ids(p) == ["u2", "u3"], timeout=1)
        finally:
            await p.stop()

    run(scenario())


def test_instance_weight_comes_from_metadata() -> None:
    from meshgate.discovery.registry import instance_spec

    base = {"address": "127.0.0.1", "port": 80, "status": "passing"}
    assert instance_spec({**base, "metadata": {"weight": "5"}}).weight == 5
    assert instance_spec({**base, "metadata": {"weight": "999"}}).weight == 128
    assert instance_spec({**base, "metadata": {"weight": "x"}}).weight == 1
    assert instance_spec(base).weight == 1
