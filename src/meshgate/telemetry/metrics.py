"""Request metrics: plain counters on the hot path, Prometheus only when scraped.

Each worker keeps one list of integers per (apiEndpoint, pipeline,
serviceEndpoint, status, gRPC status): count, sum of seconds, then one slot
per latency bucket (not cumulative). Recording is a dict lookup, a bisect and
three adds. The gRPC status is the ``grpc-status`` a codec saw in the
response (``ex.grpc_status``, -1 for any response that had none); the
``grpc_status`` label is left off the series of those.
``export()`` turns the table into plain rows the master sums over workers;
``Collector`` renders the sum with prometheus_client when /metrics is read.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

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
_NO_ROUTE: Final = ("", "")
LABELS = ["api_endpoint", "pipeline", "service_endpoint", "code", "grpc_status"]

GAUGES = {
    "meshgate_downstream_connections": "Client connections open",
    "meshgate_upstream_connections": "Upstream connections open or opening",
    "meshgate_workers": "Worker processes answering",
    "meshgate_config_reloads": "Configuration reloads applied",
    "meshgate_retries_active": "Retries in flight",
    "meshgate_websocket_tunnels_active": "WebSocket tunnels open",
}

# Labelled counters the mesh features add: name -> (help, label names).
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "meshgate_upstream_retries": ("Retries sent", ("service_endpoint",)),
    "meshgate_retry_budget_exhausted": ("Retries refused by the retry budget",
                                        ("service_endpoint",)),
    "meshgate_upstream_overflow": ("Requests refused by a circuit breaker (503)",
                                   ("service_endpoint", "breaker")),
    "meshgate_upstream_timeouts": ("Upstream attempts that timed out", ("service_endpoint",)),
    "meshgate_outlier_ejections": ("Endpoints ejected by outlier detection",
                                   ("service_endpoint", "reason")),
    "meshgate_outlier_ejections_overflow": ("Ejections refused by maxEjectionPercent",
                                            ("service_endpoint",)),
    "meshgate_split_decisions": ("Requests routed by a traffic split, per target",
                                 ("pipeline", "service_endpoint")),
    "meshgate_mirror_requests": ("Requests copied to a mirror", ("service_endpoint",)),
    "meshgate_mirror_skipped": ("Requests not mirrored", ("service_endpoint", "reason")),
    "meshgate_faults_injected": ("Faults injected by the fault policy", ("kind",)),
    "meshgate_faults_overflow": ("Faults not injected because maxActiveFaults was reached", ()),
    "meshgate_endpoint_requests": ("Responses per upstream endpoint",
                                   ("service_endpoint", "endpoint")),
    "meshgate_endpoint_errors": ("5xx responses per upstream endpoint",
                                 ("service_endpoint", "endpoint")),
    "meshgate_endpoint_response_seconds": (
        "Sum of times to response head per endpoint (guarded clusters)",
        ("service_endpoint", "endpoint")),
    "meshgate_endpoint_timed_responses": (
        "Responses timed per endpoint (guarded clusters)", ("service_endpoint", "endpoint")),
    "meshgate_websocket_tunnels_opened": ("WebSocket tunnels opened (upstream answered 101)",
                                          ("service_endpoint",)),
    "meshgate_websocket_tunnels_closed": ("WebSocket tunnels closed, by why",
                                          ("service_endpoint", "reason")),
    "meshgate_websocket_bytes": ("Bytes relayed through WebSocket tunnels, by where they went",
                                 ("service_endpoint", "direction")),
    "meshgate_websocket_overflow": ("WebSocket handshakes refused by maxTunnels (503)",
                                    ("service_endpoint",)),
}
# Labelled gauges, set when scraped.
LABELLED_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "meshgate_endpoint_healthy": ("1 if the endpoint is healthy", ("service_endpoint", "endpoint")),
    "meshgate_endpoint_ejected": ("Workers in which outlier detection ejected the endpoint",
                                  ("service_endpoint", "endpoint")),
    "meshgate_endpoint_active_requests": ("Requests in flight per endpoint",
                                          ("service_endpoint", "endpoint")),
    "meshgate_discovery_endpoints": ("Endpoints known per serviceEndpoint", ("service_endpoint",)),
    "meshgate_discovery_stale": ("1 while a provider serves its last known set",
                                 ("service_endpoint",)),
}

Row = list[Any]   # [apiEndpoint, pipeline, serviceEndpoint, status, grpc, count, sum, *buckets]


class Metrics:
    """One per worker."""

    def __init__(self) -> None:
        self.table: dict[tuple[tuple[str, str], str, int, int], list[float]] = {}
        self.gauges: dict[str, float] = {}
        self.counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self.labelled: dict[tuple[str, tuple[str, ...]], float] = {}   # gauges, set at scrape
        self.tunnels = 0                 # WebSocket tunnels open (protocol/tunnel.py)

    def count(self, name: str, labels: tuple[str, ...], n: float = 1) -> None:
        key = (name, labels)
        counters = self.counters
        counters[key] = counters.get(key, 0) + n

    def observe(self, ex: Exchange, now: float) -> None:
        route = ex.route
        key = (route.metric_key if route is not None else _NO_ROUTE, ex.cluster_name, ex.status,
               ex.grpc_status)
        cell = self.table.get(key)
        if cell is None:
            cell = self.table[key] = [0] * (3 + len(BUCKETS))
        elapsed = now - ex.started
        cell[0] += 1
        cell[1] += elapsed
        cell[2 + bisect_left(BUCKETS, elapsed)] += 1

    def export(self) -> dict[str, Any]:
        rows = [[ep, pl, cluster, status, grpc, *cell]
                for ((ep, pl), cluster, status, grpc), cell in self.table.items()]
        gauges = dict(self.gauges)
        gauges["meshgate_websocket_tunnels_active"] = self.tunnels
        return {"requests": rows, "gauges": gauges,
                "counters": [[name, list(labels), v]
                             for (name, labels), v in self.counters.items()],
                "labelled": [[name, list(labels), v]
                             for (name, labels), v in self.labelled.items()]}


def merge(exports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum the exports of several workers."""
    rows: dict[tuple[str, str, str, int, int], list[float]] = {}
    gauges: dict[str, float] = {}
    sums: dict[str, dict[tuple[str, tuple[str, ...]], float]] = {"counters": {}, "labelled": {}}
    for export in exports:
        for kind, acc_map in sums.items():
            for name, labels, value in export.get(kind, []):
                label_key = (name, tuple(labels))
                acc_map[label_key] = acc_map.get(label_key, 0) + value
        for row in export.get("requests", []):
            key = (row[0], row[1], row[2], row[3], row[4])
            values = row[5:]
            acc = rows.get(key)
            if acc is None:
                rows[key] = list(values)
            else:
                for i, v in enumerate(values):
                    acc[i] += v
        for name, value in export.get("gauges", {}).items():
            gauges[name] = gauges.get(name, 0) + value
    return {"requests": [[*k, *v] for k, v in rows.items()], "gauges": gauges,
            **{kind: [[name, list(labels), v] for (name, labels), v in acc_map.items()]
               for kind, acc_map in sums.items()}}


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
        for row in sorted(data["requests"], key=lambda r: (r[0], r[1], r[2], r[3], r[4])):
            labels = [str(row[0]), str(row[1]), str(row[2]), str(row[3])]
            if row[4] >= 0:              # a gRPC response; others go without the label
                labels.append(str(row[4]))
            count, total_seconds, buckets = row[5], row[6], row[7:]
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
        yield from _labelled(data.get("counters", []), COUNTERS, CounterMetricFamily)
        yield from _labelled(data.get("labelled", []), LABELLED_GAUGES, GaugeMetricFamily)
        yield from _control_plane(data.get("control", []))


