"""Unknown keys: what a section accepts, and the closest key to a typo.

Theory of operation
-------------------
Every section model rejects keys it does not declare (``extra="forbid"``),
so pydantic reports an ``extra_forbidden`` error at the location of each
stray key. ``name_unknown_keys(exc, model)`` rewrites those errors into
``unknown_key`` errors whose message names the key the user most likely
meant (``unknown key; did you mean 'pipelines'?``, by ``difflib``), or lists
the accepted keys when none is close.

To know what was accepted where, the error's location is walked through the
model's field annotations -- models, lists, dicts, unions (pydantic puts a
union member's name in the location), ``Annotated`` -- down to the model
that owns the stray key; its field names and aliases are the candidates.
Policy actions and conditions are validated by their own params models
(``config/pipeline.py``); their errors are rewritten there, with that model
as the root, before being re-rooted under the pipeline.

A few keys get a message of their own (``SPECIAL``): ``plugins`` names
Express Gateway's JavaScript plugins, which meshgate cannot run.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Collection, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]

PLUGINS_MESSAGE = (
    "Express Gateway's JavaScript plugins cannot run in meshgate; remove this section. "
    "meshgate's plugins are Python packages that register policies and conditions "
    "through the 'meshgate.policies' / 'meshgate.conditions' entry points: install the "
    "package next to meshgate, add its policy to 'policies' and use it in a pipeline "
    "(see docs/plugins.md)")

# Keys with a story of their own, wherever they appear at the top of a file.
SPECIAL: dict[str, str] = {"plugins": PLUGINS_MESSAGE}

# Node's tls.createServer / createSecureContext / http.createServer options, which EG
# passed through from ``https.options``; meshgate accepts the names and ignores them.
NODE_TLS_OPTIONS = frozenset((
    "ALPNProtocols", "allowHalfOpen", "allowPartialTrustChain", "ca", "cert", "ciphers",
    "clientCertEngine", "crl", "dhparam", "ecdhCurve", "enableTrace", "handshakeTimeout",
    "headersTimeout", "highWaterMark", "honorCipherOrder", "insecureHTTPParser", "keepAlive",
    "keepAliveInitialDelay", "keepAliveTimeout", "key", "maxHeaderSize", "maxVersion",
    "minVersion", "noDelay", "passphrase", "pauseOnConnect", "pfx", "privateKeyEngine",
    "privateKeyIdentifier", "pskIdentityHint", "rejectUnauthorized", "requestCert",
    "requestTimeout", "secureOptions", "secureProtocol", "sessionIdContext", "sessionTimeout",
    "sigalgs", "ticketKeys",
))


def _names(name: str, info: FieldInfo, populate: bool) -> list[str]:
    """The keys one field is read from: its aliases, and its name where that works."""
    names: list[str] = []
    choices = info.validation_alias
    if isinstance(choices, str):
        names.append(choices)
    elif isinstance(choices, AliasChoices):
        names.extend(c for c in choices.choices if isinstance(c, str))
    if info.alias:
        names.append(info.alias)
    if populate or not names:
        names.insert(0, name)
    return list(dict.fromkeys(names))


def accepted_keys(model: type[BaseModel]) -> list[str]:
    """The keys ``model`` accepts, in declaration order (names and aliases)."""
    populate = bool(model.model_config.get("populate_by_name"))
    keys: list[str] = []
    for name, info in model.model_fields.items():
        keys.extend(n for n in _names(name, info, populate) if n not in keys)
    return keys


def suggestion(key: str, candidates: Sequence[str]) -> str:
    """``did you mean 'x'?`` for the closest candidate, else the list of them."""
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return f"did you mean {lowered[close[0]]!r}?"
    if not candidates:
        return "this section takes no keys"
    return "expected one of: " + ", ".join(candidates)


def unknown_key_message(key: str, candidates: Sequence[str], top_level: bool) -> str:
    if top_level and key in SPECIAL:
        return SPECIAL[key]
    return f"unknown key; {suggestion(key, candidates)}"


def name_unknown_keys(exc: ValidationError, model: type[BaseModel]) -> list[InitErrorDetails]:
    """The errors of ``exc`` (validated against ``model``), unknown keys named and first."""
    named: list[InitErrorDetails] = []
    rest: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "unknown_key":       # named already, by a nested validation
            named.append({"type": PydanticCustomError("unknown_key", err["msg"]),
                          "loc": loc, "input": err.get("input")})
            continue
        if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            owner = model_at(model, loc[:-1])
            candidates = accepted_keys(owner) if owner is not None else []
            message = unknown_key_message(loc[-1], candidates, top_level=len(loc) == 1)
            named.append({"type": PydanticCustomError("unknown_key", message),
                          "loc": loc, "input": err.get("input")})
            continue
        ctx = {k: v for k, v in (err.get("ctx") or {}).items()
               if isinstance(v, (str, int, float))}
        rest.append({"type": PydanticCustomError(err["type"], err["msg"], ctx or None),
                     "loc": loc, "input": err.get("input")})
    return named + rest


def check_keys(value: dict[str, Any], allowed: Collection[str], title: str) -> dict[str, Any]:
    """A free-form mapping whose keys must be among ``allowed`` (each stray one named)."""
    candidates = sorted(allowed, key=str.lower)
    errors: list[InitErrorDetails] = [
        {"type": PydanticCustomError("unknown_key", unknown_key_message(
            str(key), candidates, top_level=False)), "loc": (str(key),), "input": item}
        for key, item in value.items() if key not in allowed]
    if errors:
        raise ValidationError.from_exception_data(title, errors)
    return value


# -- walking a location through the annotations --------------------------------------
def _members(tp: Any) -> list[Any]:
    """``tp`` without Annotated / Optional wrappers; a union's members."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or isinstance(tp, types.UnionType):
        out: list[Any] = []
        for arg in get_args(tp):
            if arg is not type(None):
                out.extend(_members(arg))
        return out
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_type(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in _names(name, info, True):
            return info.annotation
    return None


def _step(tp: Any, part: str | int) -> list[Any]:
    """The types ``part`` leads to from ``tp`` (several through a union)."""
    out: list[Any] = []
    for member in _members(tp):
        origin = get_origin(member)
        if _is_model(member) and isinstance(part, str):
            found = _field_type(member, part)
            if found is not None:
                out.append(found)
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int):
            out.append(get_args(member)[0])
        elif origin is dict:
            out.append(get_args(member)[1])
    return out


def model_at(root: Any, loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model that validated the mapping at ``loc`` under ``root``, if one did."""
    if not loc:
        models = [m for m in _members(root) if _is_model(m)]
        return models[0] if len(models) == 1 else None
    part, rest = loc[0], loc[1:]
    if part == "[key]":
        return model_at(root, rest)
    for nxt in _step(root, part):
        found = model_at(nxt, rest)
        if found is not None:
            return found
    # A union member's tag (its class name, or a validator's description).
    members = _members(root)
    if isinstance(part, str) and len(members) > 1:
        for member in members:
            if getattr(member, "__name__", None) == part:
                return model_at(member, rest)
    return None
