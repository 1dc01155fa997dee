"""apiEndpoint matching, compiled once per Snapshot.

Theory of operation
-------------------
Express Gateway tries apiEndpoints in config order and the first whose host,
path and method match wins. Doing that literally costs O(endpoints) per
request; we keep the semantics and drop the cost:

1. **Host.** Entries are grouped by host pattern: exact names in a dict,
   wildcard (``*.example.com``) and regex hosts in a short list, ``*`` apart.
   The candidate set for one request host is computed once and cached.
2. **Path.** Each candidate set holds a segment trie of its Express-style
   paths (``/users/:id``, ``/api/*``, ``*``). A lookup walks the trie once,
   collecting every entry whose path matches; paths the trie cannot express
   (``pathRegex``, ``/a*b``, optional params) sit in a small linear list.
3. **Order.** Every entry carries its config position; among the matches the
   lowest position whose methods allow the request wins.

Matching is case-insensitive and ignores one trailing slash, as Express does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_CACHE_LIMIT = 4096


@dataclass(eq=False)
class Route:
    """One (apiEndpoint, host, path) entry in config order."""

    order: int
    endpoint: str              # apiEndpoint name
    pipeline: Any              # CompiledPipeline
    host: str                  # "*", exact, "*.wild.card"
    path: str | None           # Express path; None when path_regex is used
    methods: frozenset[bytes] | None
    scopes: tuple[str, ...] = ()
    path_regex: re.Pattern[bytes] | None = None
    host_regex: re.Pattern[bytes] | None = None
    metric_key: tuple[str, str] = ("", "")
    strip_pos: int | None = None   # stripPath cut point; None: nothing to strip

    def __post_init__(self) -> None:
        if self.path is not None and self.path_regex is None:
            m = re.search(r"[:*]", self.path)
            self.strip_pos = m.start() if m else -1


@dataclass
class _Node:
    literal: dict[bytes, _Node] = field(default_factory=dict)
    param: _Node | None = None
    ends: list[Route] = field(default_factory=list)   # pattern ends here
    rest: list[Route] = field(default_factory=list)   # "/*": one or more segments follow


_SIMPLE_SEGMENT = re.compile(r"^(?::[A-Za-z0-9_]+|[^:*?()+]*)$")


def _express_regex(path: str) -> re.Pattern[bytes]:
    """Translate an Express 4 route path (path-to-regexp 0.1) to a regex."""
    out: list[str] = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == ":":
            m = re.match(r":([A-Za-z0-9_]+)(\([^)]*\))?(\?)?", path[i:])
            assert m is not None
            body = m.group(2)[1:-1] if m.group(2) else r"[^/]+?"
            if m.group(3):
                if out and out[-1] == "/":
                    out[-1] = f"(?:/({body}))?"
                else:
                    out.append(f"({body})?")
            else:
                out.append(f"({body})")
            i += len(m.group(0))
        elif c == "*":
            out.append("(.*)")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile(("^" + "".join(out) + "/?$").encode(), re.IGNORECASE)


class _PathIndex:
    """Trie of simple Express paths plus a linear list of the rest."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.root = _Node()
        self.linear: list[Route] = []
        self.everything: list[Route] = []   # "*" / "/*": matches any path
        for route in routes:
            self._add(route)
        root = self.root
        self.only_everything = not (self.linear or root.literal or root.param
                                    or root.ends or root.rest)

    def _add(self, route: Route) -> None:
        if route.path_regex is not None or route.path is None:
            self.linear.append(route)
            return
        path = route.path
        if path in ("*", "/*"):
            self.everything.append(route)
            return
        if not path.startswith("/"):
            self.linear.append(route)
            return
        segments = path[1:].split("/")
        star = segments[-1] == "*"
        if star:
            segments = segments[:-1]
        if segments and segments[-1] == "" and not star:
            segments = segments[:-1]       # "/users/" is "/users"
        if not all(_SIMPLE_SEGMENT.match(s) for s in segments):
            route.path_regex = _express_regex(path)
            self.linear.append(route)
            return
        node = self.root
        for seg in segments:
            if seg.startswith(":"):
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node = node.literal.setdefault(seg.lower().encode(), _Node())
        (node.rest if star else node.ends).append(route)

    def match(self, target: bytes) -> list[Route]:
        """Every route whose path matches ``target`` (query ignored), in config order."""
        if self.only_everything:
            return self.everything
        q = target.find(b"?")
        path = target if q < 0 else target[:q]
        found: list[Route] = list(self.everything)
        segments = path[1:].lower().split(b"/") if path.startswith(b"/") else [path.lower()]
        self._walk(self.root, segments, 0, found)
        for route in self.linear:
            assert route.path_regex is not None
            if route.path_regex.search(path):
                found.append(route)
        if len(found) > 1:
            found.sort(key=_order)
        return found

    def _walk(self, node: _Node, segs: list[bytes], i: int, found: list[Route]) -> None:
        n = len(segs)
        if node.rest and i < n:
            found.extend(node.rest)
        if i == n or (i == n - 1 and segs[i] == b""):
            found.extend(node.ends)
            if i == n:
                return
        seg = segs[i]
        child = node.literal.get(seg)
        if child is not None:
            self._walk(child, segs, i + 1, found)
        if node.param is not None and seg:
            self._walk(node.param, segs, i + 1, found)


