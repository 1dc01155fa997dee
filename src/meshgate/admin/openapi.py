"""What the Admin API's OpenAPI document says of each route: its body and its answers.

Theory of operation
-------------------
The handlers read their bodies themselves (EG's lenient parsing, EG's error
texts), so FastAPI cannot infer them. Each route therefore declares
``doc(ok, errors, body)``: the request body's JSON Schema and every status
it may answer, with its media type -- JSON ``{"error": ...}`` for 400 / 422
/ 503, EG's plain text for the consumer routes' 404 / 409 -- so clients and
API testers (``/openapi.json``, ``/docs``) see the contract the code keeps.

The user and app bodies come from the store's property models (``models/``
in the config folder, else EG's defaults), so a deployment that adds
properties documents them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import Path, Response

from meshgate.store.model import CREDENTIAL_TYPES, PropertyModel

ERROR = {"type": "object", "properties": {"error": {"type": "string"}},
         "required": ["error"]}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_JSON_ERROR = {"application/json": {"schema": ERROR}}
_WHY = {
    200: "Success", 201: "Created", 204: "Done, nothing to return",
    400: "The body is not a JSON object (or not valid YAML / JSON)",
    401: "An admin key is configured and the request does not carry it",
    404: "Not found", 409: "Conflicts with what exists (a name or key already taken)",
    422: "Invalid input: the message names the field",
    503: "The consumer store or the config file cannot be reached",
}

OBJECT: dict[str, Any] = {"type": "object"}
ENTRY: dict[str, Any] = {"description": "The entry as in gateway.config.yml (JSON or YAML); "
                                        "checked with the whole config, 422 naming the field"}
STATUS = {"type": "object", "properties": {"status": {"type": "boolean"}},
          "required": ["status"], "additionalProperties": False}
SCOPES = {"type": "object", "required": ["scopes"],                 # other keys: ignored
          "properties": {"scopes": {"oneOf": [{"type": "string", "minLength": 1},
                                              {"type": "array", "items": {
                                                  "type": "string", "minLength": 1}}]}}}
CREDENTIAL = {"type": "object", "required": ["consumerId", "type"],
              "additionalProperties": False,
              "properties": {"consumerId": {"type": "string", "minLength": 1},
                             "type": {"type": "string", "enum": sorted(CREDENTIAL_TYPES)},
                             "credential": {"type": "object"}}}


def doc(ok: int = 200, errors: Iterable[int] = (), body: dict[str, Any] | None = None,
        text_errors: Iterable[int] = (), ok_schema: dict[str, Any] | None = None,
        empty: bool = False, body_required: bool = True) -> dict[str, Any]:
    """``add_api_route`` keyword arguments documenting one route.

    ``empty``: the success answer has no body (always so for 204).
    ``body_required``: False where no body means "change nothing".
    """
    answers: dict[int | str, dict[str, Any]] = {}
    ok_answer: dict[str, Any] = {"description": _WHY.get(ok, "Success")}
    if ok != 204 and not empty:
        ok_answer["content"] = {"application/json": {"schema": ok_schema or {}}}
    answers[ok] = ok_answer
    plain = set(text_errors)
    for status in sorted({401, 503, *errors, *plain}):
        answers[status] = {"description": _WHY.get(status, "Error"),
                           "content": _TEXT if status in plain else _JSON_ERROR}
    extra: dict[str, Any] = {}
    if body is not None:
        extra["requestBody"] = {"required": body_required, "content": {
            "application/json": {"schema": body}}}
    documented: dict[str, Any] = {"status_code": ok, "responses": answers,
                                  "openapi_extra": extra or None}
    if empty or ok == 204:
        documented["response_class"] = Response     # no JSON body for FastAPI to add
    return documented


def model_body(model: PropertyModel, *, creating: bool,
               extra: dict[str, Any] | None = None, required: Iterable[str] = ()
               ) -> dict[str, Any]:
    """The JSON Schema of a user or app body under ``model``."""
    properties: dict[str, Any] = {}
    for name, spec in model.properties.items():
        kind = spec.get("type", "string")
        prop: dict[str, Any] = {"type": kind if kind in ("string", "boolean", "number",
                                                         "integer") else "string"}
        if spec.get("format") in ("email", "uri"):
            prop["format"] = spec["format"]
        elif kind == "string":              # EG's coercion: numbers and booleans as text
            prop["type"] = ["string", "number", "boolean"]
        if "description" in spec:
            prop["description"] = str(spec["description"])
        properties[name] = prop
    properties.update(extra or {})
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": False}
    needed = [*model.required, *required] if creating else []
    if needed:
        schema["required"] = needed
        for name in model.required:       # present and not empty
            if name in properties:
                properties[name] = {**properties[name], "minLength": 1, "not": {"type": "null"}}
    return schema


def credential_type() -> Any:
    """The ``{type_}`` path parameter, documented with its values (checked by the store)."""
    return Path(json_schema_extra={"enum": list(CREDENTIAL_TYPES)},
                description="Credential type")
