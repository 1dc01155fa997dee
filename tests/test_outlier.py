"""Outlier detection on a real Cluster: thresholds, limits, success rate, probation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshgate.config.model import ServiceEndpoint
from meshgate.server.context import WorkerContext
from meshgate.telemetry.metrics import Metrics
from meshgate.upstream.cluster import Cluster


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _cluster(loop: Any, n: int, outlier: dict[str, Any]) -> Cluster:
    ctx = WorkerContext(loop, Metrics())
    svc = ServiceEndpoint.model_validate({
        "urls": [f"http://127.0.0.1:{9000 + i}" for i in range(n)],
        "outlierDetection": outlier})
    return Cluster(ctx, "svc", svc, {})


def test_consecutive_5xx_ejects_and_max_percent_limits(loop: Any) -> None:
    cluster = _cluster(loop, 10, {"consecutive5xx": 3, "maxEjectionPercent": 20})
    detector = cluster.outlier
    assert detector is not None
    a, b, c = cluster.endpoints[:3]
    for ep in (a, b, c):
        detector.result(ep, 500)
        detector.result(ep, 500)
    detector.result(a, 200)                 # a success resets the run
    detector.result(a, 500)
    assert not a.ejected_until
    detector.result(b, 503)
    detector.result(c, 500)
    assert b.ejected_until and c.ejected_until
    assert detector.ejected() == 2          # 20% of 10
    for _ in range(3):
        detector.result(a, 500)
    assert not a.ejected_until              # the limit holds
    assert cluster.ctx.metrics.counters[("meshgate_outlier_ejections_overflow", ("svc",))] >= 1
    # Ejected endpoints are out of the balancer's rotation.
    picks = {cluster.pick(None) for _ in range(200)}
    assert b not in picks and c not in picks


def test_at_least_one_endpoint_may_be_ejected(loop: Any) -> None:
    cluster = _cluster(loop, 3, {"consecutive5xx": 2})      # 10% of 3 rounds down to 0
    assert cluster.outlier is not None
    ep = cluster.endpoints[0]
    cluster.outlier.local_failure(ep)
    cluster.outlier.local_failure(ep)
    assert ep.ejected_until


def test_ejection_time_grows_and_probation_decays(loop: Any) -> None:
    cluster = _cluster(loop, 2, {"consecutive5xx": 1, "baseEjectionTime": 1000,
                                 "maxEjectionPercent": 50, "interval": 1000})
    detector = cluster.outlier
    assert detector is not None
    ep = cluster.endpoints[0]
    now = loop.time()
    detector.result(ep, 500)
    first = ep.ejected_until - now
    assert 0.9 < first < 1.2
    detector.sweep(ep.ejected_until + 0.01)        # back, on probation
    assert not ep.ejected_until and ep.ejections == 1
    detector.result(ep, 500)                        # relapse: twice as long
    assert 1.9 < ep.ejected_until - loop.time() < 2.3
    detector.sweep(ep.ejected_until + 0.01)
    for step in range(1, 4):                        # clean intervals decay the count
        detector.sweep(loop.time() + 10 * step)
    assert ep.ejections == 0


def test_success_rate_ejects_the_outlier(loop: Any) -> None:
    cluster = _cluster(loop, 6, {"consecutive5xx": 0, "consecutiveGatewayFailure": 0,
                                 "maxEjectionPercent": 50,
                                 "successRate": {"minimumHosts": 5, "requestVolume": 50,
                                                 "stdevFactor": 1900}})
    detector = cluster.outlier
    assert detector is not None
    bad = cluster.endpoints[5]
    for ep in cluster.endpoints:
        for i in range(100):
            failing = ep is bad and i % 2 == 0          # 50% errors on one endpoint
            detector.result(ep, 500 if failing else 200)
    assert not bad.ejected_until                        # only at the interval review
    detector.sweep(loop.time() + 20)
    assert bad.ejected_until
    assert all(not ep.ejected_until for ep in cluster.endpoints[:5])
