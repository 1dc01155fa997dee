"""Which request-path modules run compiled (mypyc), and whether a build is stale.

With an editable install the compiled extension sits next to its source; an
edit to the source does not reach it until the package is rebuilt
(``make install``). A worker logs such stale modules at start, so a
developer never measures or debugs yesterday's code unawares.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

# Kept in step with COMPILED in setup.py (tests/test_compiled.py checks).
MODULES = (
    "meshgate.protocol.batch",
    "meshgate.protocol.exchange",
    "meshgate.protocol.h1_head",
    "meshgate.protocol.h1_response",
    "meshgate.protocol.hop",
    "meshgate.protocol.http1_client",
    "meshgate.protocol.http1_server",
    "meshgate.gateway.pipeline",
    "meshgate.policies._forward",
    "meshgate.telemetry.metrics",
    "meshgate.upstream.pool",
    "meshgate.upstream.call",
    "meshgate.upstream.cluster",
    "meshgate.upstream.outlier",
    "meshgate.upstream.retry",
    "meshgate.upstream.balancer",
    "meshgate.upstream.balancer._alias",
    "meshgate.upstream.balancer._edf",
    "meshgate.upstream.balancer._hashkey",
    "meshgate.upstream.balancer.least_request",
    "meshgate.upstream.balancer.maglev",
    "meshgate.upstream.balancer.peak_ewma",
    "meshgate.upstream.balancer.random",
    "meshgate.upstream.balancer.ring_hash",
    "meshgate.upstream.balancer.round_robin",
    "meshgate.policies._auth",
    "meshgate.policies._counters",
    "meshgate.policies._credential_auth",
    "meshgate.policies._limiter",
    "meshgate.store.cache",
)


def compiled() -> list[str]:
    """The modules that import as extension modules."""
    out = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            out.append(name)
    return out


def stale() -> list[str]:
    """Compiled modules whose source was edited after they were built."""
    out = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        built = Path(spec.origin)
        source = built.with_name(built.name.split(".", 1)[0] + ".py")   # or __init__.py
        if (isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
                and source.exists() and source.stat().st_mtime > built.stat().st_mtime):
            out.append(name)
    return out
