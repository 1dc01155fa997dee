"""The request path runs compiled (mypyc), and a stale build is noticed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshgate import _compiled
from tests.support.gateway import Gateway, proxy_config, wait_until

ROOT = Path(__file__).resolve().parents[1]


def test_setup_and_runtime_name_the_same_modules() -> None:
    done = subprocess.run([sys.executable, "setup.py", "--print-compiled"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    paths = done.stdout.split()
    names = [p.removeprefix("src/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")
             for p in paths]
    assert sorted(names) == sorted(_compiled.MODULES)
    for path in paths:
        assert (ROOT / path).is_file(), path


@pytest.mark.skipif(os.environ.get("MESHGATE_COMPILE") == "0", reason="pure-Python build")
def test_every_request_path_module_is_compiled() -> None:
    assert _compiled.compiled() == list(_compiled.MODULES)
    assert _compiled.stale() == []


@pytest.mark.skipif(not _compiled.compiled(), reason="pure-Python build")
def test_a_source_edited_after_the_build_is_reported() -> None:
    name = _compiled.compiled()[0]
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).with_name(Path(spec.origin).name.split(".", 1)[0] + ".py")
    before = source.stat()
    try:
        built = Path(spec.origin).stat().st_mtime
        os.utime(source, (before.st_atime, built + 60))
        assert name in _compiled.stale()
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert name not in _compiled.stale()


@pytest.mark.skipif(not _compiled.compiled(), reason="pure-Python build")
def test_a_worker_started_on_a_stale_build_says_so(tmp_path: Path) -> None:
    name = "meshgate.protocol.batch"          # imported by every worker
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    built = Path(spec.origin)
    source = built.with_name("batch.py")
    before = source.stat()
    gateway = None
    try:
        os.utime(source, (before.st_atime, built.stat().st_mtime + 60))
        gateway = Gateway(tmp_path, proxy_config("http://127.0.0.1:9"))
        wait_until(lambda: f"{name} was edited after it was compiled" in gateway.log())
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
        if gateway is not None:
            gateway.stop()
