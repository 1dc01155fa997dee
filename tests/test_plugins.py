"""The policy registry imports only what is asked for, and still finds every name;
plugin packages add policies and conditions through entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.gateway import proxy_config

_PROBE = """
import json, sys
from meshgate.policies import POLICIES
from meshgate.conditions import CONDITIONS
first = POLICIES.get("proxy") is not None and CONDITIONS.get("pathExact") is not None
loaded = sorted(m for m in sys.modules if m.startswith("meshgate.policies."))
jwt = POLICIES.get("jwt") is not None          # module jwt_auth: found by the full scan
negate = CONDITIONS.get("not") is not None     # module negate
missing = POLICIES.get("no-such-policy") is None
print(json.dumps({"first": first, "loaded": loaded, "jwt": jwt, "negate": negate,
                  "missing": missing, "all": len(POLICIES.names())}))
"""


def test_get_imports_the_named_module_only_then_falls_back_to_the_package() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          check=True, timeout=60)
    out = json.loads(done.stdout)
    assert out["first"]
    assert "meshgate.policies.proxy" in out["loaded"]
    assert "meshgate.policies.jwt_auth" not in out["loaded"]     # not imported for proxy
    assert "meshgate.policies.oauth2" not in out["loaded"]
    assert out["jwt"] and out["negate"] and out["missing"]
    assert out["all"] >= 15


_WORKER_START = """
import json, sys
from meshgate import _compiled
from meshgate.policies import POLICIES
POLICIES.get("proxy")
_compiled.stale()                  # what a worker does at start
print(json.dumps(sorted(m for m in sys.modules
                        if m.startswith(("meshgate.store", "cryptography")))))
"""


def test_a_proxy_only_worker_loads_no_consumer_store() -> None:
    """Neither the stale-build check nor the proxy pulls in the store (and cryptography):
    a worker's memory is what its config uses."""
    done = subprocess.run([sys.executable, "-c", _WORKER_START], capture_output=True,
                          text=True, check=True, timeout=60)
    assert json.loads(done.stdout) == []


_WHITELIST_PROBE = """
import json, sys
from meshgate.config.loader import load_config
load_config(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("meshgate.policies."))))
"""


def test_the_policies_whitelist_is_checked_without_importing_what_it_names() -> None:
    """EG's basic starter whitelists eight policies and uses none: none is imported."""
    basic = Path(__file__).parent / "data" / "eg-starters" / "basic"
    done = subprocess.run([sys.executable, "-c", _WHITELIST_PROBE, str(basic)],
                          capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(done.stdout) == []


# -- out-of-tree plugins: a real package, installed with pip ---------------------------
PLUGIN_SOURCE = Path(__file__).parent / "data" / "plugin-example"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/data/plugin-example pip-installed into a folder of its own (offline)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target),
                    str(PLUGIN_SOURCE)], check=True, capture_output=True, timeout=120)
    return str(target)


def _env(path: str) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])}


def _stamp_config(upstream: str) -> dict[str, Any]:
    config = proxy_config(upstream, policies=[{"stamp": [{
        "condition": {"name": "hasHeader", "header": "x-want-stamp"},
        "action": {"value": "from-plugin"}}]}])
    return config


def test_a_pip_installed_plugin_policy_and_condition_run_in_a_gateway(
        plugin_path: str, backend: Any, gateway_factory: Any) -> None:
    gw = gateway_factory(_stamp_config(backend.url), env=_env(plugin_path))
    stamped = httpx.get(gw.url + "/echo", headers={"x-want-stamp": "1"}, timeout=5)
    assert stamped.status_code == 200
    assert stamped.headers["x-stamp"] == "from-plugin"                 # the response
    seen = {k.lower(): v for k, v in stamped.json()["headers"]}
    assert seen["x-stamp"] == "from-plugin"                            # the upstream
    plain = httpx.get(gw.url + "/echo", timeout=5)                   # condition false
    assert plain.status_code == 200 and "x-stamp" not in plain.headers
    assert "x-stamp" not in {k.lower() for k, _ in plain.json()["headers"]}


_PLUGIN_PROBE = """
import json, sys
from meshgate.policies import POLICIES
from meshgate.conditions import CONDITIONS
POLICIES.get("proxy")
before = "meshgate_plugin_example" in sys.modules
stamp = POLICIES.get("stamp")
has = CONDITIONS.get("hasHeader")
print(json.dumps({"before": before, "stamp": stamp.name, "has": has.name,
                  "all_builtins": "meshgate.policies.jwt_auth" in sys.modules,
                  "names": "stamp" in POLICIES.names()}))
"""


def test_plugins_are_imported_only_when_named(plugin_path: str) -> None:
    done = subprocess.run([sys.executable, "-c", _PLUGIN_PROBE], capture_output=True,
                          text=True, check=True, timeout=60,
                          env={**os.environ, **_env(plugin_path)})
    out = json.loads(done.stdout)
    assert out["before"] is False            # a built-in name never loads a plugin
    assert (out["stamp"], out["has"]) == ("stamp", "hasHeader")
    assert out["all_builtins"] is False      # nor does a plugin's name load every built-in
    assert out["names"]


def _validate(directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshgate", "validate", str(directory)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_validate_knows_plugin_names_and_their_typos(plugin_path: str, tmp_path: Path) -> None:
    config = _stamp_config("http://127.0.0.1:9")
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    ok = _validate(tmp_path, _env(plugin_path))
    assert ok.returncode == 0, ok.stderr
    typo = yaml.safe_dump(config, sort_keys=False).replace("stamp", "stmap")
    (tmp_path / "gateway.config.yml").write_text(typo)
    bad = _validate(tmp_path, _env(plugin_path))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "unknown policy 'stmap'; did you mean 'stamp'?" in bad.stderr
    missing = _validate(tmp_path, {})            # not installed: a plain unknown name
    assert missing.returncode == 2 and "unknown policy 'stmap'" in missing.stderr


def test_a_broken_plugin_is_a_located_config_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[meshgate.policies]\nbroken = no_such_module:SPEC\n")
    config = proxy_config("http://127.0.0.1:9", policies=[{"broken": None}])
    directory = tmp_path / "cfg"
    directory.mkdir()
    (directory / "gateway.config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = _validate(directory, _env(str(site)))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = done.stderr.strip().splitlines()[0]
    assert "gateway.config.yml:" in message
    assert "policy 'broken' from plugin 'broken-plugin' cannot be loaded" in message
    assert "ModuleNotFoundError" in message
