"""headers: add request headers for the upstream (Express Gateway's headers policy).

``forwardHeaders`` maps a header name to a template (``${req.ip}``,
``${consumer.id}``, or a constant); each is set on the request, replacing a
header of the same name, and ``headersPrefix`` is put before every name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from meshgate.gateway.template import compile_template, header_value
from meshgate.policies import POLICIES, BuildContext, PolicySpec

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange


class HeadersParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    headersPrefix: str = Field("", description="Prefix for every added header name")
    forwardHeaders: dict[str, str] = Field(default_factory=dict,
                                           description="Header name -> value template")

    @field_validator("forwardHeaders")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for template in value.values():
            compile_template(template)
        return value


class AddHeaders:
    def __init__(self, params: HeadersParams, ctx: BuildContext) -> None:
        self.rules = [((params.headersPrefix + name).lower().encode(), compile_template(t))
                      for name, t in params.forwardHeaders.items()]
        self.names = frozenset(name for name, _ in self.rules)

    def __call__(self, ex: Exchange) -> None:
        names = self.names
        headers = [h for h in ex.headers if h[0] not in names]
        for name, render in self.rules:
            headers.append((name, header_value(render(ex))))
        ex.headers = headers


POLICIES.add(PolicySpec("headers", HeadersParams, AddHeaders,
                        "Add request headers for the upstream from templates"))
