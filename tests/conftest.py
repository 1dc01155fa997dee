"""Shared fixtures: real backends and real meshgate processes on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway

ROOT = Path(__file__).resolve().parent.parent


class Backend:
    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.backend", "--name", name, *args],
            stdout=subprocess.PIPE, cwd=ROOT, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"backend failed to start: {line!r}")
        self.port = int(line.split()[-1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def backend_factory() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def make(name: str = "backend", *args: str) -> Backend:
        b = Backend(name, *args)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture(scope="module")
def backend_mod() -> Iterator[Backend]:
    """One backend shared by a module's tests (with module-scoped gateways)."""
    b = Backend("backend")
    yield b
    b.stop()


@pytest.fixture
def backend(backend_factory: Callable[[str], Backend]) -> Backend:
    return backend_factory("backend")


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(config: dict, **kwargs: object) -> Gateway:
        directory = tmp_path / f"gw{len(started)}"
        directory.mkdir()
        gw = Gateway(directory, config, **kwargs)  # type: ignore[arg-type]
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()
