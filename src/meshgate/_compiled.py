"""Which request-path modules run compiled (mypyc), and whether a build is stale.

With an editable install the compiled extension sits next to its source; an
edit to the source does not reach it until the package is rebuilt
(``make install``). A worker logs such stale modules at start, so a
developer never measures or debugs yesterday's code unawares.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

# Kept in step with COMPILED in setup.py (tests/test_compiled.py checks).
MODULES = (
    "meshgate.protocol.batch",
    "meshgate.protocol.exchange",
    "meshgate.protocol.h1_head",
    "meshgate.protocol.h1_response",
    "meshgate.protocol.h2_client",
    "meshgate.protocol.h2_client_conn",
    "meshgate.protocol.h2_conn",
    "meshgate.protocol.h2_head",
    "meshgate.protocol.h2_stream",
    "meshgate.protocol.h2_hpack",
    "meshgate.protocol.h2_server",
    "meshgate.protocol.hop",
    "meshgate.protocol.http1_client",
    "meshgate.protocol.http1_server",
    "meshgate.protocol.path",
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


_ROOT = Path(__file__).parent


def _files(name: str) -> tuple[Path | None, Path]:
    """(the built extension if there is one, the source) of module ``name``.

    Found on disk next to the package, not through ``find_spec``, which
    would import the parent packages (``meshgate.store`` pulls in the whole
    consumer store) into a worker that never uses them.
    """
    parts = name.split(".")[1:]
    folder = _ROOT.joinpath(*parts[:-1]) if parts else _ROOT
    stem = parts[-1] if parts else "__init__"
    if (folder / stem).is_dir():                    # a package: its __init__
        folder, stem = folder / stem, "__init__"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        built = folder / f"{stem}{suffix}"
        if built.exists():
            return built, folder / f"{stem}.py"
    return None, folder / f"{stem}.py"


def compiled() -> list[str]:
    """The modules that import as extension modules."""
    return [name for name in MODULES if _files(name)[0] is not None]


def stale() -> list[str]:
    """Compiled modules whose source was edited after they were built."""
    out = []
    for name in MODULES:
        built, source = _files(name)
        if (built is not None and source.exists()
                and source.stat().st_mtime > built.stat().st_mtime):
            out.append(name)
    return out
