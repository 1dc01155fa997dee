"""Express Gateway's ``${...}`` templates (log messages, header values, rateLimitBy).

EG evaluated these as JavaScript template literals over ``req`` and
``egContext``. We compile each template once into a list of literal parts and
getters over the Exchange; the supported expressions are the ones EG configs
use: ``req.method``, ``req.url`` / ``req.originalUrl``, ``req.path``,
``req.ip``, ``req.hostname`` / ``req.host``, ``req.protocol``,
``req.headers.NAME`` / ``req.headers['NAME']``, ``req.query.NAME``,
``consumer.id`` / ``consumer.name`` and ``apiEndpoint.name`` /
``pipeline.name`` (written with a dot so that config loading does not take
them for environment variables). Anything else is a config error, reported
when the config is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange

Getter = Callable[["Exchange"], str]
# Control characters a header value may not hold (RFC 9110 5.5): a decoded
# query parameter rendered into a header must not start a new header line.
_NOT_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_value(text: str) -> bytes:
    """A rendered template as a header value: latin-1, control characters removed."""
    if _NOT_IN_HEADER.search(text) is not None:
        text = _NOT_IN_HEADER.sub("", text)
    return text.encode("latin-1", "replace")
_EXPR = re.compile(r"\$\{\s*([^}]*?)\s*\}")
_HEADER = re.compile(
    r"""^(?:req|egContext\.req)\.headers(?:\.([A-Za-z0-9_-]+)|\[['"]([^'"]+)['"]\])$""")
_QUERY = re.compile(r"""^req\.query(?:\.([A-Za-z0-9_-]+)|\[['"]([^'"]+)['"]\])$""")


def _header_getter(name: str) -> Getter:
    key = name.lower().encode()

    def get(ex: Exchange) -> str:
        value = ex.header(key)
        return value.decode("latin-1") if value is not None else ""
    return get


def _query_getter(name: str) -> Getter:
    def get(ex: Exchange) -> str:
        q = ex.path.find(b"?")
        if q < 0:
            return ""
        values = parse_qs(ex.path[q + 1:].decode("latin-1")).get(name)
        return values[0] if values else ""
    return get


def _consumer_getter(field: str) -> Getter:
    def get(ex: Exchange) -> str:
        consumer = (ex.vars or {}).get("consumer")
        if consumer is None:
            return ""
        value = consumer.get(field) if isinstance(consumer, dict) else getattr(consumer, field, "")
        return "" if value is None else str(value)
    return get


_SIMPLE: dict[str, Getter] = {
    "req.method": lambda ex: ex.method.decode(),
    "req.url": lambda ex: ex.path.decode("latin-1"),
    "req.originalUrl": lambda ex: ex.path.decode("latin-1"),
    "req.path": lambda ex: ex.path_only.decode("latin-1"),
    "req.ip": lambda ex: ex.client_addr.decode(),
    "req.hostname": lambda ex: ex.authority.decode("latin-1"),
    "req.host": lambda ex: ex.authority.decode("latin-1"),
    "req.protocol": lambda ex: ex.scheme.decode(),
    "apiEndpoint.name": lambda ex: ex.route.endpoint if ex.route else "",
    "pipeline.name": lambda ex: ex.pipeline.name if ex.pipeline else "",
}


def compile_expression(expr: str) -> Getter:
    expr = expr.replace("egContext.", "") if expr.startswith("egContext.") else expr
    getter = _SIMPLE.get(expr)
    if getter is not None:
        return getter
    m = _HEADER.match(expr)
    if m:
        return _header_getter(m.group(1) or m.group(2))
    m = _QUERY.match(expr)
    if m:
        return _query_getter(m.group(1) or m.group(2))
    if expr.startswith("consumer.") and expr.count(".") == 1:
        return _consumer_getter(expr.split(".", 1)[1])
    raise ValueError(f"unsupported template expression ${{{expr}}}")


def compile_template(template: str) -> Callable[[Exchange], str]:
    """Compile once; raises ValueError for an unsupported expression."""
    parts: list[str | Getter] = []
    pos = 0
    for m in _EXPR.finditer(template):
        if m.start() > pos:
            parts.append(template[pos:m.start()])
        parts.append(compile_expression(m.group(1)))
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    if not any(callable(p) for p in parts):
        constant = template

        def render_constant(ex: Exchange) -> str:
            return constant
        return render_constant

    def render(ex: Exchange) -> str:
        return "".join(p if isinstance(p, str) else p(ex) for p in parts)
    return render
