"""An example meshgate plugin: the ``stamp`` policy and the ``hasHeader`` condition.

``stamp`` adds a header (``x-stamp`` by default) with a fixed value both to
the request sent upstream and to the response. ``hasHeader`` holds when the
request carries the header ``header``. Each spec is named by an entry point
of the same name in ``pyproject.toml``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from meshgate.conditions import ConditionSpec, Predicate
from meshgate.config.base import ParamsModel
from meshgate.policies import BuildContext, PolicySpec
from meshgate.protocol.exchange import Exchange


class StampParams(ParamsModel):
    value: str = Field(description="The header's value")
    header: str = Field("x-stamp", description="The header's name")


class Stamp:
    """The action: built once per pipeline, called for every request."""

    def __init__(self, params: StampParams, ctx: BuildContext) -> None:
        self.pair = (params.header.lower().encode(), params.value.encode())

    def __call__(self, ex: Exchange) -> None:
        ex.headers = [*ex.headers, self.pair]       # to the upstream
        ex.add_response_headers([self.pair])        # and back to the client
        return None                                 # carry on with the pipeline


class HasHeaderParams(ParamsModel):
    header: str = Field(description="A request header name")


def has_header(params: HasHeaderParams, compile_child: Any) -> Predicate:
    wanted = params.header.lower().encode()
    return lambda ex: ex.header(wanted) is not None


STAMP = PolicySpec("stamp", StampParams, Stamp, "Add a header to the request and response")
HAS_HEADER = ConditionSpec("hasHeader", HasHeaderParams, has_header,
                           "The request carries a header")
