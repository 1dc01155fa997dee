"""The shortest path through meshgate: one route, one backend, real processes."""

from __future__ import annotations

import httpx

from tests.support.gateway import proxy_config


def test_proxies_and_counts(backend, gateway_factory) -> None:
    gw = gateway_factory(proxy_config(backend.url))
    r = httpx.get(gw.url + "/hello")
    assert r.status_code == 200
    assert r.text == "ok backend\n"
    labels = 'api_endpoint="api",code="200",pipeline="main",service_endpoint="backend"'
    assert labels in gw.metrics()
