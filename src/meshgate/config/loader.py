"""Find, read and validate a config directory; every failure names file:line:field.

Theory of operation
-------------------
A config directory holds ``gateway.config.yml`` (or ``.yaml`` / ``.json``)
and optionally ``system.config.yml`` (or ``.yaml`` / ``.json``), exactly as
Express Gateway lays it out. Loading one file goes:

1. read the text (UTF-8);
2. substitute ``${VAR}`` / ``${VAR:-default}`` in the text (``envsubst``),
   keeping a map from output lines back to the lines of the file;
3. parse with the position-recording YAML loader (``yamlpos``) -- JSON is
   parsed by ``json`` for exact JSON semantics, and by the same YAML loader
   only to learn line numbers;
4. validate with the pydantic models (``model``), which also check what
   ties sections together (whitelist, references) and validate each policy
   action and condition with its registered params model;
5. turn any ``ValidationError`` into a ``ConfigError`` (``errors``), located
   through the raw data and the line map; an unknown key is reported first,
   with the key it was probably meant to be (``keys``).

``load_config`` returns a frozen ``LoadedConfig``; nothing is cached, so the
hot-reload watcher calls it again and keeps the running config when it
raises. ``json_schema()`` assembles the JSON Schema of gateway.config.yml,
including every registered policy's action params, condition and discovery
provider; ``system_json_schema()`` that of system.config.yml. Both reject
the keys the loader rejects (``additionalProperties: false``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from meshgate.conditions import CONDITIONS
from meshgate.config.envsubst import Substituted, substitute
from meshgate.config.errors import ConfigError, from_validation, show
from meshgate.config.keys import name_unknown_keys
from meshgate.config.model import GatewayConfig, SystemConfig
from meshgate.config.pipeline import SCHEMA_MARKER
from meshgate.config.yamlpos import load_yaml
from meshgate.policies import POLICIES

__all__ = [
    "ConfigError", "LoadedConfig", "find_config_dir", "json_schema", "load_config",
    "load_gateway_file", "load_system_file", "parse_gateway", "system_json_schema",
]

GATEWAY_FILES = ("gateway.config.yml", "gateway.config.yaml", "gateway.config.json")
SYSTEM_FILES = ("system.config.yml", "system.config.yaml", "system.config.json")
ENV_VARS = ("MESHGATE_CONFIG_DIR", "EG_CONFIG_DIR")

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class LoadedConfig:
    directory: Path
    gateway: GatewayConfig
    system: SystemConfig
    gateway_path: Path
    system_path: Path | None


def find_config_dir(arg: str | None, env: Mapping[str, str] | None = None) -> Path:
    """``arg``, else $MESHGATE_CONFIG_DIR, else $EG_CONFIG_DIR; it must be a directory."""
    env = os.environ if env is None else env
    raw = arg or next((env[name] for name in ENV_VARS if env.get(name)), None)
    if not raw:
        raise ConfigError("config", None, None,
                          "no config directory given: pass one, or set MESHGATE_CONFIG_DIR "
                          "or EG_CONFIG_DIR")
    path = Path(raw)
    if not path.is_dir():
        raise ConfigError(str(path), None, None, "expected a config directory, "
                          + ("got a file" if path.exists() else "it does not exist"))
    return path


def _first_existing(directory: Path, names: tuple[str, ...]) -> Path | None:
    return next((directory / n for n in names if (directory / n).is_file()), None)


def load_config(directory: str | Path, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read and validate both files of a config directory; raises ConfigError."""
    directory = Path(directory)
    gateway_path = _first_existing(directory, GATEWAY_FILES)
    if gateway_path is None:
        raise ConfigError(str(directory), None, None,
                          "no gateway.config.yml (or .yaml / .json) in this directory")
    system_path = _first_existing(directory, SYSTEM_FILES)
    system = load_system_file(system_path, env) if system_path else SystemConfig()
    gateway = load_gateway_file(gateway_path, env)
    return LoadedConfig(directory, gateway, system, gateway_path, system_path)


