"""The ``pathMatch`` condition: the regex ``pattern`` is found in the request path.

Theory of operation
-------------------
As in EG, ``pattern`` is a JavaScript regex body, searched (not anchored)
with ``RegExp.prototype.match`` semantics; it is rewritten to Python syntax
and compiled once (as a bytes regex, so the raw path needs no decoding).

EG searched ``req.url``, path and query together. meshgate searches the path
without the query, unless the pattern mentions a literal ``?`` (``\\?`` or a
``[...?...]`` class) -- then it searches the whole target, as EG did.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.config.base import ParamsModel
from meshgate.config.jsregex import to_python_regex
from meshgate.protocol.exchange import Exchange

_MENTIONS_QUERY = re.compile(r"\\\?|\[[^\]]*\?[^\]]*\]")


class PathMatchParams(ParamsModel):
    pattern: Annotated[str, AfterValidator(to_python_regex)]


def _compile(pattern: str) -> Callable[[bytes], Any]:
    """The bound ``search`` of the pattern over bytes (str regex over latin-1 if needed)."""
    try:
        return re.compile(pattern.encode("utf-8")).search
    except re.error:    # str-only syntax such as \\uXXXX
        search = re.compile(pattern).search

        def search_decoded(data: bytes) -> Any:
            return search(data.decode("latin-1"))
        return search_decoded


def build(params: PathMatchParams, compile_child: Callable[[Any], Predicate]) -> Predicate:
    search = _compile(params.pattern)
    if _MENTIONS_QUERY.search(params.pattern):
        def target_matches(ex: Exchange) -> bool:
            return search(ex.path) is not None
        return target_matches

    def path_matches(ex: Exchange) -> bool:
        return search(ex.path_only) is not None
    return path_matches


CONDITIONS.add(ConditionSpec("pathMatch", PathMatchParams, build,
                             "Matches when the regex `pattern` is found in the request path."))
