"""The ``anonymous`` condition: no auth policy identified a consumer (yet).

Theory of operation
-------------------
The negation of ``authenticated`` (EG's ``req.isUnauthenticated()``): true
while ``ex.vars`` holds no ``"consumer"``. No params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.conditions.authenticated import authenticated
from meshgate.config.base import ParamsModel
from meshgate.protocol.exchange import Exchange


class AnonymousParams(ParamsModel):
    pass


def anonymous(ex: Exchange) -> bool:
    return not authenticated(ex)


def build(params: AnonymousParams, compile_child: Callable[[Any], Predicate]) -> Predicate:
    return anonymous


CONDITIONS.add(ConditionSpec("anonymous", AnonymousParams, build,
                             "Matches when no consumer has been identified."))
