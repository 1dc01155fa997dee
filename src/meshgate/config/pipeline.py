"""Pipelines: ordered policies, each a list of (condition, action) steps.

Theory of operation
-------------------
In the file a pipeline's ``policies`` is a list of single-key maps::

    policies:
      - key-auth:                          # null: one step, default action
      - proxy:
          - condition: {name: pathExact, path: /ip}
            action: {serviceEndpoint: httpbin}
          - action: {serviceEndpoint: backend}

Validation turns every item into a ``PolicyUse(name, steps)`` and every step
into a ``StepUse(condition, action)``, where ``action`` is an instance of the
policy spec's own ``params`` model (looked up in ``POLICIES``) and
``condition`` a ``ConditionUse(name, params)`` validated with the condition
spec's ``params`` model (looked up in ``CONDITIONS``) or ``None`` for
"always". Combinators (allOf, oneOf, not) declare ``ConditionUse`` fields in
their params models, so nested conditions are validated -- and located in
errors -- by the same code, recursively.

These three classes are plain frozen dataclasses that carry their own
pydantic hooks: a validator taking the raw YAML shape (errors of nested
validations are re-rooted under the right location) and a serializer giving
that shape back. ``ConditionUse.compile()`` builds the predicate closure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, Field, ValidationError
from pydantic_core import InitErrorDetails, core_schema

from meshgate.conditions import CONDITIONS
from meshgate.config.base import (
    EGModel,
    StrList,
    as_list,
    custom_error,
    raise_error,
    raise_errors,
    relocate,
)
from meshgate.config.errors import show
from meshgate.config.keys import suggestion
from meshgate.plugins import PluginError
from meshgate.policies import POLICIES

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler

    from meshgate.conditions import Predicate

# json_schema() in the loader swaps these markers for $refs to full definitions.
SCHEMA_MARKER = "x-meshgate-def"
_STEP_KEYS = ("condition", "action")


def _dump_params(params: BaseModel) -> dict[str, Any]:
    return params.model_dump(mode="json", by_alias=True, exclude_unset=True)


@dataclass(frozen=True, slots=True)
class ConditionUse:
    """A condition as configured: its registered name and validated params."""

    name: str
    params: BaseModel

    def compile(self) -> Predicate:
        """The predicate closure; nested conditions are compiled recursively."""
        spec = CONDITIONS.get(self.name)
        if spec is None:
            raise LookupError(f"unknown condition {self.name!r}")
        return spec.build(self.params, ConditionUse.compile)

    @classmethod
    def parse(cls, raw: Any) -> ConditionUse:
        """Validate ``{name: ..., **params}``; ValidationError locs are relative."""
        if isinstance(raw, ConditionUse):
            return raw
        if not isinstance(raw, dict):
            raise_error("ConditionUse", custom_error(
                "condition_type", f"expected a condition mapping with a name, got {show(raw)}",
                (), raw))
        name = raw.get("name")
        if not isinstance(name, str):
            kind = "missing" if name is None else "string_type"
            raise_error("ConditionUse", {"type": kind, "loc": ("name",), "input": raw})
        try:
            spec = CONDITIONS.get(name)
        except PluginError as exc:
            raise_error("ConditionUse", custom_error("plugin", str(exc), ("name",), name))
        if spec is None:
            raise_error("ConditionUse", custom_error(
                "unknown_condition", _unknown("condition", name, CONDITIONS.names()),
                ("name",), name))
        params = {k: v for k, v in raw.items() if k != "name"}
        try:
            return cls(name, spec.params.model_validate(params))
        except ValidationError as exc:
            raise_errors("ConditionUse", relocate(exc, (), spec.params))
            raise

    def dump(self) -> dict[str, Any]:
        return {"name": self.name, **_dump_params(self.params)}

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(cls.dump))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {SCHEMA_MARKER: "Condition"}


@dataclass(frozen=True, slots=True)
class StepUse:
    """One step of a policy: run ``action`` when ``condition`` holds (None: always)."""

    condition: ConditionUse | None
    action: BaseModel

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.condition is not None:
            out["condition"] = self.condition.dump()
        out["action"] = _dump_params(self.action)
        return out


@dataclass(frozen=True, slots=True)
class PolicyUse:
    """One item of a pipeline's ``policies``: a registered policy and its steps."""

    name: str
    steps: list[StepUse]

    @classmethod
    def parse(cls, raw: Any) -> PolicyUse:
        if isinstance(raw, PolicyUse):
            return raw
        if not isinstance(raw, dict) or len(raw) != 1:
            raise_error("PolicyUse", custom_error("policy_use", _shape_message(raw), (), raw))
        ((name, steps_raw),) = raw.items()
        name = str(name)
        try:
            spec = POLICIES.get(name)
        except PluginError as exc:
            raise_error("PolicyUse", custom_error("plugin", str(exc), (name,), name))
        if spec is None:
            raise_error("PolicyUse", custom_error(
                "unknown_policy", _unknown("policy", name, POLICIES.names()), (name,), name))
        if steps_raw is None or steps_raw == []:
            steps_raw = [None]
        elif isinstance(steps_raw, dict):
            steps_raw = [steps_raw]
        elif not isinstance(steps_raw, list):
            raise_error("PolicyUse", custom_error(
                "policy_steps", "expected a list of steps ({condition, action}) or nothing, "
                f"got {show(steps_raw)}", (name,), steps_raw))
        errors: list[InitErrorDetails] = []
        steps = [_parse_step(spec.params, name, index, step, errors)
                 for index, step in enumerate(steps_raw)]
        raise_errors("PolicyUse", errors)
        return cls(name, [s for s in steps if s is not None])

    def dump(self) -> dict[str, Any]:
        return {self.name: [step.dump() for step in self.steps]}

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(cls.dump))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {SCHEMA_MARKER: "PolicyUse"}


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = suggestion(name, known)
    hint = f" {close}" if close.startswith("did you mean") else ""
    return f"unknown {kind} {name!r};{hint} known: {', '.join(known) or '(none registered)'}"


