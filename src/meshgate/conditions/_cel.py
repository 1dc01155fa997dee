"""CEL (Common Expression Language) programs over an Exchange, for ``expression``.

Theory of operation
-------------------
EG's ``expression`` condition and policy ran JavaScript; meshgate runs CEL
(the language of Envoy RBAC, Kubernetes admission rules and Google IAM
conditions) with ``cel-python``. An expression sees three variables:

* ``request`` -- ``method``, ``path`` (no query), ``url`` (with it), ``host``,
  ``scheme``, ``ip``, ``headers`` (lower-case names; repeated headers joined
  with ``", "``) and ``query`` (first value of each parameter);
* ``headers`` -- the same map as ``request.headers``;
* ``consumer`` -- ``id``, ``name``, ``username``, ``type``, ``scopes`` of the
  consumer an auth policy put in ``ex.vars["consumer"]``, or ``null``.

``compile_cel(source)`` parses once (a syntax error, an unknown variable or
request field, or an upper-case header name is a ``ValueError`` naming the
column) and caches the program by its source.

cel-python interprets the parse tree, which costs 0.1-1 ms per evaluation.
As CEL has no side effects and nothing non-deterministic, a program's result
depends only on the inputs it reads; the compiler walks the tree to find
exactly those (``request.method``, ``headers["x-api-version"]``, the whole
header map when the expression iterates it, ...). Each evaluation first
builds a key of just those values and looks it up in a small per-program
memo; only a miss builds the CEL variables and runs the interpreter. A
condition on method, path or a header is then a few dictionary look-ups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    import lark

    from meshgate.protocol.exchange import Exchange

log = logging.getLogger("meshgate.expression")

REQUEST_FIELDS = ("method", "path", "url", "host", "scheme", "ip", "headers", "query")
CONSUMER_FIELDS = ("id", "name", "username", "type", "scopes")
_ROOTS = ("request", "headers", "consumer")
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TYPE_NAMES = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map",
                         "null_type", "type"})
MEMO_SIZE = 1024
_PROGRAMS: dict[str, CelProgram] = {}
_ENV: Any = None

Dep = tuple[str, str | None]          # ("request", "method"), ("headers", "x-a"), ...
KeyPart = Callable[["Exchange"], Hashable]


def compile_cel(source: str) -> CelProgram:
    """The compiled (and cached) program; ValueError for an invalid expression."""
    program = _PROGRAMS.get(source)
    if program is None:
        program = CelProgram(source)
        if len(_PROGRAMS) >= 256:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[source] = program
    return program


def _environment() -> Any:
    global _ENV
    if _ENV is None:
        # Imported on first use: 0.6 s, paid only by configs using CEL.
        import celpy
        _ENV = celpy.Environment()
    return _ENV


class CelProgram:
    def __init__(self, source: str) -> None:
        import celpy

        env = _environment()
        try:
            tree = env.compile(source)
        except celpy.CELParseError as exc:
            where = f"line {exc.line}, column {exc.column}" if exc.line else "the end"
            raise ValueError(f"invalid CEL expression at {where}: "
                             f"{' '.join(str(exc).split())}") from None
        deps = _dependencies(tree)
        self.source = source
        self.runner = env.program(tree)
        self.deps = deps
        self.key_parts: tuple[KeyPart, ...] = tuple(_key_part(d) for d in sorted(
            deps, key=lambda d: (d[0], d[1] or "")))
        self.memo: dict[tuple[Hashable, ...], bool] = {}
        self.bool_type: type = celpy.celtypes.BoolType

    def __call__(self, ex: Exchange) -> bool:
        key = tuple([part(ex) for part in self.key_parts])
        memo = self.memo
        result = memo.get(key)
        if result is None:
            result = self._evaluate(ex)
            if len(memo) >= MEMO_SIZE:
                memo.pop(next(iter(memo)))
            memo[key] = result
        return result

    def _evaluate(self, ex: Exchange) -> bool:
        from celpy import json_to_cel

        activation = {name: json_to_cel(value) for name, value in _variables(ex, self.deps)}
        consumer = activation.get("consumer")
        if consumer is not None:
            activation["consumer"] = _null_comparable(consumer)
        try:
            value = self.runner.evaluate(activation)
        except Exception as exc:     # a CEL error (no such key...) makes the expression false
            if log.isEnabledFor(logging.DEBUG):
                log.debug("expression %r failed: %s", self.source, exc)
            return False
        return isinstance(value, self.bool_type) and bool(value)


_NULLABLE_MAP: Any = None


def _null_comparable(value: Any) -> Any:
    """The consumer map, comparable with ``null`` (``consumer != null``).

    cel-python follows the older CEL spec, where comparing a map with null is
    a "no such overload" error; current CEL says a map is simply not equal to
    null, which is what ``consumer == null`` / ``!= null`` checks need.
    """
    global _NULLABLE_MAP
    if _NULLABLE_MAP is None:
        from celpy.celtypes import MapType

        class NullComparableMap(MapType):
            def __eq__(self, other: Any) -> bool:
                return False if other is None else super().__eq__(other)

            def __ne__(self, other: Any) -> bool:
                return True if other is None else super().__ne__(other)

            __hash__ = None  # type: ignore[assignment]

        _NULLABLE_MAP = NullComparableMap
    return _NULLABLE_MAP(value)


# -- which inputs an expression reads ----------------------------------------
def _dependencies(tree: lark.Tree) -> frozenset[Dep]:
    deps: set[Dep] = set()
    idents: dict[str, Any] = {}
    bound: set[str] = set()
    _walk(tree, deps, idents, bound)
    for name, token in idents.items():
        if name not in _ROOTS and name not in bound and name not in _TYPE_NAMES:
            hint = (" (expressions are CEL, not JavaScript: request.url, "
                    "request.headers[\"x-name\"], ...)" if name in ("req", "egContext") else "")
            raise ValueError(f"unknown variable {name!r}{_at(token)}; "
                             f"expressions can use {', '.join(_ROOTS)}{hint}")
    if ("request", None) in deps:
        deps.discard(("request", None))
        deps.update(("request", f) for f in REQUEST_FIELDS if f not in ("headers", "query"))
        deps.update({("headers", None), ("query", None)})
    for whole in ("headers", "query", "consumer"):
        if (whole, None) in deps:
            deps.difference_update({d for d in deps if d[0] == whole and d[1] is not None})
    return frozenset(deps)


def _walk(node: Any, deps: set[Dep], idents: dict[str, Any], bound: set[str]) -> None:
    import lark

    if not isinstance(node, lark.Tree):
        return
    kind = node.data
    if kind in ("member_dot", "member_index"):
        chain = _static_chain(node)
        if chain is not None:
            root, keys, tokens = chain
            idents.setdefault(str(root), root)
            _record(str(root), keys, deps, tokens)
            return
    elif kind == "ident":
        token = node.children[0]
        idents.setdefault(str(token), token)
        _record(str(token), [], deps, [])
        return
    elif kind == "member_dot_arg" and str(node.children[1]) in _MACROS:
        args = node.children[2] if len(node.children) > 2 else None
        if isinstance(args, lark.Tree) and args.children:
            var = _bare_ident(args.children[0])
            if var is not None:
                bound.add(var)
    for child in node.children:
        _walk(child, deps, idents, bound)


def _static_chain(node: lark.Tree) -> tuple[Any, list[str], list[Any]] | None:
    """``request.headers["x"]`` -> (Token request, ["headers", "x"], their tokens), or
    None when an index is not a literal."""
    import lark

    keys: list[str] = []
    tokens: list[Any] = []
    while isinstance(node, lark.Tree):
        kind, children = node.data, node.children
        if kind == "member" and len(children) == 1:
            node = children[0]
        elif kind == "member_dot":
            keys.append(str(children[1]))
            tokens.append(children[1])
            node = children[0]
        elif kind == "member_index":
            literal = _string_literal(children[1])
            if literal is None:
                return None
            keys.append(literal)
            tokens.append(_descend(children[1]).children[0])
            node = children[0]
        elif kind == "primary" and len(children) == 1 and isinstance(children[0], lark.Tree) \
                and children[0].data == "ident":
            keys.reverse()
            tokens.reverse()
            return children[0].children[0], keys, tokens
        else:
            return None
    return None


def _descend(node: Any) -> Any:
    import lark

    while isinstance(node, lark.Tree) and len(node.children) == 1 \
            and node.data not in ("ident", "literal"):
        node = node.children[0]
    return node


def _bare_ident(node: Any) -> str | None:
    node = _descend(node)
    if getattr(node, "data", None) == "ident":
        return str(node.children[0])
    return None


def _string_literal(node: Any) -> str | None:
    """The value of a plain string literal (no escapes, no raw/bytes prefix), else None."""
    node = _descend(node)
    if getattr(node, "data", None) != "literal":
        return None
    token = node.children[0]
    if getattr(token, "type", None) != "STRING_LIT":
        return None
    text = str(token)
    for quote in ('"""', "'''", '"', "'"):
        if len(text) >= 2 * len(quote) and text.startswith(quote) and text.endswith(quote):
            inner = text[len(quote):-len(quote)]
            return None if "\\" in inner else inner
    return None


