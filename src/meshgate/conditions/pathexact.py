"""The ``pathExact`` condition: the request path equals ``path``.

Theory of operation
-------------------
EG compared ``req.url`` -- path *and* query -- with ``path``, so a request
with any query string never matched ``/ip``. meshgate compares the path
without the query, unless the configured ``path`` itself contains ``?``, in
which case the whole request target must be equal (EG's behaviour). Both
sides are raw bytes as sent (no percent-decoding), as in EG.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.config.base import ParamsModel
from meshgate.protocol.exchange import Exchange


class PathExactParams(ParamsModel):
    path: str


def build(params: PathExactParams, compile_child: Callable[[Any], Predicate]) -> Predicate:
    target = params.path.encode("utf-8")
    if b"?" in target:
        def target_equals(ex: Exchange) -> bool:
            return ex.path == target
        return target_equals

    with_query = target + b"?"

    def path_equals(ex: Exchange) -> bool:
        path = ex.path
        return path == target or path.startswith(with_query)
    return path_equals


CONDITIONS.add(ConditionSpec("pathExact", PathExactParams, build,
                             "Matches when the request path (without query) equals `path`."))
