"""cors: Cross-Origin Resource Sharing headers and preflight answers (EG's cors policy).

Theory of operation
-------------------
EG passed its params to the ``cors`` npm middleware; meshgate keeps its
parameters, defaults and headers:

* ``origin`` -- ``'*'`` (default) answers ``Access-Control-Allow-Origin: *``;
  another string is sent as it is (with ``Vary: Origin``); ``true`` reflects
  the request's ``Origin``; a list reflects it when one entry matches. An
  entry written ``/regex/`` (or ``/regex/i``) is a JavaScript regex, searched
  in the origin, since YAML cannot hold the RegExp objects EG's JavaScript
  configs used; ``false`` turns the policy off.
* ``methods``, ``allowedHeaders`` (when unset, the request's
  ``Access-Control-Request-Headers`` is reflected), ``exposedHeaders``,
  ``credentials``, ``maxAge``, ``optionsSuccessStatus`` (204),
  ``preflightContinue``.

Every OPTIONS request is a preflight, as in the npm middleware. It is
answered here (the action returns True) so that an auth policy later in the
pipeline never sees it -- EG issue #932, where key-auth rejected preflights --
unless ``preflightContinue`` is set, which only adds the headers and goes on.
Other requests go on with the headers queued on the Exchange
(``add_response_headers``), which the codec puts on whatever response
follows: the upstream's (where they replace its own CORS headers) or a local
one such as a 401 or a 429, which browsers can then read.

All header lines that do not depend on the request are built at load time;
a request with a fixed ``origin`` costs one list copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from meshgate.config.base import ParamsModel
from meshgate.config.jsregex import to_python_regex
from meshgate.policies import POLICIES, BuildContext, PolicySpec

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers

_REGEX = re.compile(r"^/(.*)/([a-z]*)$", re.S)
DEFAULT_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE"


def _join(value: Any) -> Any:
    """A list of names -> the comma-separated header value the middleware sends."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


HeaderList = Annotated[str | None, BeforeValidator(_join, json_schema_input_type=str | list[str])]


class CorsParams(ParamsModel):
    origin: bool | str | list[str] = Field(
        "*", description="'*', a fixed origin, true (reflect), or a list of origins and "
                         "/regex/ patterns to reflect; false disables the policy")
    methods: Annotated[str, BeforeValidator(_join, json_schema_input_type=str | list[str])] = (
        Field(DEFAULT_METHODS, description="Access-Control-Allow-Methods"))
    allowedHeaders: HeaderList = Field(
        None, description="Access-Control-Allow-Headers; unset: reflect the request's")
    exposedHeaders: HeaderList = Field(None, description="Access-Control-Expose-Headers")
    credentials: bool = Field(False, description="Send Access-Control-Allow-Credentials: true")
    maxAge: int | None = Field(None, description="Access-Control-Max-Age (seconds)")
    preflightContinue: bool = Field(
        False, description="Pass preflights on to the next policy instead of answering")
    optionsSuccessStatus: int = Field(204, ge=200, le=299,
                                      description="Status of an answered preflight")

    @field_validator("origin")
    @classmethod
    def _patterns_compile(cls, value: bool | str | list[str]) -> bool | str | list[str]:
        entries = value if isinstance(value, list) else [value]
        for entry in entries:
            if isinstance(entry, str):
                _origin_matcher(entry)
        return value


def _origin_matcher(entry: str) -> Callable[[str], bool]:
    """``/regex/flags`` -> a regex search; anything else -> equality."""
    m = _REGEX.match(entry)
    if m is None:
        return entry.__eq__
    body, flags = m.groups()
    if set(flags) - {"i", "g", "m", "s", "u"}:
        raise ValueError(f"unsupported regex flags {flags!r} in origin {entry!r}")
    pattern = re.compile(to_python_regex(body), (re.I if "i" in flags else 0)
                         | (re.M if "m" in flags else 0) | (re.S if "s" in flags else 0))
    return lambda origin: pattern.search(origin) is not None


def _h(name: str, value: str) -> tuple[bytes, bytes]:
    return name.lower().encode(), value.encode("latin-1")


_ACAO = b"access-control-allow-origin"
_VARY_ORIGIN = (b"vary", b"Origin")


class Cors:
    def __init__(self, params: CorsParams, ctx: BuildContext) -> None:
        origin = params.origin
        self.enabled = origin is not False
        self.reflect_any = origin is True
        self.matchers: tuple[Callable[[str], bool], ...] | None = None
        fixed: Headers | None = None
        if origin == "*":
            fixed = [(_ACAO, b"*")]
        elif isinstance(origin, str) and _REGEX.match(origin) is None:
            fixed = [(_ACAO, origin.encode("latin-1")), _VARY_ORIGIN]
        elif isinstance(origin, (str, list)):
            entries = origin if isinstance(origin, list) else [origin]
            self.matchers = tuple(_origin_matcher(e) for e in entries)
        self.fixed_origin = fixed
        credentials = [_h("Access-Control-Allow-Credentials", "true")] if params.credentials else []
        exposed = ([_h("Access-Control-Expose-Headers", params.exposedHeaders)]
                   if params.exposedHeaders else [])
        max_age = ([_h("Access-Control-Max-Age", str(params.maxAge))]
                   if params.maxAge is not None else [])
        self.reflect_headers = not params.allowedHeaders
        allowed = ([] if self.reflect_headers
                   else [_h("Access-Control-Allow-Headers", params.allowedHeaders or "")])
        # The middleware's order: origin, credentials, methods, headers, max-age, exposed.
        self.actual_tail: Headers = credentials + exposed
        self.preflight_head: Headers = [
            *credentials, _h("Access-Control-Allow-Methods", params.methods), *allowed]
        self.preflight_tail: Headers = max_age + exposed
        self.actual_all = (fixed + self.actual_tail) if fixed is not None else None
        self.answer = not params.preflightContinue
        self.status = params.optionsSuccessStatus

    def _origin(self, ex: Exchange) -> Headers:
        if self.fixed_origin is not None:
            return list(self.fixed_origin)
        origin = ex.header(b"origin")
        if origin is None:
            return [_VARY_ORIGIN]
        if self.reflect_any or self._allowed(origin.decode("latin-1")):
            return [(_ACAO, origin), _VARY_ORIGIN]
        return [_VARY_ORIGIN]

    def _allowed(self, origin: str) -> bool:
        for match in self.matchers or ():  # noqa: SIM110 -- no generator per request
            if match(origin):
                return True
        return False

    def __call__(self, ex: Exchange) -> bool | None:
        if not self.enabled:
            return None
        if ex.method != b"OPTIONS":
            if self.actual_all is not None:
                ex.add_response_headers(self.actual_all)
            else:
                ex.add_response_headers(self._origin(ex) + self.actual_tail)
            return None
        headers = self._origin(ex) + self.preflight_head
        if self.reflect_headers:
            requested = ex.header(b"access-control-request-headers")
            if requested:
                headers.append((b"access-control-allow-headers", requested))
            headers.append((b"vary", b"Access-Control-Request-Headers"))
        headers += self.preflight_tail
        if not self.answer:
            ex.add_response_headers(headers)
            return None
        ex.respond(self.status, b"", headers)
        return True


POLICIES.add(PolicySpec("cors", CorsParams, Cors,
                        "CORS headers; answers preflight requests before auth policies run"))
