"""Request metrics: plain counters on the hot path, Prometheus only when scraped.

Each worker keeps one list of integers per (apiEndpoint, pipeline,
serviceEndpoint, status): count, sum of seconds, then one slot per latency
bucket (not cumulative). Recording is a dict lookup, a bisect and three adds.
``export()`` turns the table into plain rows the master sums over workers;
``Collector`` renders the sum with prometheus_client when /metrics is read.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0)
_NO_ROUTE = ("", "")
LABELS = ["api_endpoint", "pipeline", "service_endpoint", "code"]

GAUGES = {
    "meshgate_downstream_connections": "Client connections open",
    "meshgate_upstream_connections": "Upstream connections open or opening",
    "meshgate_workers": "Worker processes answering",
    "meshgate_config_reloads": "Configuration reloads applied",
}

Row = list[Any]   # [apiEndpoint, pipeline, serviceEndpoint, status, count, sum, *buckets]


class Metrics:
    """One per worker."""

    def __init__(self) -> None:
        self.table: dict[tuple[tuple[str, str], str, int], list[float]] = {}
        self.gauges: dict[str, float] = {}

    def observe(self, ex: Exchange, now: float) -> None:
        route = ex.route
        key = (route.metric_key if route is not None else _NO_ROUTE, ex.cluster_name, ex.status)
        cell = self.table.get(key)
        if cell is None:
            cell = self.table[key] = [0] * (3 + len(BUCKETS))
        elapsed = now - ex.started
        cell[0] += 1
        cell[1] += elapsed
        cell[2 + bisect_left(BUCKETS, elapsed)] += 1

    def export(self) -> dict[str, Any]:
        rows = [[ep, pl, cluster, status, *cell]
                for ((ep, pl), cluster, status), cell in self.table.items()]
        return {"requests": rows, "gauges": dict(self.gauges)}


def merge(exports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum the exports of several workers."""
    rows: dict[tuple[str, str, str, int], list[float]] = {}
    gauges: dict[str, float] = {}
    for export in exports:
        for row in export.get("requests", []):
            key = (row[0], row[1], row[2], row[3])
            values = row[4:]
            acc = rows.get(key)
            if acc is None:
                rows[key] = list(values)
            else:
                for i, v in enumerate(values):
                    acc[i] += v
        for name, value in export.get("gauges", {}).items():
            gauges[name] = gauges.get(name, 0) + value
    return {"requests": [[*k, *v] for k, v in rows.items()], "gauges": gauges}


class Collector:
    """A prometheus_client collector over a callable returning a merged export."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        data = self.source()
        total = CounterMetricFamily("meshgate_requests", "Requests answered", labels=LABELS)
        hist = HistogramMetricFamily("meshgate_request_duration_seconds",
                                     "Time from request head to end of response",
                                     labels=LABELS)
        for row in sorted(data["requests"], key=lambda r: (r[0], r[1], r[2], r[3])):
            labels = [str(row[0]), str(row[1]), str(row[2]), str(row[3])]
            count, total_seconds, buckets = row[4], row[5], row[6:]
            total.add_metric(labels, count)
            cumulative = []
            running = 0
            for bound, n in zip(BUCKETS, buckets, strict=False):
                running += n
                cumulative.append((repr(bound), running))
            cumulative.append(("+Inf", count))
            hist.add_metric(labels, cumulative, total_seconds)
        yield total
        yield hist
        for name, value in sorted(data["gauges"].items()):
            yield GaugeMetricFamily(name, GAUGES.get(name, name), value=value)
