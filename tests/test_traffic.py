"""Traffic split, mirroring and load-balancer shares, measured from the outside."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.gateway import wait_until


def _count(backend: Any) -> int:
    return int(httpx.get(backend.url + "/_ctl/count", timeout=5).text)


def _split_config(v1: Any, v2: Any, proxy: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiEndpoints": {"api": {"host": "*", "paths": ["/*"]}},
        "serviceEndpoints": {"invoices-v1": {"url": v1.url}, "invoices-v2": {"url": v2.url}},
        "policies": ["proxy"],
        "pipelines": {"main": {"apiEndpoints": ["api"],
                               "policies": [{"proxy": [{"action": proxy}]}]}},
    }


SPLIT = [{"serviceEndpoint": "invoices-v1", "weight": 90},
         {"serviceEndpoint": "invoices-v2", "weight": 10,
          "match": {"headers": {"x-canary": "yes"}}}]


def test_split_90_10_with_header_pin(backend_factory, gateway_factory):
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    gw = gateway_factory(_split_config(v1, v2, {"split": SPLIT}))
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        shares = Counter(client.get("/name").text for _ in range(2000))
        pinned = Counter(client.get("/name", headers={"x-canary": "yes"}).text for _ in range(20))
    assert 0.075 <= shares["v2"] / 2000 <= 0.125, shares
    assert pinned == {"v2": 20}
    assert "meshgate_split_decisions_total" in gw.metrics()


def test_split_weights_change_by_reload(backend_factory, gateway_factory):
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    gw = gateway_factory(_split_config(v1, v2, {"split": SPLIT}))
    cfg = _split_config(v1, v2, {"split": [{"serviceEndpoint": "invoices-v1", "weight": 0},
                                           {"serviceEndpoint": "invoices-v2", "weight": 1}]})
    cfg["http"], cfg["admin"] = gw.config["http"], gw.config["admin"]
    gw.write(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        wait_until(lambda: all(client.get("/name").text == "v2" for _ in range(20)), timeout=10)


def test_sticky_split_keeps_a_client_on_one_version(backend_factory, gateway_factory):
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    proxy = {"split": [{"serviceEndpoint": "invoices-v1", "weight": 50},
                       {"serviceEndpoint": "invoices-v2", "weight": 50}],
             "stickyBy": {"header": "x-user"}}
    gw = gateway_factory(_split_config(v1, v2, proxy))
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        per_user = {u: {client.get("/name", headers={"x-user": f"u{u}"}).text for _ in range(5)}
                    for u in range(30)}
    assert all(len(seen) == 1 for seen in per_user.values())
    assert {next(iter(s)) for s in per_user.values()} == {"v1", "v2"}


def test_split_config_errors_name_the_field(tmp_path):
    import yaml

    from meshgate.config.loader import ConfigError, load_config

    cfg = {"apiEndpoints": {"api": {"paths": "/*"}},
           "serviceEndpoints": {"a": {"url": "http://127.0.0.1:1"}},
           "policies": ["proxy"],
           "pipelines": {"p": {"apiEndpoints": ["api"], "policies": [{"proxy": [{"action": {
               "split": [{"serviceEndpoint": "a", "weight": 1},
                         {"serviceEndpoint": "nope", "weight": 1}]}}]}]}}}
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(cfg))
    try:
        load_config(tmp_path)
    except ConfigError as exc:
        assert "split" in str(exc) and "nope" in str(exc)
    else:
        raise AssertionError("an unknown split target was accepted")


def test_mirror_copies_requests_without_touching_responses(backend_factory, gateway_factory):
    main, shadow = backend_factory("main"), backend_factory("shadow", "--fail", "500")
    cfg = _split_config(main, shadow, {"serviceEndpoint": "invoices-v1",
                                       "mirror": {"serviceEndpoint": "invoices-v2",
                                                  "percentage": 50}})
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        results = [client.get("/mirror/x") for _ in range(400)]
    assert all(r.status_code == 200 for r in results)
    # The shadow saw about half of them, with its Host marked.
    copies = wait_until(lambda: _count(shadow) >= 150 and _count(shadow), timeout=5)
    assert 150 <= copies <= 250


def _load(gw: Any, n: int, workers: int) -> None:
    with ThreadPoolExecutor(workers) as pool:
        def run(_: int) -> None:
            with httpx.Client(base_url=gw.url, timeout=10) as client:
                for _ in range(n // workers):
                    assert client.get("/").status_code == 200
        list(pool.map(run, range(workers)))


def _shares(backends: list[Any]) -> list[int]:
    return [_count(b) for b in backends]


def test_least_request_and_peak_ewma_avoid_a_slow_endpoint(backend_factory, gateway_factory):
    for kind in ("least-request", "peak-ewma"):
        fast = [backend_factory(f"fast{i}") for i in range(2)]
        slow = backend_factory("slow", "--delay", "40")
        gw = gateway_factory({**_plain([*fast, slow]), "serviceEndpoints": {"backend": {
            "urls": [b.url for b in (*fast, slow)], "loadBalancer": kind}}})
        _load(gw, 400, 8)
        shares = _shares([*fast, slow])
        assert shares[2] < 0.2 * sum(shares), (kind, shares)
        gw.stop()


def test_no_endpoints_answers_503(gateway_factory):
    cfg = _plain([])
    cfg["serviceEndpoints"] = {"backend": {"discovery": {"type": "dns", "name": "x.invalid",
                                                         "nameservers": ["127.0.0.1:9"],
                                                         "timeout": 100}}}
    gw = gateway_factory(cfg)
    r = httpx.get(gw.url + "/", timeout=5)
    assert r.status_code == 503 and "no healthy upstream" in r.text


def _plain(backends: list[Any]) -> dict[str, Any]:
    return {
        "apiEndpoints": {"api": {"host": "*", "paths": ["/*"]}},
        "serviceEndpoints": {"backend": {"urls": [b.url for b in backends]}},
        "policies": ["proxy"],
        "pipelines": {"main": {"apiEndpoints": ["api"], "policies": [
            {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}]}},
    }


def test_mirror_copies_small_bodies_and_skips_large_ones(backend_factory, gateway_factory):
    main, shadow = backend_factory("main"), backend_factory("shadow")
    cfg = _split_config(main, shadow, {"serviceEndpoint": "invoices-v1",
                                       "mirror": {"serviceEndpoint": "invoices-v2"}})
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(10):
            r = client.post("/echo", content=b"y" * 1000)
            assert r.status_code == 200
            assert dict((k.lower(), v) for k, v in r.json()["headers"])["content-length"] == "1000"
        assert client.post("/echo", content=b"z" * 100_000).status_code == 200
    wait_until(lambda: int(httpx.get(shadow.url + "/_ctl/bytes", timeout=5).text) == 10_000,
               timeout=5)
    assert _count(shadow) == 10
    assert "meshgate_mirror_skipped_total" in gw.metrics()


def test_split_weights_change_through_the_admin_api_under_load(backend_factory,
                                                               gateway_factory):
    import threading

    v1, v2 = backend_factory("v1"), backend_factory("v2")
    gw = gateway_factory(_split_config(v1, v2, {"split": SPLIT}))
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            while not stop.is_set():
                statuses[client.get("/name").status_code] += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: sum(statuses.values()) > 50, timeout=5)
        body = {"apiEndpoints": ["api"], "policies": [{"proxy": [{"action": {"split": [
            {"serviceEndpoint": "invoices-v1", "weight": 0},
            {"serviceEndpoint": "invoices-v2", "weight": 100}]}}]}]}
        r = httpx.put(gw.admin_url + "/pipelines/main", json=body, timeout=10)
        assert r.status_code in (200, 201, 204), r.text
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            wait_until(lambda: all(client.get("/name").text == "v2" for _ in range(20)),
                       timeout=10)
    finally:
        stop.set()
        worker.join()
    assert set(statuses) == {200}, statuses


@pytest.mark.parametrize("kind", ["ring-hash", "maglev"])
def test_hashing_balancers_keep_a_key_on_one_endpoint(kind, backend_factory, gateway_factory):
    backends = [backend_factory(f"b{i}") for i in range(3)]
    cfg = _plain(backends)
    cfg["serviceEndpoints"]["backend"]["loadBalancer"] = {"type": kind,
                                                          "hashOn": {"header": "x-user"}}
    gw = gateway_factory(cfg)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        seen = {u: {client.get("/name", headers={"x-user": f"u{u}"}).text for _ in range(4)}
                for u in range(40)}
    assert all(len(names) == 1 for names in seen.values())
    assert {next(iter(n)) for n in seen.values()} == {"b0", "b1", "b2"}
