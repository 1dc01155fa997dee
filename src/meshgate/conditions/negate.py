"""The ``not`` condition: the nested condition does not hold.

Theory of operation
-------------------
``{name: not, condition: {...}}`` as in EG -- one nested ``condition``, not
a list. (The module is ``negate`` because ``not`` is a Python keyword; the
registered name is ``not``.)
"""

from __future__ import annotations

from collections.abc import Callable

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.config.base import ParamsModel
from meshgate.config.pipeline import ConditionUse
from meshgate.protocol.exchange import Exchange


class NotParams(ParamsModel):
    condition: ConditionUse


def build(params: NotParams, compile_child: Callable[[ConditionUse], Predicate]) -> Predicate:
    inner = compile_child(params.condition)

    def negated(ex: Exchange) -> bool:
        return not inner(ex)
    return negated


CONDITIONS.add(ConditionSpec("not", NotParams, build,
                             "Matches when the nested `condition` does not match."))
