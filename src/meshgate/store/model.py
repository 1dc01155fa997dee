"""What the consumer store holds, as Express Gateway modelled it, and its errors.

Theory of operation
-------------------
Documents keep EG's JSON shape so the Admin API returns them almost as
stored: a user is ``{isActive, username, id, firstname, lastname, email?,
redirectUri?, createdAt, updatedAt}``, an app ``{isActive, id, userId, name,
redirectUri?, createdAt, updatedAt}``; timestamps are JavaScript
``Date.toString()`` text in UTC, as EG wrote them.

Which user and app properties exist comes from a ``PropertyModel``: EG's
default ``users.json`` / ``applications.json``, or the ones in the config
folder's ``models/`` if present (EG read them from there too). A property
there is a string, may carry ``format: email | uri`` and ``isMutable:
false``; unknown properties are refused with a message naming them.

Auth policies do not see documents: ``verify`` and ``lookup`` answer with
frozen ``Credential`` / ``Consumer`` / ``Token`` values (cheap to cache and
share between requests).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

CREDENTIAL_TYPES = ("basic-auth", "key-auth", "jwt", "oauth2")
MULTI_TYPES = frozenset({"key-auth", "jwt"})          # several per consumer, keyed by keyId
PASSWORD_KEY = {"basic-auth": "password", "oauth2": "secret"}
TOKEN_KINDS = ("access_token", "refresh_token", "authorization_code")


class StoreError(Exception):
    """A request the store refuses; ``str(exc)`` is the message for the client."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class Invalid(StoreError):
    pass


def eg_now() -> str:
    """``new Date().toString()`` as Node prints it in UTC."""
    return time.strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)",
                         time.gmtime())


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Consumer:
    id: str
    type: Literal["user", "app"]
    name: str                       # the username, or the app name
    is_active: bool
    doc: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Credential:
    type: str                       # basic-auth | key-auth | jwt | oauth2
    id: str                         # keyId (key-auth, jwt) or the consumer id
    consumer_id: str
    scopes: tuple[str, ...]
    is_active: bool
    consumer: Consumer | None = None
    secret: str | None = field(default=None, repr=False)   # jwt keySecret, in clear
    doc: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    kind: str                       # access_token | refresh_token | authorization_code
    consumer_id: str
    scopes: tuple[str, ...]
    expires_at: int                 # epoch milliseconds
    props: Mapping[str, Any] = field(default_factory=dict)
    consumer: Consumer | None = None


def status_word(was: bool, now: bool) -> str:
    """EG's answer to a status change: nothing changed, or what changed."""
    if was == now:
        return "Active" if now else "Inactive"
    return "Activated" if now else "Deactivated"


def consumer_from(doc: Mapping[str, Any], kind: Literal["user", "app"]) -> Consumer:
    name = doc.get("username" if kind == "user" else "name", "")
    return Consumer(str(doc["id"]), kind, str(name), bool(doc.get("isActive")), doc)


# -- user and app properties ---------------------------------------------------------

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

DEFAULT_USER_MODEL: dict[str, Any] = {
    "properties": {"firstname": {"type": "string"}, "lastname": {"type": "string"},
                   "username": {"type": "string"},
                   "email": {"type": "string", "format": "email"},
                   "redirectUri": {"type": "string", "format": "uri"}},
    "required": ["username", "firstname", "lastname"],
}
DEFAULT_APP_MODEL: dict[str, Any] = {
    "properties": {"name": {"type": "string"},
                   "redirectUri": {"type": "string", "format": "uri"}},
    "required": ["name"],
}


class PropertyModel:
    def __init__(self, schema: Mapping[str, Any]) -> None:
        props = schema.get("properties") or {}
        self.properties: dict[str, dict[str, Any]] = {
            str(k): dict(v) if isinstance(v, Mapping) else {} for k, v in props.items()}
        self.required = [str(r) for r in schema.get("required") or []]

    @classmethod
    def load(cls, config_dir: Path | None, file: str, default: dict[str, Any]) -> PropertyModel:
        path = config_dir / "models" / file if config_dir is not None else None
        if path is not None and path.is_file():
            try:
                return cls(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, AttributeError):
                pass            # an unreadable model: EG's default, as if absent
        return cls(default)

    def clean(self, body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
        """Checked, coerced properties; raises ``Invalid`` naming what is wrong."""
        unknown = [k for k in body if k not in self.properties]
        if unknown:
            raise Invalid(f"one or more properties is invalid: {', '.join(unknown)}")
        if creating:
            missing = [r for r in self.required if body.get(r) in (None, "")]
            if missing:
                raise Invalid(f"missing required properties: {', '.join(missing)}")
        out: dict[str, Any] = {}
        for name, value in body.items():
            spec = self.properties[name]
            if not creating and spec.get("isMutable") is False:
                raise Invalid(f"one or more properties is immutable: {name}")
            out[name] = _check_value(name, value, spec)
        return out


def _check_value(name: str, value: Any, spec: Mapping[str, Any]) -> Any:
    kind = spec.get("type", "string")
    if kind == "string":
        # ajv's coerceTypes, which EG used: numbers and booleans become strings
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int | float):
            value = str(value)
        if not isinstance(value, str):
            raise Invalid(f"{name} must be a string")
        fmt = spec.get("format")
        if fmt == "email" and not EMAIL.match(value):
            raise Invalid(f"{name} must be an email address")
        if fmt == "uri" and not _is_uri(value):
            raise Invalid(f"{name} must be an absolute URI")
    elif kind == "boolean" and not isinstance(value, bool):
        raise Invalid(f"{name} must be a boolean")
    elif kind in ("number", "integer") and (isinstance(value, bool)
                                            or not isinstance(value, int | float)):
        raise Invalid(f"{name} must be a number")
    return value


def _is_uri(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and bool(parts.netloc or parts.path)


def as_scopes(value: Any, field_name: str = "scopes") -> list[str]:
    """EG accepted one scope or a list of them."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise Invalid(f"{field_name} must be a list of non-empty strings")
    return list(dict.fromkeys(value))
