"""Property tests of three pure pieces: the path normaliser, the config loader, the router.

* ``protocol/path.normalize``: the result is absolute, free of dot segments,
  idempotent, a fixed point of an independent RFC 3986 resolver (a backend
  resolving what we forward sees the same path), and unchanged when
  unreserved characters are percent-encoded; encoded slashes are refused by
  default and merged slashes never survive ``merge_slashes``.
* the config loader: any YAML document (built from the config's own
  vocabulary, or mangled text) is accepted or refused with a ``ConfigError``
  naming the file and a line inside it, never a traceback.
* ``gateway/router.Router``: for generated apiEndpoint sets and requests, the
  trie's answer is that of a plain reference: Express 4 paths translated to
  regexes (path-to-regexp 0.1: ``:name`` is one non-empty segment, ``*`` any
  text, one trailing slash optional, case-insensitive), tried in config order.
"""

from __future__ import annotations

import re
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz import profile
from tests.support.recorder_reference import normalise as reference_normalise

# -- the path normaliser -----------------------------------------------------------------
SEGMENT_PIECES = [b"", b".", b"..", b"%2e", b"%2E", b".%2e", b"%2e%2E", b"a", b"B", b"%41",
                  b"%7e", b"%7E", b"~", b"%20", b"%25", b"%c3%a4", b"x.y", b"...", b"a;b=c"]
SLASHY = [b"%2F", b"%2f", b"%5C", b"%5c", b"\\"]


def _segments(extra: list[bytes]) -> st.SearchStrategy[bytes]:
    piece = st.one_of(st.sampled_from(SEGMENT_PIECES + extra),
                      st.binary(max_size=4).filter(
                          lambda b: not any(c in b for c in b"/%\\?#")))
    return st.lists(st.lists(piece, min_size=1, max_size=3).map(b"".join), max_size=8).map(
        lambda segs: b"/" + b"/".join(segs))


PATHS = _segments([])
SLASHY_PATHS = _segments(SLASHY)
UNRESERVED = string.ascii_letters + string.digits + "-._~"


def _path_module() -> Any:
    return pytest.importorskip("meshgate.protocol.path")


def _segments_of(path: bytes) -> list[bytes]:
    return path.split(b"/")[1:]


@profile(fast_examples=300, long_examples=50000)
@given(PATHS)
@example(b"/public/%2e%2e/admin")
@example(b"/a/./b/../../..")
def test_normalised_paths_are_absolute_dot_free_and_stable(path: bytes) -> None:
    mod = _path_module()
    normalize = mod.normalize
    try:
        out = normalize(path)
    except mod.BadPath as exc:         # only a dot segment with ';' parameters is refused
        assert "';'" in str(exc) and b";" in path.replace(b"%3b", b";").replace(b"%3B", b";")
        return
    assert out.startswith(b"/")
    assert b"." not in _segments_of(out) and b".." not in _segments_of(out)
    assert normalize(out) == out
    resolved = reference_normalise(out.decode("latin-1")).encode("latin-1")
    assert resolved == out, "a backend resolving the forwarded path would see another one"
    assert out == reference_normalise(path.decode("latin-1")).encode("latin-1")


@profile(fast_examples=300, long_examples=50000)
@given(PATHS, st.data())
def test_encoding_unreserved_characters_does_not_change_the_path(path: bytes,
                                                                 data: st.DataObject) -> None:
    normalize = _path_module().normalize
    encoded = bytearray()
    for i, c in enumerate(path):
        inside_escape = b"%" in path[max(0, i - 2):i]
        if chr(c) in UNRESERVED and not inside_escape and data.draw(st.booleans()):
            hexa = b"%02x" % c
            encoded += b"%" + (hexa.upper() if data.draw(st.booleans()) else hexa)
        else:
            encoded.append(c)
    assert _outcome(normalize, bytes(encoded)) == _outcome(normalize, path)


def _outcome(normalize: Any, path: bytes) -> bytes | None:
    """The normalised path, or None when it is refused (a dot segment with ';', say)."""
    try:
        return bytes(normalize(path))
    except _path_module().BadPath:
        return None


@profile(fast_examples=300, long_examples=50000)
@given(SLASHY_PATHS)
@example(b"/public/..%2fadmin")
@example(b"/public/..;/admin")
@example(b"/public/%2E%2E%3B/admin")
def test_encoded_slashes_are_refused_by_default_and_never_add_segments(path: bytes) -> None:
    mod = _path_module()
    try:
        out = mod.normalize(path)
    except mod.BadPath as exc:
        assert any(s in path for s in SLASHY) or "';'" in str(exc)
    else:
        assert not any(s in out for s in SLASHY)
    for mode in ("keep", "unescape"):
        try:
            kept = mod.normalize(path, mod.SLASH_MODES[mode])
        except mod.BadPath as exc:      # a dot segment with ';' parameters, in any mode
            assert "';'" in str(exc)
            continue
        assert kept.startswith(b"/") and b".." not in _segments_of(kept)
        assert mod.normalize(kept, mod.SLASH_MODES[mode]) == kept
    try:
        merged = mod.normalize(path, mod.SLASH_MODES["unescape"], merge_slashes=True)
    except mod.BadPath as exc:
        assert "';'" in str(exc)
    else:
        assert b"//" not in merged