def _control_plane(rows: list[Any]) -> Iterator[Metric]:
    """The master's own gauges: ``(name, {label: value}, value)`` rows."""
    by_name: dict[str, list[Any]] = {}
    for name, labels, value in rows:
        by_name.setdefault(name, []).append((labels, value))
    for name in sorted(by_name):
        values = by_name[name]
        label_names = sorted(values[0][0])
        help_text = LABELLED_GAUGES.get(name, (name, ()))[0]
        metric = GaugeMetricFamily(name, help_text, labels=label_names)
        for labels, value in values:
            metric.add_metric([str(labels.get(k, "")) for k in label_names], value)
        yield metric


def _labelled(rows: list[Any], known: dict[str, tuple[str, tuple[str, ...]]],
              family: Any) -> Iterator[Metric]:
    by_name: dict[str, list[Any]] = {}
    for name, labels, value in rows:
        by_name.setdefault(name, []).append((labels, value))
    for name in sorted(by_name):
        help_text, label_names = known.get(name, (name, ()))
        values = by_name[name]
        if not label_names and values:
            label_names = tuple(f"l{i}" for i in range(len(values[0][0])))
        metric = family(name.removesuffix("_total") if family is CounterMetricFamily else name,
                        help_text, labels=list(label_names))
        for labels, value in sorted(values, key=lambda lv: [str(x) for x in lv[0]]):
            metric.add_metric([str(x) for x in labels], value)
        yield metric
