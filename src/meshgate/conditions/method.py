"""The ``method`` condition: the request method is one of ``methods``.

Theory of operation
-------------------
``methods`` is one method or a list, as in EG (a comma-separated string is
accepted too). EG compared case-sensitively with upper-case names; meshgate
upper-cases the configured names once, and the codec hands the method over
upper-case, so the predicate is a single bytes comparison (or a frozenset
look-up for several methods). Any RFC 9110 token is accepted, not only EG's
seven, so extension methods (PURGE, PROPFIND...) can be matched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.config.base import ParamsModel
from meshgate.protocol.exchange import Exchange

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Z-]+$")


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    return value


class MethodParams(ParamsModel):
    methods: Annotated[
        list[str], BeforeValidator(_split, json_schema_input_type=str | list[str]),
        Field(min_length=1),
    ]

    @field_validator("methods")
    @classmethod
    def _tokens(cls, value: list[str]) -> list[str]:
        out = [m.strip().upper() for m in value]
        for method in out:
            if not _TOKEN.match(method):
                raise ValueError(f"expected an HTTP method name, got {method!r}")
        return out


def build(params: MethodParams, compile_child: Callable[[Any], Predicate]) -> Predicate:
    wanted = frozenset(m.encode("ascii") for m in params.methods)
    if len(wanted) == 1:
        (only,) = wanted

        def method_is(ex: Exchange) -> bool:
            return ex.method == only
        return method_is

    def method_in(ex: Exchange) -> bool:
        return ex.method in wanted
    return method_in


CONDITIONS.add(ConditionSpec("method", MethodParams, build,
                             "Matches when the request method is one of `methods`."))
