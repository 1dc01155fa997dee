"""terminate: answer with a fixed status and message (Express Gateway's terminate)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from meshgate.policies import POLICIES, BuildContext, PolicySpec

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange


class TerminateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    statusCode: int = Field(400, ge=100, le=599, description="Status code to answer with")
    message: str = Field("Terminated", description="Response body")


class Terminate:
    def __init__(self, params: TerminateParams, ctx: BuildContext) -> None:
        self.status = params.statusCode
        self.body = params.message.encode()

    def __call__(self, ex: Exchange) -> bool:
        ex.respond(self.status, self.body)
        return True


POLICIES.add(PolicySpec("terminate", TerminateParams, Terminate,
                        "Answer with a fixed status and message"))
