"""expression: let a request through only when a CEL expression is true.

Theory of operation
-------------------
EG's expression policy ran arbitrary JavaScript (``jscode``) for its side
effects. meshgate does not run JavaScript; its ``expression`` policy is a
guard: the CEL ``expression`` (variables ``request``, ``headers``,
``consumer``; see ``conditions/_cel.py``) must be true, or the request is
answered ``statusCode`` (403) with ``message``. An evaluation error counts as
false, so the guard fails closed. A config still carrying ``jscode`` gets an
error saying so rather than being silently ignored.

The program is compiled when the config is loaded and shared with the
``expression`` condition; evaluating it creates no coroutine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from meshgate.conditions._cel import compile_cel
from meshgate.config.base import ParamsModel
from meshgate.policies import POLICIES, BuildContext, PolicySpec

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange


class ExpressionParams(ParamsModel):
    expression: str = Field(description="CEL expression that must be true")
    statusCode: int = Field(403, ge=400, le=599, description="Status when it is false")
    message: str = Field("Forbidden", description="Response body when it is false")

    @model_validator(mode="before")
    @classmethod
    def _no_javascript(cls, data: Any) -> Any:
        if isinstance(data, dict) and "jscode" in data:
            raise ValueError("meshgate does not run JavaScript (jscode); write the check as a "
                             "CEL `expression`, e.g. expression: 'request.method == \"GET\"'")
        return data

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_cel(value)
        return value


class Expression:
    def __init__(self, params: ExpressionParams, ctx: BuildContext) -> None:
        self.program = compile_cel(params.expression)
        self.status = params.statusCode
        self.body = params.message.encode()

    def __call__(self, ex: Exchange) -> bool | None:
        if self.program(ex):
            return None
        ex.respond(self.status, self.body)
        return True


POLICIES.add(PolicySpec("expression", ExpressionParams, Expression,
                        "Answer 403 unless a CEL expression over the request is true"))