def _at(token: Any) -> str:
    column = getattr(token, "column", None)
    return f" at column {column}" if column else ""


def _record(root: str, keys: list[str], deps: set[Dep], tokens: list[Any]) -> None:
    """Note the input ``root.keys...`` reads; ``tokens`` locate the keys for errors."""
    if root == "consumer":
        deps.add(("consumer", keys[0] if keys else None))
        return
    if root == "headers":
        keys = ["headers", *keys]
        tokens = [None, *tokens]
    elif root != "request":
        return
    if not keys:
        deps.add(("request", None))
        return
    field = keys[0]
    if field not in REQUEST_FIELDS:
        raise ValueError(f"request has no field {field!r}{_at(tokens[0])}; "
                         f"fields: {', '.join(REQUEST_FIELDS)}")
    if field in ("headers", "query"):
        name = keys[1] if len(keys) > 1 else None
        if field == "headers" and name is not None and name != name.lower():
            raise ValueError(f"header names are lower-case in expressions: "
                             f"use {name.lower()!r}, not {name!r}{_at(tokens[1])}")
        deps.add((field, name))
    else:
        deps.add(("request", field))


# -- the inputs themselves ---------------------------------------------------
_SCALARS: dict[str, Callable[[Exchange], bytes]] = {
    "method": lambda ex: ex.method,
    "path": lambda ex: ex.path_only,
    "url": lambda ex: ex.path,
    "host": lambda ex: ex.authority,
    "scheme": lambda ex: ex.scheme,
    "ip": lambda ex: ex.client_addr,
}


