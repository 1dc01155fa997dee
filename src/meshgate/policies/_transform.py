"""What request-transformer and response-transformer share: params and rules.

Theory of operation
-------------------
Both policies take EG's params: ``headers: {add: {name: value}, remove:
[names]}`` and ``body: {add: {field: value}, remove: [fields]}``, plus
meshgate's ``maxBodySize`` (bytes, default 1 MiB). As in EG, ``add`` runs
before ``remove``, so a name in both ends up removed, and an added header
replaces one of the same name.

EG evaluated each ``add`` value as JavaScript (``egContext.run``), which is
why its docs write constants as ``"'world'"``. meshgate compiles a value
once, at load time:

* a quoted string (``'world'`` or ``"world"``) is that constant;
* an expression EG configs use (``req.headers.host``, ``req.ip``,
  ``consumer.id``, ...) is evaluated per request, as is a backquoted or plain
  string holding ``${...}`` templates (``"v-${req.headers.x}"``);
* any other string, number or boolean is a constant (numbers and booleans
  keep their JSON type in bodies) -- except JavaScript that does more than
  quote a constant (``"'a' + req.ip"``), which is a config error rather than
  a surprising constant.

Bodies: only JSON (``application/json``, ``*/*+json``) and, on requests,
form (``application/x-www-form-urlencoded``) bodies are rewritten, and only
top-level fields; anything else -- another type, a compressed body, JSON that
is not an object -- passes through untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from pydantic import Field, field_validator, model_validator

from meshgate.config.base import ParamsModel
from meshgate.gateway.template import compile_expression, compile_template, header_value

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange

Value = str | int | float | bool
Render = Callable[["Exchange"], Any]
DEFAULT_MAX_BODY = 1 << 20
# Framing and connection headers belong to the codecs, not to a transformer.
_PROTECTED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                        "upgrade", "te", "trailer", "proxy-connection"})
_EG_EXPRESSION = re.compile(r"^(?:req|res|egContext|consumer|apiEndpoint|pipeline)[.\[]")
JSON = 1
FORM = 2


class AddRemove(ParamsModel):
    add: dict[str, Value] = Field(default_factory=dict, description="name -> value or template")
    remove: list[str] = Field(default_factory=list, description="names to remove")

    @field_validator("add")
    @classmethod
    def _values_compile(cls, value: dict[str, Value]) -> dict[str, Value]:
        for item in value.values():
            compile_value(item)
        return value


class TransformerParams(ParamsModel):
    headers: AddRemove | None = Field(None, description="Header rules")
    body: AddRemove | None = Field(None, description="JSON body field rules")
    maxBodySize: int = Field(DEFAULT_MAX_BODY, ge=0,
                             description="Largest body buffered for body rules (bytes)")

    @model_validator(mode="after")
    def _something_to_do(self) -> TransformerParams:
        if self.headers is None and self.body is None:
            raise ValueError("expected `headers` or `body` rules (or both)")
        return self

    @field_validator("headers")
    @classmethod
    def _no_framing_headers(cls, value: AddRemove | None) -> AddRemove | None:
        if value is not None:
            for name in [*value.add, *value.remove]:
                if name.lower() in _PROTECTED:
                    raise ValueError(f"header {name!r} is managed by meshgate and cannot be "
                                     "added or removed")
        return value


def compile_value(raw: Value) -> Render:
    """A configured ``add`` value -> a function of the Exchange (see the module doc)."""
    if isinstance(raw, (bool, int, float)):
        return lambda ex: raw
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and text[0] not in text[1:-1]:
        constant = text[1:-1]
        return lambda ex: constant
    if len(text) >= 2 and text[0] == text[-1] == "`":
        return compile_template(text[1:-1])
    if text[:1] in ("'", '"'):
        raise ValueError(f"{raw!r} looks like a JavaScript expression; meshgate takes a quoted "
                         "constant, an expression such as req.headers.NAME, or a string "
                         "with ${...} templates")
    if _EG_EXPRESSION.match(text):
        try:
            return compile_expression(text)
        except ValueError:
            raise ValueError(f"unsupported expression {text!r}; meshgate evaluates "
                             "req.method, req.url, req.path, req.ip, req.hostname, "
                             "req.protocol, req.headers.NAME, req.query.NAME, "
                             "consumer.id/name, apiEndpoint.name, pipeline.name") from None
    return compile_template(raw)


def _header_text(value: Any) -> bytes:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return header_value(str(value))


class Rules:
    """Compiled rules of one transformer action."""

    def __init__(self, params: TransformerParams) -> None:
        headers = params.headers
        body = params.body
        self.max_body = params.maxBodySize
        self.header_rules = headers is not None
        self.drop_headers: frozenset[bytes] = frozenset()
        self.add_headers: list[tuple[bytes, Render]] = []
        if headers is not None:
            removed = {n.lower() for n in headers.remove}
            self.add_headers = [(n.lower().encode(), compile_value(v))
                                for n, v in headers.add.items() if n.lower() not in removed]
            self.drop_headers = frozenset(n.encode() for n in removed) | {
                n for n, _ in self.add_headers}
        self.body_rules = body is not None
        self.add_fields: list[tuple[str, Render]] = []
        self.remove_fields: list[str] = []
        if body is not None:
            self.add_fields = [(f, compile_value(v)) for f, v in body.add.items()]
            self.remove_fields = list(body.remove)

    def added_headers(self, ex: Exchange) -> list[tuple[bytes, bytes]]:
        return [(name, _header_text(render(ex))) for name, render in self.add_headers]

    def transform_body(self, ex: Exchange, body: bytes, kind: int) -> bytes | None:
        """The rewritten body; None when it is not an object to rewrite.

        Raises ValueError when a JSON body does not parse.
        """
        if kind == FORM:
            pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            fields = dict(pairs)
            for name, render in self.add_fields:
                fields[name] = _form_text(render(ex))
            for name in self.remove_fields:
                fields.pop(name, None)
            return urlencode(fields).encode()
        doc = json.loads(body)
        if not isinstance(doc, dict):
            return None
        for name, render in self.add_fields:
            doc[name] = render(ex)
        for name in self.remove_fields:
            doc.pop(name, None)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _form_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def body_kind(content_type: bytes | None, content_encoding: bytes | None,
              form: bool) -> int:
    """JSON, FORM or 0 (leave alone) for a body with these headers."""
    if content_encoding is not None and content_encoding.strip().lower() not in (b"",
                                                                                  b"identity"):
        return 0
    if content_type is None:
        return 0
    media = content_type.split(b";", 1)[0].strip().lower()
    if media == b"application/json" or media.endswith(b"+json"):
        return JSON
    if form and media == b"application/x-www-form-urlencoded":
        return FORM
    return 0
