"""Retries, timeouts, circuit breakers and outlier detection, end to end.

Real backends that fail (``--fail 500``, ``--fail reset``), slow down
(``--delay``) or are not there at all, behind a real meshgate.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support.gateway import free_port, proxy_config, wait_until


def _count(backend: Any) -> int:
    return int(httpx.get(backend.url + "/_ctl/count", timeout=5).text)


def _metric(gw: Any, name: str) -> float:
    total = 0.0
    for line in gw.metrics().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_retries_and_outlier_detection_hide_a_failing_endpoint(backend_factory, gateway_factory):
    good = [backend_factory(f"good{i}") for i in range(2)]
    bad = backend_factory("bad", "--fail", "500")
    cfg = proxy_config([good[0].url, bad.url, good[1].url], service={
        "retry": {"retryOn": ["5xx"], "numRetries": 2},
        "outlierDetection": {"consecutive5xx": 3, "maxEjectionPercent": 50}})
    gw = gateway_factory(cfg)
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(1000):
            statuses[client.get("/name").status_code] += 1
    assert statuses[200] >= 999, statuses
    assert _metric(gw, "meshgate_upstream_retries_total") >= 1
    assert _metric(gw, "meshgate_outlier_ejections_total") >= 1
    # Ejected, the bad endpoint saw only the few requests that got it ejected.
    assert _count(bad) < 20
    clusters = httpx.get(gw.admin_url + "/clusters", timeout=5).json()
    view = {ep["key"]: ep for ep in clusters["backend"]["workers"][0]}
    assert view[f"http://127.0.0.1:{bad.port}"]["ejected"] is True


def test_reset_and_refused_connections_are_retried(backend_factory, gateway_factory):
    good = backend_factory("good")
    reset = backend_factory("reset", "--fail", "reset")
    closed = f"http://127.0.0.1:{free_port()}"
    cfg = proxy_config([reset.url, closed, good.url], service={
        "retry": {"retryOn": ["reset", "connect-failure"], "numRetries": 2}})
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        results = [client.get("/name") for _ in range(60)]
    assert all(r.status_code == 200 and r.text == "good" for r in results)


def test_without_retries_failures_reach_the_client(backend_factory, gateway_factory):
    good = backend_factory("good")
    bad = backend_factory("bad", "--fail", "503")
    gw = gateway_factory(proxy_config([good.url, bad.url]))
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        statuses = Counter(client.get("/").status_code for _ in range(20))
    assert statuses == {200: 10, 503: 10}


def test_post_is_not_retried_but_put_replays_its_body(backend_factory, gateway_factory):
    bad = backend_factory("bad", "--fail", "500")
    good = backend_factory("good")
    cfg = proxy_config([bad.url, good.url], service={
        "retry": {"retryOn": ["5xx"], "numRetries": 1},
        "loadBalancer": "round-robin"})
    gw = gateway_factory(cfg)
    body = b"x" * 5000
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        posts = Counter(client.post("/echo", content=body).status_code for _ in range(10))
        puts = [client.put("/echo", content=body) for _ in range(10)]
    assert posts[500] >= 4            # round-robin gives the bad one every other POST
    assert all(r.status_code == 200 for r in puts)
    assert all(dict((k.lower(), v) for k, v in r.json()["headers"])["content-length"] == "5000"
               for r in puts)


def test_per_try_timeout_moves_on_to_a_fast_endpoint(backend_factory, gateway_factory):
    slow = backend_factory("slow", "--delay", "3000")
    fast = backend_factory("fast")
    cfg = proxy_config([slow.url, fast.url], service={
        "retry": {"retryOn": ["5xx"], "numRetries": 1, "perTryTimeout": 300}})
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(4):
            started = time.monotonic()
            r = client.get("/name")
            assert r.status_code == 200 and r.text == "fast"
            assert time.monotonic() - started < 1.5
    assert _metric(gw, "meshgate_upstream_timeouts_total") >= 1


def test_request_timeout_covers_every_attempt(backend_factory, gateway_factory):
    slow = [backend_factory(f"slow{i}", "--delay", "3000") for i in range(2)]
    cfg = proxy_config([b.url for b in slow], service={
        "requestTimeout": 400,
        "retry": {"retryOn": ["5xx"], "numRetries": 5, "perTryTimeout": 250}})
    gw = gateway_factory(cfg)
    started = time.monotonic()
    r = httpx.get(gw.url + "/", timeout=10)
    elapsed = time.monotonic() - started
    assert r.status_code == 504
    assert 0.3 < elapsed < 1.2      # the sweep ticks every 250 ms


def test_circuit_breaker_overflow_is_a_fast_503(backend_factory, gateway_factory):
    slow = backend_factory("slow", "--delay", "600")
    cfg = proxy_config(slow.url, service={"circuitBreakers": {"maxRequests": 2}})
    gw = gateway_factory(cfg)

    def call(_: int) -> tuple[int, float, str | None]:
        started = time.monotonic()
        r = httpx.get(gw.url + "/", timeout=10)
        return r.status_code, time.monotonic() - started, r.headers.get("x-meshgate-overloaded")

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    ok = [r for r in results if r[0] == 200]
    over = [r for r in results if r[0] == 503]
    assert len(ok) >= 2 and len(over) >= 1
    assert all(r[2] == "true" and r[1] < 0.5 for r in over)
    assert _metric(gw, "meshgate_upstream_overflow_total") == len(over)


def test_retry_budget_stops_retries(backend_factory, gateway_factory):
    bad = backend_factory("bad", "--fail", "500")
    good = backend_factory("good")
    cfg = proxy_config([bad.url, good.url], service={
        "retry": {"retryOn": ["5xx"], "numRetries": 1,
                  "budget": {"percent": 0, "minRetryConcurrency": 0}}})
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        statuses = Counter(client.get("/").status_code for _ in range(10))
    assert statuses[500] == 5
    assert _metric(gw, "meshgate_retry_budget_exhausted_total") == 5
    assert _metric(gw, "meshgate_upstream_retries_total") == 0


def test_ejected_endpoint_returns_after_its_ejection_time(backend_factory, gateway_factory):
    flaky = backend_factory("flaky", "--fail", "502")
    good = backend_factory("good")
    cfg = proxy_config([flaky.url, good.url], service={
        "outlierDetection": {"consecutiveGatewayFailure": 2, "consecutive5xx": 0,
                             "baseEjectionTime": 1000, "interval": 500,
                             "maxEjectionPercent": 50}})
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        first = Counter(client.get("/name").text for _ in range(10))
        httpx.get(flaky.url + "/_ctl/fail/off", timeout=5)
        after_ejection = Counter(client.get("/name").text for _ in range(10))
        assert after_ejection == {"good": 10}
        assert first["injected failure\n"] == 2
        wait_until(lambda: client.get("/name").text == "flaky", timeout=5)


def test_max_connections_is_shared_by_the_endpoints(backend_factory, gateway_factory):
    backends = [backend_factory(f"b{i}") for i in range(2)]
    cfg = proxy_config([b.url for b in backends], service={
        "circuitBreakers": {"maxConnections": 1}})
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=5) as client:
        names = Counter(client.get("/name").text for _ in range(10))
    # Each endpoint in turn takes the one connection slot from the other's idle one.
    assert names == {"b0": 5, "b1": 5}


def test_request_timeout_reaches_a_request_queued_for_a_connection(backend_factory,
                                                                   gateway_factory):
    slow = backend_factory("slow")
    cfg = proxy_config(slow.url, service={"pool": {"maxConnections": 1},
                                          "retry": {"retryOn": ["connect-failure"]}},
                       proxy_action={"requestTimeout": 400})
    # /slow/* holds the only connection, with no deadline of its own.
    cfg["apiEndpoints"]["hold"] = {"host": "*", "paths": ["/slow/*"]}
    cfg["apiEndpoints"] = {"hold": cfg["apiEndpoints"].pop("hold"), **cfg["apiEndpoints"]}
    cfg["pipelines"]["hold"] = {"apiEndpoints": ["hold"], "policies": [
        {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}]}
    gw = gateway_factory(cfg)

    def call(path: str) -> tuple[int, float]:
        started = time.monotonic()
        r = httpx.get(gw.url + path, timeout=10)
        return r.status_code, time.monotonic() - started

    with ThreadPoolExecutor(2) as pool:
        holding = pool.submit(call, "/slow/1500")
        wait_until(lambda: "meshgate_upstream_connections 1.0" in gw.metrics(), timeout=5)
        queued = pool.submit(call, "/name")
        status, elapsed = queued.result()
        assert status == 504 and elapsed < 1.0
        assert holding.result()[0] == 200


def test_mirror_to_a_guarded_cluster_releases_its_counters(backend_factory, gateway_factory):
    from tests.test_traffic import _split_config

    main, shadow = backend_factory("main"), backend_factory("shadow")
    cfg = _split_config(main, shadow, {"serviceEndpoint": "invoices-v1",
                                       "mirror": {"serviceEndpoint": "invoices-v2"}})
    cfg["serviceEndpoints"]["invoices-v2"]["circuitBreakers"] = {"maxRequests": 2}
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(10):
            assert client.get("/name").status_code == 200
    wait_until(lambda: _count(shadow) == 10, timeout=5)
    assert _metric(gw, "meshgate_upstream_overflow_total") == 0
