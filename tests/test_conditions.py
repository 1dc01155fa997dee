"""Conditions: registration, parameter validation and predicate semantics."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from meshgate.conditions import CONDITIONS
from meshgate.conditions.hostmatch import glob_to_regex
from meshgate.config.model import ConditionUse
from meshgate.protocol.exchange import Exchange


def exchange(method: bytes = b"GET", path: bytes = b"/", host: bytes | None = b"example.com",
             headers: list[tuple[bytes, bytes]] | None = None) -> Exchange:
    if headers is None:
        headers = [] if host is None else [(b"host", host)]
    authority = (host or b"").split(b":")[0].lower()
    return Exchange(None, method, path, headers, authority, b"http",  # type: ignore[arg-type]
                    b"127.0.0.1", b"1.1", False, 0.0)


def compile_(raw: dict[str, Any]) -> Any:
    return ConditionUse.parse(raw).compile()


def test_all_eg_core_conditions_are_registered() -> None:
    assert {"always", "never", "allOf", "oneOf", "not", "pathExact", "pathMatch", "method",
            "hostMatch"} <= set(CONDITIONS.names())
    spec = CONDITIONS.get("not")
    assert spec is not None and spec.build.__module__ == "meshgate.conditions.negate"


def test_always_and_never() -> None:
    assert compile_({"name": "always"})(exchange()) is True
    assert compile_({"name": "never"})(exchange()) is False


# -- combinators ---------------------------------------------------------------------
GET = {"name": "method", "methods": "GET"}
ROOT = {"name": "pathExact", "path": "/"}
NEVER = {"name": "never"}


@pytest.mark.parametrize("children,expected_all,expected_one", [
    ([], True, False),
    ([GET], True, True),
    ([NEVER], False, False),
    ([GET, ROOT], True, True),
    ([GET, NEVER], False, True),
    ([NEVER, NEVER], False, False),
    ([GET, ROOT, NEVER], False, True),
    ([GET, ROOT, {"name": "always"}], True, True),
    ([NEVER, NEVER, NEVER], False, False),
])
def test_all_of_and_one_of(children: list[dict[str, Any]], expected_all: bool,
                           expected_one: bool) -> None:
    ex = exchange()
    assert compile_({"name": "allOf", "conditions": children})(ex) is expected_all
    assert compile_({"name": "oneOf", "conditions": children})(ex) is expected_one


def test_not_and_nesting() -> None:
    pred = compile_({"name": "not", "condition": {
        "name": "oneOf", "conditions": [GET, {"name": "pathMatch", "pattern": "^/admin"}]}})
    assert pred(exchange(b"GET", b"/x")) is False
    assert pred(exchange(b"POST", b"/admin/users")) is False
    assert pred(exchange(b"POST", b"/x")) is True


def test_nested_conditions_become_condition_uses() -> None:
    use = ConditionUse.parse({"name": "allOf", "conditions": [GET, {"name": "not",
                                                                    "condition": ROOT}]})
    first, second = use.params.conditions                       # type: ignore[attr-defined]
    assert isinstance(first, ConditionUse) and first.name == "method"
    assert isinstance(second.params.condition, ConditionUse)


def test_combinator_errors_are_located() -> None:
    with pytest.raises(ValidationError) as info:
        ConditionUse.parse({"name": "allOf", "conditions": [GET, {"name": "pathExact"}]})
    assert info.value.errors()[0]["loc"] == ("conditions", 1, "path")
    with pytest.raises(ValidationError) as info:
        ConditionUse.parse({"name": "not", "conditions": [GET]})     # EG: `condition`
    locs = [e["loc"] for e in info.value.errors()]
    assert ("condition",) in locs


# -- paths -----------------------------------------------------------------------------
def test_path_exact() -> None:
    pred = compile_({"name": "pathExact", "path": "/ip"})
    assert pred(exchange(path=b"/ip"))
    assert pred(exchange(path=b"/ip?x=1"))
    assert not pred(exchange(path=b"/ip/"))
    assert not pred(exchange(path=b"/ipx"))
    assert not pred(exchange(path=b"/IP"))


def test_path_exact_with_query_compares_whole_target() -> None:
    pred = compile_({"name": "pathExact", "path": "/ip?debug=1"})
    assert pred(exchange(path=b"/ip?debug=1"))
    assert not pred(exchange(path=b"/ip"))
    assert not pred(exchange(path=b"/ip?debug=1&x"))


def test_path_match_searches_the_path_without_query() -> None:
    pred = compile_({"name": "pathMatch", "pattern": "/users/[0-9]+$"})
    assert pred(exchange(path=b"/api/users/42"))
    assert pred(exchange(path=b"/api/users/42?format=json"))
    assert not pred(exchange(path=b"/api/users/me"))
    assert compile_({"name": "pathMatch", "pattern": "admin"})(exchange(path=b"/x/admin/y"))
    assert not compile_({"name": "pathMatch", "pattern": "admin"})(exchange(path=b"/x?admin"))


def test_path_match_mentioning_query_searches_the_target() -> None:
    pred = compile_({"name": "pathMatch", "pattern": "\\?debug="})
    assert pred(exchange(path=b"/a?debug=1"))
    assert not pred(exchange(path=b"/a"))


def test_path_match_accepts_javascript_syntax() -> None:
    pred = compile_({"name": "pathMatch", "pattern": "^/(?<v>v[0-9])/\\k<v>$"})
    assert pred(exchange(path=b"/v1/v1"))
    assert not pred(exchange(path=b"/v1/v2"))
    assert compile_({"name": "pathMatch", "pattern": "\\u0061bc"})(exchange(path=b"/abc"))


def test_path_match_rejects_bad_regex() -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        ConditionUse.parse({"name": "pathMatch", "pattern": "(unclosed"})


# -- methods -----------------------------------------------------------------------------
@pytest.mark.parametrize("methods,get,post,delete", [
    ("GET", True, False, False),
    ("get", True, False, False),
    (["GET", "post"], True, True, False),
    ("GET, POST", True, True, False),
    (["DELETE"], False, False, True),
])
def test_method(methods: Any, get: bool, post: bool, delete: bool) -> None:
    pred = compile_({"name": "method", "methods": methods})
    assert pred(exchange(b"GET")) is get
    assert pred(exchange(b"POST")) is post
    assert pred(exchange(b"DELETE")) is delete


def test_method_params_are_normalised_and_checked() -> None:
    use = ConditionUse.parse({"name": "method", "methods": ["purge", "Get"]})
    assert use.params.methods == ["PURGE", "GET"]               # type: ignore[attr-defined]
    for bad in ([], "G T", ["GET", {"a": 1}], None, "GET,/"):
        with pytest.raises(ValidationError):
            ConditionUse.parse({"name": "method", "methods": bad})


# -- hosts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern,host,expected", [
    ("example.com", b"example.com", True),
    ("example.com", b"www.example.com", False),
    ("Example.COM", b"example.com", True),
    ("*.example.com", b"api.example.com", True),
    ("*.example.com", b"a.b.example.com", True),
    ("*.example.com", b"example.com", False),
    ("*.example.com", b"evilexample.com", False),
    ("*", b"anything.io", True),
    ("api?.example.com", b"api1.example.com", True),
    ("api?.example.com", b"api.example.com", False),
    ("[ab].example.com", b"b.example.com", True),
    ("[!ab].example.com", b"b.example.com", False),
    ("[!ab].example.com", b"c.example.com", True),
    ("{api,www}.example.com", b"www.example.com", True),
    ("{api,www}.example.com", b"ftp.example.com", False),
    ("!*.internal", b"db.internal", False),
    ("!*.internal", b"example.com", True),
    ("a\\*.com", b"a*.com", True),
    ("a\\*.com", b"ab.com", False),
])
def test_host_match(pattern: str, host: bytes, expected: bool) -> None:
    assert compile_({"name": "hostMatch", "pattern": pattern})(exchange(host=host)) is expected


def test_host_match_ignores_port_unless_pattern_has_one() -> None:
    plain = compile_({"name": "hostMatch", "pattern": "*.example.com"})
    assert plain(exchange(host=b"api.example.com:8080"))
    with_port = compile_({"name": "hostMatch", "pattern": "localhost:*"})
    assert with_port(exchange(host=b"localhost:8080"))
    assert not with_port(exchange(host=b"localhost"))
    assert compile_({"name": "hostMatch", "pattern": "localhost:8080"})(
        exchange(host=b"LocalHost:8080"))


def test_host_match_without_host_never_matches() -> None:
    assert not compile_({"name": "hostMatch", "pattern": "*"})(exchange(host=None))
    assert not compile_({"name": "hostMatch", "pattern": "!x.com"})(exchange(host=None))


def test_glob_to_regex() -> None:
    assert glob_to_regex("*.example.com") == r"[^/]*\.example\.com"
    assert glob_to_regex("a**b") == "a[^/]*b"
    assert glob_to_regex("{a,b}c") == "(?:a|b)c"
    assert glob_to_regex("[!x-z]") == "[^x-z]"
    assert glob_to_regex("[unclosed") == r"\[unclosed"


# -- registry interplay ---------------------------------------------------------------------
def test_unknown_condition() -> None:
    with pytest.raises(ValidationError, match="unknown condition 'nope'"):
        ConditionUse.parse({"name": "nope"})


def test_condition_use_dump_round_trips() -> None:
    raw = {"name": "allOf", "conditions": [{"name": "method", "methods": ["GET"]},
                                           {"name": "not", "condition": {"name": "never"}}]}
    use = ConditionUse.parse(raw)
    assert use.dump() == raw
    assert ConditionUse.parse(use.dump()) == use
