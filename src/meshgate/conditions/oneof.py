"""The ``oneOf`` condition: at least one nested condition holds (logical OR).

Theory of operation
-------------------
``{name: oneOf, conditions: [...]}`` as in EG, where it meant "any of"
(JavaScript's ``some``), not "exactly one". Nested conditions are validated
recursively by the loader and compiled once here; the predicate stops at the
first true child. An empty list matches nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.conditions.never import never
from meshgate.config.base import ParamsModel
from meshgate.config.pipeline import ConditionUse
from meshgate.protocol.exchange import Exchange


class OneOfParams(ParamsModel):
    conditions: list[ConditionUse]


def build(params: OneOfParams,
          compile_child: Callable[[ConditionUse], Predicate]) -> Predicate:
    preds = tuple(compile_child(c) for c in params.conditions)
    if not preds:
        return never
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        first, second = preds

        def either(ex: Exchange) -> bool:
            return first(ex) or second(ex)
        return either

    def some(ex: Exchange) -> bool:
        for pred in preds:  # noqa: SIM110 -- no generator per request (hot path)
            if pred(ex):
                return True
        return False
    return some


CONDITIONS.add(ConditionSpec("oneOf", OneOfParams, build,
                             "Matches when at least one of `conditions` matches."))
