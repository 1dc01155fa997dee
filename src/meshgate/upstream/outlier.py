"""Outlier detection: passive ejection of failing endpoints (Envoy's semantics).

Theory of operation
-------------------
Every attempt's outcome is reported here (only for clusters that configure
``outlierDetection``): a response status, or a local failure (connect
failure, reset, timeout), which counts as a gateway error as Envoy counts it
when local-origin errors are not split out.

* ``consecutive5xx`` 5xx (or local) results in a row eject an endpoint;
* ``consecutiveGatewayFailure`` 502/503/504 (or local) results in a row too;
* with ``successRate``, every ``interval`` the endpoints with at least
  ``requestVolume`` requests are compared, when there are ``minimumHosts`` of
  them: one below ``mean - stdev * stdevFactor / 1000`` is ejected.

An ejection lasts ``baseEjectionTime * ejections`` (capped by
``maxEjectionTime``); at most ``maxEjectionPercent`` of the endpoints are
ejected at once, but always at least one may be. When its time is up the
endpoint returns on probation: its multiplier only decays by one for each
interval it then stays un-ejected, so a relapse is ejected for longer.

State is per worker process, as each sees its own traffic.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from meshgate.config.mesh import OutlierDetection

if TYPE_CHECKING:
    from meshgate.upstream.cluster import Cluster, Endpoint


class OutlierDetector:
    def __init__(self, cfg: OutlierDetection, cluster: Cluster) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.consecutive_5xx = cfg.consecutive5xx
        self.consecutive_gateway = cfg.consecutiveGatewayFailure
        self.base = cfg.baseEjectionTime / 1000.0
        self.max_time = max(self.base, cfg.maxEjectionTime / 1000.0)
        self.interval = max(0.001, cfg.interval / 1000.0)
        self.next_review = 0.0

    # -- outcomes (hot path of guarded clusters) ------------------------------
    def result(self, ep: Endpoint, status: int) -> None:
        ep.requests += 1
        if status < 500:
            ep.consecutive_5xx = 0
            ep.consecutive_gateway = 0
            return
        ep.failures += 1
        ep.consecutive_5xx += 1
        if status in (502, 503, 504):
            ep.consecutive_gateway += 1
        else:
            ep.consecutive_gateway = 0
        self._check(ep)

    def local_failure(self, ep: Endpoint) -> None:
        ep.requests += 1
        ep.failures += 1
        ep.consecutive_5xx += 1
        ep.consecutive_gateway += 1
        self._check(ep)

    def _check(self, ep: Endpoint) -> None:
        if ep.ejected_until:
            return
        if self.consecutive_5xx and ep.consecutive_5xx >= self.consecutive_5xx:
            self.eject(ep, "consecutive_5xx")
        elif self.consecutive_gateway and ep.consecutive_gateway >= self.consecutive_gateway:
            self.eject(ep, "consecutive_gateway_failure")

    # -- ejection ----------------------------------------------------------------
    def eject(self, ep: Endpoint, reason: str) -> bool:
        cluster = self.cluster
        total = len(cluster.endpoints)
        ejected = sum(1 for e in cluster.endpoints if e.ejected_until)
        limit = max(1, math.floor(total * self.cfg.maxEjectionPercent / 100.0))
        ep.consecutive_5xx = 0
        ep.consecutive_gateway = 0
        if ejected >= limit:
            cluster.ctx.metrics.count("meshgate_outlier_ejections_overflow", (cluster.name,))
            return False
        ep.ejections += 1
        now = cluster.ctx.loop.time()
        ep.ejected_until = now + min(self.base * ep.ejections, self.max_time)
        cluster.ctx.metrics.count("meshgate_outlier_ejections", (cluster.name, reason))
        cluster.refresh()
        return True

    def sweep(self, now: float) -> None:
        """Called about once a second: return endpoints, review success rates."""
        cluster = self.cluster
        changed = False
        for ep in cluster.endpoints:
            if ep.ejected_until and ep.ejected_until <= now:
                ep.ejected_until = 0.0
                changed = True
        if changed:
            cluster.refresh()
        if now < self.next_review:
            return
        self.next_review = now + self.interval
        if self.cfg.successRate is not None:
            self._success_rate()
        for ep in cluster.endpoints:
            if not ep.ejected_until and ep.ejections and not ep.failures:
                ep.ejections -= 1     # a clean interval on probation
            ep.requests = 0
            ep.failures = 0

    def _success_rate(self) -> None:
        sr = self.cfg.successRate
        assert sr is not None
        sample = [(ep, 1.0 - ep.failures / ep.requests) for ep in self.cluster.endpoints
                  if not ep.ejected_until and ep.requests >= sr.requestVolume]
        if len(sample) < sr.minimumHosts:
            return
        rates = [rate for _, rate in sample]
        mean = sum(rates) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
        floor = mean - stdev * sr.stdevFactor / 1000.0
        for ep, rate in sample:
            if rate < floor:
                self.eject(ep, "success_rate")

    def ejected(self) -> int:
        return sum(1 for ep in self.cluster.endpoints if ep.ejected_until)
