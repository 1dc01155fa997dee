"""Conditions: predicates over an Exchange, one module each, registered by name.

A condition spec names its parameter model and a ``build(params, compile)``
factory returning ``predicate(exchange) -> bool``; combinators (allOf, not, ...)
compile their children with ``compile``. Predicates are plain closures made
once per Snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from meshgate.plugins import Registry

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange

Predicate = Callable[["Exchange"], bool]


@dataclass(frozen=True)
class ConditionSpec:
    name: str
    params: type[BaseModel]
    # build(params, compile_child) -> predicate; compile_child turns a nested
    # ConditionUse (see config.model) into its predicate.
    build: Callable[[Any, Callable[[Any], Predicate]], Predicate]
    description: str = ""


CONDITIONS: Registry[ConditionSpec] = Registry("condition", "meshgate.conditions")
