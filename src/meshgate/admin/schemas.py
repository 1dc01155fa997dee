"""The JSON Schemas served at ``/schemas``, in Express Gateway's shape.

Theory of operation
-------------------
EG kept every schema it validated with in one ajv registry, each tagged with
a type (``policy``, ``condition``, ``model``, ``config``) and an ``$id`` URL;
``GET /schemas`` listed ``[{type, schema}]`` and ``GET /schemas/:param``
answered a type with that list filtered, or an ``$id`` with ``{schema}``.

meshgate builds the same list from its own sources of truth, so it cannot
drift from what the loader accepts: the params model of every registered
policy and condition (``POLICIES`` / ``CONDITIONS``), the pydantic models of
both config files (``config.loader.json_schema`` for gateway.config.yml), and
the consumer models (users, applications, credentials) as EG defined them.
Each schema keeps EG's ``$id`` so tools written for EG find it; a nested
condition (allOf, oneOf, not) refers to ``conditions/base.json`` as in EG.
As an extension, ``param`` may also be a bare name (``proxy``, ``pathExact``,
``users``, ``gateway.config``); an unknown one is a 404, not EG's ``[]``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from meshgate.conditions import CONDITIONS
from meshgate.config.loader import json_schema
from meshgate.config.model import SystemConfig
from meshgate.config.pipeline import SCHEMA_MARKER
from meshgate.policies import POLICIES

BASE = "http://express-gateway.io"
CONDITION_BASE = f"{BASE}/schemas/conditions/base.json"
TYPES = ("policy", "condition", "model", "config", "internal")

_SCOPES = {"type": ["string", "array"], "items": {"type": "string"}}
_CREDENTIAL_BASE = {"type": "object", "properties": {
    "autoGeneratePassword": {"type": "boolean", "default": True}, "scopes": _SCOPES},
    "required": ["autoGeneratePassword"]}


def _secret_credential(key_default: str) -> dict[str, Any]:
    return {"allOf": [{"$ref": "#/definitions/credentialBase"}, {
        "type": "object", "properties": {"passwordKey": {"type": "string",
                                                         "default": key_default}},
        "required": ["passwordKey"]}]}


# The consumer models, with the fields and rules of Express Gateway's.
MODELS: dict[str, dict[str, Any]] = {
    "users": {
        "type": "object",
        "properties": {
            "firstname": {"type": "string"}, "lastname": {"type": "string"},
            "username": {"type": "string"}, "email": {"type": "string", "format": "email"},
            "redirectUri": {"type": "string", "format": "uri"}},
        "required": ["username", "firstname", "lastname"]},
    "applications": {
        "type": "object",
        "properties": {"name": {"type": "string"},
                       "redirectUri": {"type": "string", "format": "uri"}},
        "required": ["name"]},
    "credentials": {
        "type": "object",
        "definitions": {"credentialBase": _CREDENTIAL_BASE},
        "properties": {
            "basic-auth": _secret_credential("password"),
            "key-auth": {"type": "object", "properties": {"scopes": _SCOPES}},
            "jwt": {"type": "object", "properties": {}},
            "oauth2": _secret_credential("secret")}},
}


def _refs(node: Any) -> Any:
    """Swap the loader's nested-condition markers for EG's base condition $ref."""
    if isinstance(node, dict):
        if SCHEMA_MARKER in node:
            return {"$ref": CONDITION_BASE}
        return {k: _refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_refs(v) for v in node]
    return node


def _params(model: type[BaseModel], schema_id: str, description: str) -> dict[str, Any]:
    schema = _refs(model.model_json_schema())
    out: dict[str, Any] = {"$id": schema_id}
    if description:
        out["description"] = description
    out.update(schema)
    return out


def _condition(name: str) -> dict[str, Any]:
    spec = CONDITIONS.get(name)
    assert spec is not None
    schema = _params(spec.params, f"{BASE}/schemas/conditions/{name}.json", spec.description)
    schema.setdefault("properties", {})["name"] = {"const": name}
    schema["required"] = ["name", *schema.get("required", [])]
    schema["type"] = "object"
    return schema


@cache
def all_schemas() -> list[dict[str, Any]]:
    """Every schema as ``{type, name, schema}`` (``name`` is a meshgate addition).

    Built once: the registries do not change after import. Callers must not mutate it.
    """
    out: list[dict[str, Any]] = [{"type": "internal", "name": "base", "schema": {
        "$id": CONDITION_BASE, "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string",
                                "description": "Name of the condition to apply"}}}}]
    for name in POLICIES.names():
        spec = POLICIES.get(name)
        assert spec is not None
        out.append({"type": "policy", "name": name, "schema": _params(
            spec.params, f"{BASE}/schemas/policies/{name}.json", spec.description)})
    for name in CONDITIONS.names():
        out.append({"type": "condition", "name": name, "schema": _condition(name)})
    for name, model in MODELS.items():
        out.append({"type": "model", "name": name,
                    "schema": {"$id": f"{BASE}/models/{name}.json", **model}})
    gateway = json_schema()
    gateway["$id"] = f"{BASE}/models/gateway.config.json"
    system = SystemConfig.model_json_schema()
    system["$id"] = f"{BASE}/models/system.config.json"
    out.append({"type": "config", "name": "gateway.config", "schema": gateway})
    out.append({"type": "config", "name": "system.config", "schema": system})
    return out


def find(param: str | None) -> list[dict[str, Any]] | dict[str, Any] | None:
    """EG's lookup: None -> all; a type -> that list; an $id or a name -> {schema}."""
    found = all_schemas()
    if not param:
        return found
    if param in TYPES:
        return [item for item in found if item["type"] == param]
    for item in found:
        if param in (item["schema"].get("$id"), item["name"]):
            return {"schema": item["schema"]}
    return None
