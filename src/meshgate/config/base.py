"""Shared pieces of the config models: base classes and input normalisers.

Theory of operation
-------------------
Two base classes say whose section a model describes:

* ``EGModel`` -- a section Express Gateway defined. It declares every key
  EG documented (and the options EG passed through to a Node library, such
  as ioredis' or http-proxy's); anything else is a typo and rejected. EG
  validated with ajv (``coerceTypes``), so numbers are accepted where
  strings are expected, as ajv would coerce them;
* ``MeshModel`` -- a meshgate extension: unknown keys are rejected;
* ``ParamsModel`` -- params of a condition or policy: unknown keys rejected,
  and ajv's number-to-string coercion kept.

An unknown key is reported with the closest accepted one (``keys.py``).

EG accepts several spellings of the same thing (``paths: /a`` or ``paths:
[/a]``, one apiEndpoint object or a list of them); the ``BeforeValidator``
normalisers below fold them into one shape before pydantic checks types,
while advertising the accepted input shapes in the JSON Schema.

``relocate()`` re-roots the errors of a nested validation (a policy's action
params, a condition's params) under a location prefix, so a mistake deep in
an action is reported at ``...proxy[0].action.changeOrigin``; given the
params model, it names the key an unknown one was probably meant to be.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, NoReturn

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]


class EGModel(BaseModel):
    """A section of Express Gateway's own config format: its documented keys only."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              coerce_numbers_to_str=True)


class MeshModel(BaseModel):
    """A meshgate-only section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ParamsModel(BaseModel):
    """Params of a condition (or policy): typos are rejected, numbers coerce to strings."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              coerce_numbers_to_str=True)


def as_list(value: Any) -> Any:
    """One item or a list of items -> a list (``None`` stays ``None``)."""
    if value is None or isinstance(value, list):
        return value
    return [value]


def str_list(value: Any) -> Any:
    """``None`` -> ``[]``; ``'a'`` -> ``['a']``; a list is left to pydantic."""
    if value is None:
        return []
    return as_list(value)


def empty_if_none(value: Any) -> Any:
    """A section written with no body (``apiEndpoints:``) -> ``{}``."""
    return {} if value is None else value


StrList = Annotated[list[str], BeforeValidator(str_list, json_schema_input_type=str | list[str])]
Port = Annotated[int, Field(ge=0, le=65535)]
Millis = Annotated[int, Field(ge=0, description="milliseconds")]


def custom_error(kind: str, message: str, loc: Loc, value: Any) -> InitErrorDetails:
    """One error for ``ValidationError.from_exception_data``."""
    return {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}


def relocate(exc: ValidationError, prefix: Loc,
             model: type[BaseModel] | None = None) -> list[InitErrorDetails]:
    """The errors of a nested validation, re-rooted under ``prefix``; with the
    ``model`` that was validated, unknown keys are named (``keys.py``)."""
    if model is not None:
        from meshgate.config.keys import name_unknown_keys
        return [{**err, "loc": prefix + tuple(err["loc"])}
                for err in name_unknown_keys(exc, model)]
    out: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        ctx = {k: v for k, v in (err.get("ctx") or {}).items()
               if isinstance(v, (str, int, float))}
        # The message is already formatted; ctx rides along for ``errors.explain``.
        out.append({"type": PydanticCustomError(err["type"], err["msg"], ctx or None),
                    "loc": prefix + tuple(err["loc"]), "input": err.get("input")})
    return out


def raise_errors(title: str, errors: Sequence[InitErrorDetails]) -> None:
    """Raise the errors, if any, as one ValidationError."""
    if errors:
        raise ValidationError.from_exception_data(title, list(errors))


def raise_error(title: str, error: InitErrorDetails) -> NoReturn:
    raise ValidationError.from_exception_data(title, [error])