def _shape_message(raw: Any) -> str:
    if isinstance(raw, dict) and len(raw) > 1:
        names = ", ".join(str(k) for k in raw)
        return (f"expected one policy per list item, got {len(raw)} ({names}); "
                "start each policy with '- '")
    return f"expected a mapping of one policy name to its steps, got {show(raw)}"


def _parse_step(params_model: type[BaseModel], name: str, index: int, raw: Any,
                errors: list[InitErrorDetails]) -> StepUse | None:
    here = (name, index)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(custom_error(
            "policy_step", f"expected a step mapping with condition and/or action, got {show(raw)}",
            here, raw))
        return None
    for key in raw:
        if key not in _STEP_KEYS:
            errors.append(custom_error(
                "policy_step_key", "unknown key in a policy step; expected 'condition' and/or "
                "'action' (action parameters go under 'action:')", (*here, str(key)), raw[key]))
    condition: ConditionUse | None = None
    action: BaseModel | None = None
    if raw.get("condition") is not None:
        try:
            condition = ConditionUse.parse(raw["condition"])
        except ValidationError as exc:
            errors.extend(relocate(exc, (*here, "condition")))
    try:
        given = raw.get("action")
        action = params_model.model_validate({} if given is None else given)
    except ValidationError as exc:
        errors.extend(relocate(exc, (*here, "action"), params_model))
    if action is None:
        return None
    return StepUse(condition, action)


def _policy_list(value: Any) -> Any:
    # EG wraps a lone policy map in a list; ``policies:`` with no items is empty.
    return [] if value is None else as_list(value)


class Pipeline(EGModel):
    """A named pipeline: which apiEndpoints it serves and its policies in order."""

    apiEndpoints: StrList = Field(
        default_factory=list, validation_alias=AliasChoices("apiEndpoints", "apiEndpoint"))
    policies: Annotated[
        list[PolicyUse],
        BeforeValidator(_policy_list, json_schema_input_type=list[PolicyUse] | PolicyUse),
    ]
