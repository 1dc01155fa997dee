"""The Admin API keeps the contract its OpenAPI document states.

Schemathesis reads ``/openapi.json`` from a running gateway and sends
generated requests -- valid, invalid and malformed bodies, odd path
parameters, unexpected methods, stateful sequences (create, then read,
change, delete) -- to every route, checking that nothing answers 5xx and
that every status, content type and body is one the document declares.
Valid-looking requests that name nothing (``/users/0``) are refused with a
documented 404 / 422, which is why ``positive_data_acceptance`` is left out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import proxy_config

pytestmark = pytest.mark.slow


def test_every_route_keeps_the_documented_contract(gateway_factory: Any,
                                                   tmp_path: Path) -> None:
    config = proxy_config("http://127.0.0.1:9", policies=[{"key-auth": None}])
    gw = gateway_factory(config)
    runner = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if runner is None:
        pytest.skip("schemathesis is not installed (make test installs it)")
    done = subprocess.run(
        [runner, "run", f"{gw.admin_url}/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", "25",
         "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
