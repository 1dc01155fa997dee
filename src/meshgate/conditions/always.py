"""The ``always`` condition: every request matches (the default of a step).

Theory of operation
-------------------
A step without a condition never calls a predicate at all; ``always`` exists
so configs can say it explicitly (EG's schema default). No params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.config.base import ParamsModel
from meshgate.protocol.exchange import Exchange


class AlwaysParams(ParamsModel):
    pass


def always(ex: Exchange) -> bool:
    return True


def build(params: AlwaysParams, compile_child: Callable[[Any], Predicate]) -> Predicate:
    return always


CONDITIONS.add(ConditionSpec("always", AlwaysParams, build, "Matches every request."))
