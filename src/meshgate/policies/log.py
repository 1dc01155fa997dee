"""log: write a templated message per request (Express Gateway's log policy).

``message`` is a template such as ``${req.method} ${req.originalUrl}``; it is
compiled once and logged at INFO on the ``meshgate.log`` logger.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from meshgate.gateway.template import compile_template
from meshgate.policies import POLICIES, BuildContext, PolicySpec

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange

logger = logging.getLogger("meshgate.log")


class LogParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field("${req.method} ${req.originalUrl}",
                         description="Template over req, consumer, apiEndpoint, pipeline")

    @field_validator("message")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_template(value)
        return value


class Log:
    def __init__(self, params: LogParams, ctx: BuildContext) -> None:
        self.render = compile_template(params.message)

    def __call__(self, ex: Exchange) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s", self.render(ex))


POLICIES.add(PolicySpec("log", LogParams, Log, "Log a templated message per request"))
