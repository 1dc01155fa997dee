"""The ``hostMatch`` condition: the request host matches a wildcard ``pattern``.

Theory of operation
-------------------
EG ran ``minimatch(req.headers.host, pattern)``. meshgate translates the
minimatch subset that makes sense for host names into one regex at load
time (``glob_to_regex``): ``*`` and ``**`` (any run of characters, ``/``
excepted), ``?`` (one character), ``[a-z]`` / ``[!a-z]`` classes, ``{a,b}``
alternatives, ``\\x`` escapes and a leading ``!`` that negates. Host names
are case-insensitive, so the pattern is lower-cased and matched against the
exchange's lower-case ``authority``.

EG matched the Host header *with* its port, so ``*.example.com`` never
matched ``api.example.com:8080``. meshgate matches the host without the port,
unless the pattern contains ``:`` -- then it matches the Host header as sent
(lower-cased), port included. A request without a host never matches, as in
EG. Literal patterns and ``*.suffix`` patterns get comparison-only closures.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import field_validator

from meshgate.conditions import CONDITIONS, ConditionSpec, Predicate
from meshgate.config.base import ParamsModel
from meshgate.protocol.exchange import Exchange

_GLOB_CHARS = frozenset("*?[{\\")


def _glob_class(pattern: str, start: int) -> tuple[str, int] | None:
    """Translate the ``[...]`` class opening at ``start``: (regex, index after) or None."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    body_start = i
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 1
    if i >= len(pattern):
        return None
    body = pattern[body_start:i].replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    body = body.replace("^", "\\^")
    return ("[^" if negate else "[") + body + "]", i + 1


def glob_to_regex(pattern: str) -> str:
    """A minimatch host pattern as a regex for ``fullmatch`` (no leading ``!``)."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            while i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and (cls := _glob_class(pattern, i)) is not None:
            out.append(cls[0])
            i = cls[1]
            continue
        elif ch == "{" and "}" in pattern[i:]:
            depth += 1
            out.append("(?:")
        elif ch == "}" and depth:
            depth -= 1
            out.append(")")
        elif ch == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(ch))
        i += 1
    out.extend(")" * depth)
    return "".join(out)


class HostMatchParams(ParamsModel):
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(glob_to_regex(value.lstrip("!")))
        except re.error as exc:
            raise ValueError(f"invalid host pattern {value!r}: {exc.msg}") from None
        return value


def _host_header(ex: Exchange) -> bytes:
    value = ex.header(b"host")
    return ex.authority if value is None else value.lower()


def _matcher(glob: str) -> Callable[[bytes], bool]:
    """bytes -> bool for a pattern without negation; comparisons when possible."""
    raw = glob.encode("utf-8")
    if not _GLOB_CHARS.intersection(glob):
        return raw.__eq__
    if glob.startswith("*.") and not _GLOB_CHARS.intersection(glob[1:]):
        suffix = raw[1:]
        size = len(suffix)

        def ends_with(host: bytes) -> bool:
            return len(host) > size and host.endswith(suffix)
        return ends_with
    fullmatch = re.compile(glob_to_regex(glob).encode("utf-8")).fullmatch

    def matches(host: bytes) -> bool:
        return fullmatch(host) is not None
    return matches


def build(params: HostMatchParams, compile_child: Callable[[Any], Predicate]) -> Predicate:
    pattern = params.pattern.lower()
    negate = False
    while pattern.startswith("!"):
        negate = not negate
        pattern = pattern[1:]
    match = _matcher(pattern)
    with_port = ":" in pattern

    def host_matches(ex: Exchange) -> bool:
        host = _host_header(ex) if with_port else ex.authority
        return bool(host) and match(host) is not negate
    return host_matches


CONDITIONS.add(ConditionSpec("hostMatch", HostMatchParams, build,
                             "Matches when the request host matches the wildcard `pattern`."))
