"""The ``authenticated`` condition: an auth policy identified a consumer.

Theory of operation
-------------------
EG asked Passport (``req.isAuthenticated()``); in meshgate an auth policy
(key-auth, basic-auth, jwt, oauth2) that accepts a credential puts the
consumer in ``ex.vars["consumer"]``, so the test is one dictionary look-up.
Place the condition after the auth policy in the pipeline. No params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.config.base import ParamsModel
from meshgate.protocol.exchange import Exchange


class AuthenticatedParams(ParamsModel):
    pass


def authenticated(ex: Exchange) -> bool:
    found = ex.vars
    return found is not None and found.get("consumer") is not None


def build(params: AuthenticatedParams, compile_child: Callable[[Any], Predicate]) -> Predicate:
    return authenticated


CONDITIONS.add(ConditionSpec("authenticated", AuthenticatedParams, build,
                             "Matches when an auth policy identified a consumer."))
