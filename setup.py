"""Build: the modules on the request path are compiled to C with mypyc.

Everything else (config, admin, CLI, policies that await) stays interpreted.
The compiled modules are ordinary, fully typed Python; mypyc turns their
classes into native ones (fixed attribute slots, direct method calls), which
takes about a quarter off the CPU meshgate spends per proxied request.

``MESHGATE_COMPILE=0`` builds pure Python. A compile that fails (no C
compiler, or types mypy refuses) is reported and the pure-Python modules are
used instead; tests/test_compiled.py fails on such a build, so it is noticed.
"""

import os
import sys

# The request path: what every proxied request runs through. Kept in step
# with meshgate/_compiled.py (tests/test_compiled.py checks).
COMPILED = [
    "meshgate/protocol/batch.py",
    "meshgate/protocol/exchange.py",
    "meshgate/protocol/h1_head.py",
    "meshgate/protocol/h1_response.py",
    "meshgate/protocol/h2_client.py",
    "meshgate/protocol/h2_client_conn.py",
    "meshgate/protocol/h2_conn.py",
    "meshgate/protocol/h2_head.py",
    "meshgate/protocol/h2_stream.py",
    "meshgate/protocol/h2_hpack.py",
    "meshgate/protocol/h2_server.py",
    "meshgate/protocol/hop.py",
    "meshgate/protocol/http1_client.py",
    "meshgate/protocol/http1_server.py",
    "meshgate/protocol/path.py",
    "meshgate/gateway/pipeline.py",
    "meshgate/policies/_forward.py",
    "meshgate/telemetry/metrics.py",
    "meshgate/upstream/pool.py",
    # a guarded cluster's requests: attempts, retries, ejection, balancing
    "meshgate/upstream/call.py",
    "meshgate/upstream/cluster.py",
    "meshgate/upstream/outlier.py",
    "meshgate/upstream/retry.py",
    "meshgate/upstream/balancer/__init__.py",
    "meshgate/upstream/balancer/_alias.py",
    "meshgate/upstream/balancer/_edf.py",
    "meshgate/upstream/balancer/_hashkey.py",
    "meshgate/upstream/balancer/least_request.py",
    "meshgate/upstream/balancer/maglev.py",
    "meshgate/upstream/balancer/peak_ewma.py",
    "meshgate/upstream/balancer/random.py",
    "meshgate/upstream/balancer/ring_hash.py",
    "meshgate/upstream/balancer/round_robin.py",
    # authentication and rate limiting per request
    "meshgate/policies/_auth.py",
    "meshgate/policies/_counters.py",
    "meshgate/policies/_credential_auth.py",
    "meshgate/policies/_limiter.py",
    "meshgate/store/cache.py",
]

if sys.argv[1:] == ["--print-compiled"]:       # for the Makefile's dependencies
    print(" ".join(f"src/{path}" for path in COMPILED))
    sys.exit(0)

from setuptools import setup  # noqa: E402


def _extensions() -> list:
    if os.environ.get("MESHGATE_COMPILE", "1") in ("0", "false", "no"):
        return []
    if not {"build_ext", "bdist_wheel", "editable_wheel", "build", "develop"} & set(sys.argv):
        return []                               # metadata only: nothing to compile
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("meshgate: mypyc not found, building pure Python", file=sys.stderr)
        return []
    try:
        extensions = mypycify([f"src/{path}" for path in COMPILED], opt_level="3",
                              group_name="meshgate")
    except SystemExit as exc:                   # mypy refused the types (a dependency's
        print(f"meshgate: mypyc failed ({exc}), building pure Python;"  # new stubs, say)
              " tests/test_compiled.py will fail until it compiles", file=sys.stderr)
        return []
    for ext in extensions:
        ext.optional = True                     # no compiler: the .py files serve
    return extensions


setup(ext_modules=_extensions(), package_dir={"": "src"})
