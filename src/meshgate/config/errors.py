"""Config errors that name the file, the line and the field.

Theory of operation
-------------------
Everything that can go wrong while loading a config file ends up as one
``ConfigError(file, line, field, message)`` whose ``str()`` is the one-line
``FILE:LINE: FIELD: MESSAGE`` a user can jump to from a terminal.

pydantic reports a failure as a *location* -- a tuple of keys and indices
into the document as the models saw it, e.g. ``('pipelines', 'default',
'policies', 0, 'proxy', 0, 'action', 'changeOrigin')``. ``locate()`` walks
that location through the raw YAML data (what the user wrote) to find:

* the dotted field path, dropping the list indices the models invented when
  they normalised a single item into a list (``proxy: {action: ...}`` is
  ``proxy[0]`` to the models, but ``proxy`` in the file), and pydantic's
  union-member tags;
* the line, from the ``path -> line`` map the YAML loader recorded
  (``yamlpos``); a field that is missing takes the line of its parent.

``explain()`` turns a pydantic error type into a human sentence saying what
was expected and what was found (``expected an integer, got 'abc'``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

Path = tuple[str | int, ...]
Lines = Mapping[Path, int]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


class ConfigError(Exception):
    """An invalid config: where (file, line, dotted field) and what is wrong."""

    def __init__(self, file: str, line: int | None, field: str | None, message: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        # Every error found in the same pass (this one first); a CLI may list them.
        self.errors: list[ConfigError] = [self]
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        parts = [where, self.field, self.message]
        return ": ".join(p for p in parts if p)


def format_path(path: Sequence[str | int]) -> str:
    """``('a', 'b', 0, 'c')`` -> ``a.b[0].c``; odd keys are quoted: ``tls["*.x.com"]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def _child(node: Any, part: str | int) -> tuple[bool, Any, str | int]:
    """Step from ``node`` to ``part``: (found, child, key as stored in the line map)."""
    if isinstance(node, list):
        index = part if isinstance(part, int) else int(part) if str(part).isdigit() else -1
        if 0 <= index < len(node):
            return True, node[index], index
        return False, None, part
    if isinstance(node, dict):
        if part in node:
            return True, node[part], str(part)
        for key, value in node.items():
            if str(key) == str(part):
                return True, value, str(key)
    return False, None, part


def locate(raw: Any, lines: Lines, loc: Sequence[str | int]) -> tuple[str, int | None]:
    """The dotted field path and the best line for a pydantic location."""
    node = raw
    path: list[str | int] = []
    line = lines.get((), None)
    missing = False
    for part in loc:
        if part == "[key]":
            continue
        if missing:
            path.append(part)
            continue
        found, child, key = _child(node, part)
        if found:
            path.append(key)
            node = child
            line = lines.get(tuple(path), line)
        elif isinstance(part, int) or not isinstance(node, dict):
            # An index the models added to a single item, or a union-member tag.
            continue
        else:
            missing = True
            path.append(part)
    return format_path(path), line


def show(value: Any) -> str:
    """A config value as the user would recognise it in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping", "url_parsing": "a URL", "url_scheme": "an http(s) URL",
}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}


def explain(err: Mapping[str, Any]) -> str:
    """A one-line human message for one pydantic error dict."""
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return f"unknown field (value {show(value)})"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {show(value)}"
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        return f"expected a number {op} {ctx.get(key)}, got {show(value)}"
    if kind in ("literal_error", "enum"):
        return f"expected {ctx.get('expected')}, got {show(value)}"
    if kind in ("too_short", "too_long"):
        return str(err["msg"]).lower()
    message = str(err.get("msg", kind))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message


def from_validation(exc: ValidationError, file: str, raw: Any, lines: Lines,
                    line_of: Callable[[int], int] = lambda n: n) -> ConfigError:
    """One ConfigError (the first) carrying all of them in ``.errors``."""
    found: list[ConfigError] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False):
        field, line = locate(raw, lines, err["loc"])
        if field in seen:       # a union reports each member; keep the first
            continue
        seen.add(field)
        found.append(ConfigError(file, line_of(line) if line else line, field or None,
                                 explain(err)))
    if not found:
        return ConfigError(file, None, None, str(exc))
    first = found[0]
    first.errors = found
    return first
