"""The policy registry imports only what is asked for, and still finds every name."""

from __future__ import annotations

import json
import subprocess
import sys

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
