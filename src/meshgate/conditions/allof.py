"""The ``allOf`` condition: every nested condition holds (logical AND).

Theory of operation
-------------------
``{name: allOf, conditions: [...]}`` as in EG. The nested conditions are
``ConditionUse`` fields, so they are validated (and located in errors)
recursively by the config loader, and compiled once here. The predicate
short-circuits on the first false child; one or two children get a closure
without a loop. An empty list holds for every request, like JavaScript's
``[].every``.
"""

from __future__ import annotations

from collections.abc import Callable

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.conditions.always import always
from meshgate.config.base import ParamsModel
from meshgate.config.pipeline import ConditionUse
from meshgate.protocol.exchange import Exchange


class AllOfParams(ParamsModel):
    conditions: list[ConditionUse]


def build(params: AllOfParams,
          compile_child: Callable[[ConditionUse], Predicate]) -> Predicate:
    preds = tuple(compile_child(c) for c in params.conditions)
    if not preds:
        return always
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        first, second = preds

        def both(ex: Exchange) -> bool:
            return first(ex) and second(ex)
        return both

    def every(ex: Exchange) -> bool:
        for pred in preds:  # noqa: SIM110 -- no generator per request (hot path)
            if not pred(ex):
                return False
        return True
    return every


CONDITIONS.add(ConditionSpec("allOf", AllOfParams, build,
                             "Matches when every one of `conditions` matches."))
