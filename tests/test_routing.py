"""End to end: which apiEndpoint a request reaches (host, path, method, order).

Every apiEndpoint of the shared gateway has its own pipeline whose terminate
policy answers 200 with the endpoint's name, so the response tells which one
matched; nothing matched is meshgate's 404. Entries of one host keep config
order, which is what the first-match tests rely on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Backend
from tests.support.gateway import Gateway

# (apiEndpoint name, its definition); None as the name's pipeline: not served.
ENDPOINTS: list[tuple[str, dict[str, Any]]] = [
    ("exact", {"host": "exact.example.com", "paths": "/h"}),
    ("wild", {"host": "*.example.com", "paths": "/h"}),
    ("hostre", {"hostRegex": r"^api-\d+\.regex\.test$", "paths": "/h"}),
    ("anyhost", {"host": "*", "paths": "/h"}),
    ("users", {"host": "paths.test", "paths": "/users/:id"}),
    ("apistar", {"host": "paths.test", "paths": "/api/*"}),
    ("list", {"host": "paths.test", "paths": ["/one", "/two"]}),
    ("admin", {"host": "paths.test", "paths": "/admin"}),
    ("mlist", {"host": "methods.test", "paths": "/m", "methods": ["GET", "POST"]}),
    ("mstr", {"host": "methods.test", "paths": "/m", "methods": "PUT, delete"}),
    ("pre", {"host": "regex.test", "pathRegex": "^/v[0-9]+/items$"}),
    ("first", {"host": "order.test", "paths": "/o/:x"}),
    ("second", {"host": "order.test", "paths": "/o/fixed"}),
    ("fixedfirst", {"host": "order2.test", "paths": "/p/fixed"}),
    ("paramsecond", {"host": "order2.test", "paths": "/p/:x"}),
    ("postonly", {"host": "order3.test", "paths": "/q", "methods": "POST"}),
    ("anyq", {"host": "order3.test", "paths": "/q"}),
    ("orphan", {"host": "orphan.test", "paths": "/x"}),
    ("after", {"host": "orphan.test", "paths": "/*"}),
    ("lonely", {"host": "orphan2.test", "paths": "/x"}),
]
UNSERVED = {"orphan", "lonely"}


def routing_config() -> dict[str, Any]:
    served = [name for name, _ in ENDPOINTS if name not in UNSERVED]
    return {
        "apiEndpoints": dict(ENDPOINTS),
        "policies": ["terminate"],
        "pipelines": {
            f"p-{name}": {"apiEndpoints": [name], "policies": [
                {"terminate": [{"action": {"statusCode": 200, "message": name}}]}]}
            for name in served
        },
    }


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("routing-gw"), routing_config())
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=5) as c:
        yield c


def route(client: httpx.Client, host: str, path: str, method: str = "GET") -> str:
    """The name of the apiEndpoint that answered, or '404'."""
    r = client.request(method, path, headers={"Host": host})
    if r.status_code == 404:
        return "404"
    assert r.status_code == 200, (r.status_code, r.text)
    return r.text


# -- hosts ----------------------------------------------------------------------
@pytest.mark.parametrize(("host", "expected"), [
    ("exact.example.com", "exact"),
    ("EXACT.Example.COM", "exact"),
    ("exact.example.com:8080", "exact"),
    ("a.example.com", "wild"),
    ("B.EXAMPLE.com:81", "wild"),
    ("a.b.example.com", "anyhost"),     # '*' is one label
    ("example.com", "anyhost"),
    ("api-7.regex.test", "hostre"),
    ("api-x.regex.test", "anyhost"),
    ("anything.else.test", "anyhost"),
])
def test_host_matching(client: httpx.Client, host: str, expected: str) -> None:
    assert route(client, host, "/h") == expected


def test_host_star_does_not_match_other_paths(client: httpx.Client) -> None:
    assert route(client, "anything.else.test", "/h/x") == "404"


# -- paths ------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "expected"), [
    ("/users/42", "users"),
    ("/users/42/", "users"),
    ("/USERS/abc", "users"),
    ("/users/42?x=1", "users"),
    ("/users/42/x", "404"),
    ("/users", "404"),
    ("/users/", "404"),
    ("/api/x", "apistar"),
    ("/api/x/y/z", "apistar"),
    ("/Api/X", "apistar"),
    ("/api", "404"),
    ("/apix", "404"),
    ("/one", "list"),
    ("/two/", "list"),
    ("/three", "404"),
    ("/admin", "admin"),
    ("/admin/", "admin"),
    ("/ADMIN", "admin"),
    ("/admin?next=/x", "admin"),
    ("/admin/x", "404"),
    ("/adminx", "404"),
])
def test_express_paths(client: httpx.Client, path: str, expected: str) -> None:
    assert route(client, "paths.test", path) == expected


@pytest.mark.parametrize(("path", "expected"), [
    ("/v2/items", "pre"),
    ("/v10/items", "pre"),
    ("/vx/items", "404"),
    ("/v2/items/1", "404"),
])
def test_path_regex(client: httpx.Client, path: str, expected: str) -> None:
    assert route(client, "regex.test", path) == expected


# -- methods --------------------------------------------------------------------
@pytest.mark.parametrize(("method", "expected"), [
    ("GET", "mlist"),
    ("POST", "mlist"),
    ("PUT", "mstr"),
    ("DELETE", "mstr"),
    ("PATCH", "404"),
    ("OPTIONS", "404"),
])
def test_methods(client: httpx.Client, method: str, expected: str) -> None:
    assert route(client, "methods.test", "/m", method) == expected


# -- order, unserved, no match ---------------------------------------------------
def test_first_match_in_config_order_wins(client: httpx.Client) -> None:
    # The param route comes first, so it wins even over an exact literal.
    assert route(client, "order.test", "/o/fixed") == "first"
    assert route(client, "order.test", "/o/other") == "first"
    # And the other way round.
    assert route(client, "order2.test", "/p/fixed") == "fixedfirst"
    assert route(client, "order2.test", "/p/other") == "paramsecond"


def test_methods_decide_among_matching_paths_in_order(client: httpx.Client) -> None:
    assert route(client, "order3.test", "/q", "POST") == "postonly"
    assert route(client, "order3.test", "/q", "GET") == "anyq"


def test_api_endpoint_without_pipeline_is_not_routed(client: httpx.Client) -> None:
    assert route(client, "orphan.test", "/x") == "after"
    assert route(client, "orphan2.test", "/x") == "404"


def test_no_match_is_404_with_a_short_body(client: httpx.Client) -> None:
    r = client.get("/nothing/here", headers={"Host": "nomatch.test"})
    assert r.status_code == 404
    assert 0 < len(r.content) <= 64
    assert "not found" in r.text.lower()
    assert r.headers["content-length"] == str(len(r.content))


# -- many apiEndpoints ---------------------------------------------------------------
N_BIG = 10_000


def big_config(upstream: str) -> dict[str, Any]:
    """N_BIG apiEndpoints over 50 hosts, all in one pipeline that names the match."""
    shapes = ("/r{}/:id", "/s{}/*", "/t{}")
    api = {f"e{i}": {"host": f"h{i % 50}.big.test", "paths": shapes[i % 3].format(i)}
           for i in range(N_BIG)}
    return {
        "apiEndpoints": api,
        "serviceEndpoints": {"mirror": {"url": upstream + "/mirror"}},
        "policies": ["headers", "proxy"],
        "pipelines": {"big": {"apiEndpoints": list(api), "policies": [
            {"headers": [{"action": {"forwardHeaders": {"x-endpoint": "${apiEndpoint.name}"}}}]},
            {"proxy": [{"action": {"serviceEndpoint": "mirror", "stripPath": False}}]},
        ]}},
    }


@pytest.mark.slow      # loading 10,000 apiEndpoints takes seconds; routing them does not
def test_ten_thousand_api_endpoints_route_correctly(
        backend: Backend, gateway_factory: Any) -> None:
    gw = gateway_factory(big_config(backend.url))
    samples = [0, 1, 2, 3, 4, 5, 49, 50, 51, 4998, 4999, 5000, 5001, 7777, 9997, 9998, 9999]
    with httpx.Client(base_url=gw.url, timeout=5) as client:
        for i in samples:
            host = f"h{i % 50}.big.test"
            path = ("/r{}/abc", "/s{}/a/b", "/t{}")[i % 3].format(i)
            r = client.get(path, headers={"Host": host})
            assert r.status_code == 200, (i, r.text)
            headers = {k.lower(): v for k, v in r.json()["headers"]}
            assert headers["x-endpoint"] == f"e{i}"
            assert r.json()["path"] == "/mirror" + path
            # The same path on another host's group belongs to nobody.
            other = client.get(path, headers={"Host": f"h{(i + 1) % 50}.big.test"})
            assert other.status_code == 404, i
        # A near miss of a literal route is not routed either.
        assert client.get("/t2x", headers={"Host": "h2.big.test"}).status_code == 404
