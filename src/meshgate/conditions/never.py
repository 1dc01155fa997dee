"""The ``never`` condition: no request matches (handy to switch a step off).

Theory of operation
-------------------
The constant-false twin of ``always``; no params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.config.base import ParamsModel
from meshgate.protocol.exchange import Exchange


class NeverParams(ParamsModel):
    pass


def never(ex: Exchange) -> bool:
    return False


def build(params: NeverParams, compile_child: Callable[[Any], Predicate]) -> Predicate:
    return never


CONDITIONS.add(ConditionSpec("never", NeverParams, build, "Matches no request."))