class _HostIndex:
    def __init__(self, routes: list[Route]) -> None:
        self.exact: dict[bytes, list[Route]] = {}
        self.wild: list[Route] = []     # wildcard hosts and hostRegex
        self.any: list[Route] = []      # host "*"
        for route in routes:
            if route.host_regex is not None or (route.host != "*" and "*" in route.host):
                self.wild.append(route)
            elif route.host == "*":
                self.any.append(route)
            else:
                self.exact.setdefault(route.host.lower().encode(), []).append(route)

    def key(self, host: bytes) -> tuple[bytes | None, tuple[int, ...]]:
        """Hosts with the same key share one path index (random hosts share one)."""
        exact = host if host in self.exact else None
        return exact, tuple(r.order for r in self.wild if _host_matches(r, host))

    def candidates(self, key: tuple[bytes | None, tuple[int, ...]]) -> list[Route]:
        exact, wild = key
        chosen = list(self.any)
        if exact is not None:
            chosen.extend(self.exact[exact])
        wanted = set(wild)
        chosen.extend(r for r in self.wild if r.order in wanted)
        chosen.sort(key=_order)
        return chosen


def _host_matches(route: Route, host: bytes) -> bool:
    if route.host_regex is not None:
        return route.host_regex.search(host) is not None
    if route.host == "*":
        return True
    return _wildcard_regex(route.host).match(host) is not None


_WILDCARDS: dict[str, re.Pattern[bytes]] = {}


def _wildcard_regex(pattern: str) -> re.Pattern[bytes]:
    rx = _WILDCARDS.get(pattern)
    if rx is None:
        parts = [r"[^.]+" if p == "*" else re.escape(p) for p in pattern.lower().split(".")]
        rx = _WILDCARDS[pattern] = re.compile((r"\.".join(parts) + "$").encode())
    return rx


class Router:
    """Maps (host, path, method) to the first matching Route."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._hosts = _HostIndex(routes)
        self._by_key: dict[tuple[bytes | None, tuple[int, ...]], _PathIndex] = {}
        self._by_host: dict[bytes, _PathIndex] = {}

    def _index_for(self, host: bytes) -> _PathIndex:
        key = self._hosts.key(host)
        index = self._by_key.get(key)
        if index is None:
            index = self._by_key[key] = _PathIndex(self._hosts.candidates(key))
        if len(self._by_host) >= _CACHE_LIMIT:
            self._by_host.clear()
        self._by_host[host] = index
        return index

    def match(self, host: bytes, target: bytes, method: bytes) -> Route | None:
        """First route for a request; ``target`` is the path with its query."""
        index = self._by_host.get(host) or self._index_for(host)
        for route in index.everything if index.only_everything else index.match(target):
            if route.methods is None or method in route.methods:
                return route
        return None


def _order(route: Route) -> int:
    return route.order