def load_gateway_file(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    return _load_file(GatewayConfig, Path(path), env)


def load_system_file(path: str | Path, env: Mapping[str, str] | None = None) -> SystemConfig:
    return _load_file(SystemConfig, Path(path), env)


def parse_gateway(text: str, file: str = "gateway.config.yml",
                  env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate gateway config text (YAML or JSON) that is not on disk."""
    return _parse(GatewayConfig, text, file, env, is_json=file.endswith(".json"))


def _load_file(model: type[M], path: Path, env: Mapping[str, str] | None) -> M:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(file, None, None, "expected UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(file, None, None, f"cannot read: {exc.strerror or exc}") from None
    return _parse(model, text, file, env, is_json=path.suffix == ".json")


def parse_document(text: str, file: str, env: Mapping[str, str] | None,
                   is_json: bool) -> tuple[Substituted, dict[str, Any], dict[Any, int]]:
    """Substitute and parse one file's text: (substitution, top-level mapping, lines)."""
    sub = substitute(text, os.environ if env is None else env, file,
                     yaml_comments=not is_json)
    data, lines = _parse_json(sub, file) if is_json else _parse_yaml(sub, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, 1, None, f"expected a mapping at the top level, got {show(data)}")
    return sub, data, lines


def _parse(model: type[M], text: str, file: str, env: Mapping[str, str] | None,
           is_json: bool) -> M:
    sub, data, lines = parse_document(text, file, env, is_json)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        named = ValidationError.from_exception_data(model.__name__, name_unknown_keys(exc, model))
        raise from_validation(named, file, data, lines, sub.source_line) from None


def _parse_yaml(sub: Substituted, file: str) -> tuple[Any, dict[Any, int]]:
    try:
        return load_yaml(sub.text, file)
    except ConfigError as exc:
        if exc.line is not None:
            exc.line = sub.source_line(exc.line)
        raise


def _parse_json(sub: Substituted, file: str) -> tuple[Any, dict[Any, int]]:
    try:
        data = json.loads(sub.text)
    except json.JSONDecodeError as exc:
        raise ConfigError(file, sub.source_line(exc.lineno), None,
                          f"invalid JSON: {exc.msg}") from None
    try:
        # JSON is YAML (tabs aside, which valid JSON has only between tokens):
        # parse it again only to learn line numbers.
        _, lines = load_yaml(sub.text.replace("\t", " "), file)
    except ConfigError:
        lines = {}
    return data, lines


# -- JSON Schema ---------------------------------------------------------------
def json_schema() -> dict[str, Any]:
    """The JSON Schema of gateway.config.yml, with every registered policy and condition."""
    schema = GatewayConfig.model_json_schema(mode="validation")
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    defs["PolicyUse"] = _policy_use_schema(defs)
    defs["Condition"] = _condition_schema(defs)
    names = {"enum": POLICIES.names()}      # the whitelist names registered policies
    schema["properties"]["policies"]["anyOf"] = [names, {"type": "array", "items": names}]
    discovery = defs["ServiceEndpoint"]["properties"]["discovery"]
    discovery["anyOf"] = [*_discovery_schemas(defs), {"type": "null"}]
    schema = _replace_markers(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gateway.config.yml"
    return schema


def system_json_schema() -> dict[str, Any]:
    """The JSON Schema of system.config.yml."""
    schema = SystemConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "system.config.yml"
    return schema


def _discovery_schemas(defs: dict[str, Any]) -> list[dict[str, Any]]:
    """One variant per discovery provider: ``type`` and that provider's params."""
    from meshgate.discovery import DISCOVERY

    variants: list[dict[str, Any]] = []
    for name in DISCOVERY.names():
        spec = DISCOVERY.get(name)
        assert spec is not None
        params = _params_schema(f"discovery.{name}", spec.params, defs)
        params.setdefault("properties", {})["type"] = {"const": name}
        if name != "static":
            params["required"] = ["type", *params.get("required", [])]
        params["type"] = "object"
        variants.append(params)
    return variants


def _params_schema(prefix: str, model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """A params model's schema; its own $defs move into ``defs`` under ``prefix``."""
    sub = model.model_json_schema(ref_template=f"#/$defs/{prefix}.{{model}}")
    for name, definition in sub.pop("$defs", {}).items():
        defs[f"{prefix}.{name}"] = definition
    return sub


def _policy_use_schema(defs: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name in POLICIES.names():
        spec = POLICIES.get(name)
        assert spec is not None
        defs[f"policy.{name}"] = _params_schema(f"policy.{name}", spec.params, defs)
        step = {"type": "object", "additionalProperties": False, "properties": {
            "condition": {SCHEMA_MARKER: "Condition"},
            "action": {"$ref": f"#/$defs/policy.{name}"}}}
        properties[name] = {"description": spec.description, "anyOf": [
            {"type": "null"}, step,
            {"type": "array", "items": {"anyOf": [step, {"type": "null"}]}}]}
    return {"type": "object", "minProperties": 1, "maxProperties": 1,
            "properties": properties, "additionalProperties": False}


def _condition_schema(defs: dict[str, Any]) -> dict[str, Any]:
    variants: list[dict[str, Any]] = []
    for name in CONDITIONS.names():
        spec = CONDITIONS.get(name)
        assert spec is not None
        params = _params_schema(f"condition.{name}", spec.params, defs)
        params.setdefault("properties", {})["name"] = {"const": name}
        params["required"] = ["name", *params.get("required", [])]
        params["type"] = "object"
        if spec.description:
            params["description"] = spec.description
        variants.append(params)
    return {"anyOf": variants}


def _replace_markers(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _replace_markers(v) for k, v in node.items() if k != SCHEMA_MARKER}
        if SCHEMA_MARKER in node:
            out["$ref"] = f"#/$defs/{node[SCHEMA_MARKER]}"
        return out
    if isinstance(node, list):
        return [_replace_markers(v) for v in node]
    return node
