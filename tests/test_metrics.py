"""``/metrics`` and ``/ready`` on the admin port, read as a Prometheus scraper would."""

from __future__ import annotations

import http.client
import math
import socket
from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import Gateway, free_port, proxy_config
from tests.test_lifecycle import connection_owners

LABELS = ("api_endpoint", "pipeline", "service_endpoint", "code")


def scrape(gw: Gateway) -> dict[str, Any]:
    response = httpx.get(gw.admin_url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def requests_by_labels(families: dict[str, Any]) -> dict[tuple[str, ...], float]:
    family = families["meshgate_requests"]
    assert family.type == "counter"
    return {tuple(s.labels[k] for k in LABELS): s.value
            for s in family.samples if s.name == "meshgate_requests_total"}


def histograms(families: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    family = families["meshgate_request_duration_seconds"]
    assert family.type == "histogram"
    out: dict[tuple[str, ...], dict[str, Any]] = defaultdict(lambda: {"buckets": []})
    for s in family.samples:
        key = tuple(s.labels[k] for k in LABELS)
        if s.name.endswith("_bucket"):
            out[key]["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            out[key]["count"] = s.value
        elif s.name.endswith("_sum"):
            out[key]["sum"] = s.value
    return dict(out)


def bucket(hist: dict[str, Any], le: float) -> float:
    return next(v for bound, v in hist["buckets"] if bound == le)


def gauge(families: dict[str, Any], name: str) -> float:
    return float(families[name].samples[0].value)


def routed_config(upstream: str) -> dict[str, Any]:
    """api -> main -> backend, plus dead -> broken -> nowhere (a closed port)."""
    config = proxy_config(upstream, endpoint={"host": "*",
                                              "paths": ["/echo", "/slow/*", "/status/*"]})
    config["apiEndpoints"]["dead"] = {"host": "*", "paths": ["/dead/*"]}
    config["serviceEndpoints"]["nowhere"] = {"url": f"http://127.0.0.1:{free_port()}"}
    config["pipelines"]["broken"] = {
        "apiEndpoints": ["dead"],
        "policies": [{"proxy": [{"action": {"serviceEndpoint": "nowhere"}}]}]}
    return config


def test_requests_are_counted_by_route_and_code(backend, gateway_factory) -> None:
    gw = gateway_factory(routed_config(backend.url))
    assert requests_by_labels(scrape(gw)) == {}
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        codes = [client.get(path).status_code for path in
                 ["/echo"] * 3 + ["/slow/300"] * 2 + ["/status/503"] * 2
                 + ["/nothing", "/also/nothing"] + ["/dead/x"] * 2]
    assert codes == [200] * 5 + [503] * 2 + [404] * 2 + [502] * 2
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as bad:
        bad.sendall(b"G@T / HTTP/1.1\r\n\r\n")
        assert bad.recv(100).startswith(b"HTTP/1.1 400 ")

    families = scrape(gw)
    assert requests_by_labels(families) == {
        ("api", "main", "backend", "200"): 5,
        ("api", "main", "backend", "503"): 2,
        ("dead", "broken", "nowhere", "502"): 2,
        ("", "", "", "404"): 2,
        ("", "", "", "400"): 1,
    }

    hists = histograms(families)
    assert set(hists) == set(requests_by_labels(families))
    for key, hist in hists.items():
        bounds = [b for b, _ in hist["buckets"]]
        values = [v for _, v in hist["buckets"]]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf, key
        assert values == sorted(values), f"buckets of {key} are not cumulative: {values}"
        assert values[-1] == hist["count"] == requests_by_labels(families)[key], key
        assert hist["sum"] >= 0
    ok = hists[("api", "main", "backend", "200")]
    # the two /slow/300 requests took 0.3 s or more; the three /echo far less
    assert bucket(ok, 0.25) <= 3
    assert bucket(ok, 0.25) >= 1
    assert bucket(ok, 5.0) == 5
    assert 0.6 <= ok["sum"] < 5


def test_ready_is_200_while_serving(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url), workers=2)
    response = httpx.get(gw.admin_url + "/ready", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"ready": True}
    assert httpx.get(gw.url + "/x", timeout=5).status_code == 200


def test_connection_gauges(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url))
    families = scrape(gw)
    assert gauge(families, "meshgate_downstream_connections") == 0
    assert gauge(families, "meshgate_workers") == 1
    conns = [http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10) for _ in range(5)]
    try:
        for conn in conns:
            conn.request("GET", "/x")
            assert conn.getresponse().read() == b"ok backend\n"
        families = scrape(gw)
        assert gauge(families, "meshgate_downstream_connections") == 5
        assert gauge(families, "meshgate_upstream_connections") >= 1
    finally:
        for conn in conns:
            conn.close()


def test_two_workers_sum_to_the_requests_sent(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url), workers=2)
    _, *workers = gw.pids()
    conns = [http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10) for _ in range(30)]
    sent = 0
    try:
        for round_ in range(4):
            for conn in conns:
                conn.request("GET", f"/r{round_}")
                assert conn.getresponse().read() == b"ok backend\n"
                sent += 1
        owners = connection_owners(gw.port, [c.sock.getsockname()[1] for c in conns], workers)
        families = scrape(gw)
    finally:
        for conn in conns:
            conn.close()
    assert set(owners.values()) == set(workers), "the requests did not reach both workers"
    assert gauge(families, "meshgate_workers") == 2
    assert gauge(families, "meshgate_downstream_connections") == 30
    assert requests_by_labels(families) == {("api", "main", "backend", "200"): sent}
    hist = histograms(families)[("api", "main", "backend", "200")]
    assert hist["count"] == sent == 120
    assert hist["buckets"][-1] == (math.inf, sent)


def test_observe_counts_each_key_apart_when_keys_alternate() -> None:
    """The last-cell shortcut never credits a request to the previous request's cell."""
    from types import SimpleNamespace

    from meshgate.protocol.exchange import Exchange
    from meshgate.telemetry.metrics import Metrics

    metrics = Metrics()
    routes = [SimpleNamespace(metric_key=("a", "p")), SimpleNamespace(metric_key=("b", "p"))]
    sent = [(routes[0], "s1", 200), (routes[0], "s1", 200), (routes[1], "s1", 200),
            (routes[0], "s1", 503), (routes[0], "s2", 200), (None, "", 404),
            (routes[0], "s1", 200)]
    for route, cluster, status in sent:
        ex = Exchange(None, b"GET", b"/", [], b"h", b"http", b"127.0.0.1",  # type: ignore[arg-type]
                      b"1.1", False, 0.0)
        ex.route, ex.cluster_name, ex.status = route, cluster, status
        metrics.observe(ex, 0.001)
    counts = {key: cell[0] for key, cell in metrics.table.items()}
    assert counts == {(("a", "p"), "s1", 200, -1): 3, (("b", "p"), "s1", 200, -1): 1,
                      (("a", "p"), "s1", 503, -1): 1, (("a", "p"), "s2", 200, -1): 1,
                      (("", ""), "", 404, -1): 1}