def _key_part(dep: Dep) -> KeyPart:
    kind, name = dep
    if kind == "request":
        return _SCALARS[name or ""]
    if kind == "headers":
        if name is None:
            return lambda ex: tuple(ex.headers)
        wanted = name.encode("latin-1")
        return lambda ex: _header_value(ex, wanted)
    if kind == "query":
        return lambda ex: ex.path[ex.path.find(b"?") + 1:] if b"?" in ex.path else b""
    if name is None:
        return lambda ex: _freeze(consumer_view(ex))
    field = name
    return lambda ex: _freeze((consumer_view(ex) or {}).get(field, _ABSENT))


_ABSENT = object()


def _header_value(ex: Exchange, name: bytes) -> bytes | None:
    found: bytes | None = None
    for k, v in ex.headers:
        if k == name:
            found = v if found is None else found + b", " + v
    return found


def _freeze(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _variables(ex: Exchange, deps: Iterable[Dep]) -> list[tuple[str, Any]]:
    """Plain-Python values of the variables the expression reads."""
    request: dict[str, Any] = {}
    headers: dict[str, str] | None = None
    consumer_used = False
    for kind, name in deps:
        if kind == "request" and name is not None:
            request[name] = _SCALARS[name](ex).decode("latin-1")
        elif kind == "headers":
            headers = headers if headers is not None else {}
            if name is None:
                for k, v in ex.headers:
                    key = k.decode("latin-1")
                    text = v.decode("latin-1")
                    headers[key] = headers[key] + ", " + text if key in headers else text
            else:
                value = _header_value(ex, name.encode("latin-1"))
                if value is not None:
                    headers[name] = value.decode("latin-1")
        elif kind == "query" and "query" not in request:
            q = ex.path.find(b"?")
            parsed = parse_qs(ex.path[q + 1:].decode("latin-1"), keep_blank_values=True) \
                if q >= 0 else {}
            request["query"] = {k: v[0] for k, v in parsed.items()}
        elif kind == "consumer":
            consumer_used = True
    out: list[tuple[str, Any]] = []
    if headers is not None:
        request["headers"] = headers
        out.append(("headers", headers))
    out.append(("request", request))
    if consumer_used:
        out.append(("consumer", consumer_view(ex)))
    return out


def consumer_view(ex: Exchange) -> dict[str, Any] | None:
    """The consumer an auth policy set, as plain data (None when anonymous)."""
    consumer = ex.vars.get("consumer") if ex.vars else None
    if consumer is None:
        return None
    if isinstance(consumer, dict):
        source = consumer
        view = {k: v for k, v in consumer.items() if _plain(v)}
    else:
        source = {f: getattr(consumer, f, None) for f in CONSUMER_FIELDS}
        view = {}
    for field in CONSUMER_FIELDS:
        value = source.get(field)
        if field == "scopes":
            view[field] = [str(s) for s in value or ()]
        elif field in ("name", "username") and value is None:
            other = source.get("username" if field == "name" else "name")
            view[field] = None if other is None else str(other)
        else:
            view[field] = None if value is None else str(value)
    return view


def _plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool))
                                                    for v in value)
