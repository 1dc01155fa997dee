"""The ``expression`` condition: a CEL expression over the request and consumer is true.

Theory of operation
-------------------
EG evaluated a JavaScript expression against its request context; meshgate
evaluates CEL instead (see ``_cel`` for the variables: ``request``,
``headers``, ``consumer``). The expression is parsed and checked when the
config is loaded -- a syntax error, an unknown variable or request field is a
config error located at the ``expression`` key -- and the compiled program
is shared by every use of the same text. A CEL runtime error (a missing map
key, a type mismatch) makes the condition false, as a thrown JavaScript
error made EG's false.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.conditions._cel import compile_cel
from meshgate.config.base import ParamsModel


class ExpressionParams(ParamsModel):
    expression: str = Field(description="CEL expression over request, headers and consumer")

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_cel(value)
        return value


def build(params: ExpressionParams, compile_child: Callable[[Any], Predicate]) -> Predicate:
    return compile_cel(params.expression)


CONDITIONS.add(ConditionSpec("expression", ExpressionParams, build,
                             "Matches when the CEL `expression` is true."))