# -- the config loader --------------------------------------------------------------------
KEYS = ["http", "https", "admin", "apiEndpoints", "serviceEndpoints", "policies", "pipelines",
        "host", "hostname", "port", "paths", "path", "methods", "url", "urls", "action",
        "condition", "name", "proxy", "key-auth", "rate-limit", "serviceEndpoint", "server",
        "tls", "pipeline", "plugins", "discovery", "healthCheck", "retry", "max", "windowMs",
        "timeout", "pathNormalization", "encodedSlashes", "${HOME}", "<<", "?", "a.b"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000),
                    st.floats(allow_nan=True), st.sampled_from(
                        ["*", "/*", "/users/:id", "http://127.0.0.1:1", "${X}", "${X:-1}",
                         "$${X}", "proxy", "key-auth", "reject", "", "\t", "~"]),
                    st.text(max_size=8))
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=20)
CONFIG_DIR = Path(tempfile.mkdtemp(prefix="meshgate-fuzz-config-"))


def _load(text: str, file: str) -> None:
    from meshgate.config.loader import ConfigError, load_gateway_file, load_system_file

    target = CONFIG_DIR / file
    target.write_text(text, encoding="utf-8")
    load = load_system_file if file.startswith("system") else load_gateway_file
    lines = text.count("\n") + 1
    try:
        load(target, env={"X": "1"})
    except ConfigError as err:
        assert err.file == str(target), err
        assert err.line is None or 1 <= err.line <= lines, f"line {err.line} of {lines}: {err}"
        assert str(err).startswith(str(target))


@profile(fast_examples=150, long_examples=20000)
@given(st.dictionaries(st.sampled_from(KEYS), DOCUMENTS, max_size=6),
       st.sampled_from(["gateway.config.yml", "system.config.yml"]))
def test_any_yaml_mapping_is_loaded_or_refused_with_file_and_line(
        document: dict[str, Any], file: str) -> None:
    _load(yaml.safe_dump(document, sort_keys=False), file)


@profile(fast_examples=150, long_examples=20000)
@given(DOCUMENTS, st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(
    [":", "-", " ", "\n", "\t", "{", "[", "&a", "*a", "!!python/object", "%", "'", "\"", "#"])),
    max_size=4))
def test_mangled_yaml_text_is_refused_with_file_and_line(document: Any,
                                                          edits: list[tuple[int, str]]) -> None:
    text = yaml.safe_dump({"apiEndpoints": document, "pipelines": document}, sort_keys=False)
    for pos, piece in edits:
        at = pos % (len(text) + 1)
        text = text[:at] + piece + text[at:]
    _load(text, "gateway.config.yml")


# -- the router -----------------------------------------------------------------------------
LITERALS = st.sampled_from(["a", "b", "users", "v1", "A", "x.y", "x-y", "B"])
ROUTE_SEGMENT = st.one_of(LITERALS, st.sampled_from([":id", ":name"]))
HOSTS = st.sampled_from(["*", "a.com", "*.a.com", "b.a.com", "A.com"])
REQUEST_HOSTS = st.sampled_from([b"a.com", b"b.a.com", b"x.b.a.com", b"other", b"c.a.com"])
METHOD_SETS = st.one_of(st.none(), st.sets(st.sampled_from([b"GET", b"POST"]), min_size=1))


@st.composite
def route_path(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["plain", "star", "everything", "inner-star", "slash"]))
    if kind == "everything":
        return draw(st.sampled_from(["*", "/*"]))
    path = "/" + "/".join(draw(st.lists(ROUTE_SEGMENT, min_size=1, max_size=3)))
    if kind == "star":
        return path + "/*"
    if kind == "inner-star":
        return path + "*" + draw(LITERALS)
    return path + "/" if kind == "slash" else path


@st.composite
def request_target(draw: st.DrawFn) -> bytes:
    segs = draw(st.lists(st.one_of(LITERALS, st.sampled_from(["", "7", "zz", "X.Y"])),
                         max_size=4))
    path = "/" + "/".join(segs)
    if draw(st.booleans()):
        path += "/"
    if draw(st.booleans()):
        path += "?q=" + draw(LITERALS)
    return path.encode()


def _express(path: str) -> re.Pattern[str]:
    """path-to-regexp 0.1, as Express 4 uses it (no optional or custom-regex params):
    one trailing slash is optional, whether the route path ends with one or not."""
    path = path[:-1] if path.endswith("/") and len(path) > 1 else path
    out = ""
    for token in re.findall(r":\w+|\*|[^:*]", path):
        out += "([^/]+?)" if token.startswith(":") else "(.*)" if token == "*" else re.escape(token)
    return re.compile(f"^{out}/?$", re.IGNORECASE)


def _host_ok(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    rx = r"\.".join("[^.]+" if p == "*" else re.escape(p) for p in pattern.lower().split("."))
    return re.fullmatch(rx, host) is not None


def reference_match(routes: list[tuple[str, str, frozenset[bytes] | None]], host: bytes,
                    target: bytes, method: bytes) -> int | None:
    path = target.split(b"?", 1)[0].decode()
    for order, (h, p, methods) in enumerate(routes):
        if (_host_ok(h, host.decode()) and _express(p).match(path)
                and (methods is None or method in methods)):
            return order
    return None


@profile(fast_examples=300, long_examples=50000)
@given(st.lists(st.tuples(HOSTS, route_path(), METHOD_SETS.map(
    lambda m: None if m is None else frozenset(m))), min_size=1, max_size=6),
       st.lists(st.tuples(REQUEST_HOSTS, request_target(), st.sampled_from([b"GET", b"POST"])),
                min_size=1, max_size=6))
def test_the_router_agrees_with_express_semantics(
        routes: list[tuple[str, str, frozenset[bytes] | None]],
        requests: list[tuple[bytes, bytes, bytes]]) -> None:
    from meshgate.gateway.router import Route, Router

    router = Router([Route(order=i, endpoint=f"e{i}", pipeline=None, host=h, path=p, methods=m)
                     for i, (h, p, m) in enumerate(routes)])
    for host, target, method in requests:
        got = router.match(host, target, method)
        want = reference_match(routes, host, target, method)
        assert (got.order if got else None) == want, (host, target, method)
