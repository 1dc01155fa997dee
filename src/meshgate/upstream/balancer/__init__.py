"""Load balancers: how a cluster picks an endpoint, one module each, registered by name.

Theory of operation
-------------------
A balancer sees a cluster's endpoints at two speeds:

* ``update(endpoints, now)`` -- rare: the endpoint set, health or an ejection
  changed. The base class decides here, once, which endpoints are *eligible*
  (below) and hands them to the subclass's ``rebuild(eligible, now)``, which
  precomputes whatever makes picking cheap (a rotation, an alias table, a
  hash ring, a Maglev table).
* ``pick(ex, exclude)`` -- every request: O(1) or O(log n) over those
  tables, no allocation beyond a float or two. ``exclude`` is the endpoint a
  retry is moving away from; it is avoided whenever another eligible
  endpoint exists. ``None`` means there is nothing to pick (no endpoints, or
  none available with panic mode off).

Eligibility (decided in ``update``), in this order:

1. **Zone preference.** With a local zone (``localZone``, else
   ``$MESHGATE_ZONE``) and ``zoneAware``, the endpoints of the local zone
   are used alone while at least one of them is available and the available
   share of the local zone is at least ``panicThreshold`` percent. Otherwise
   traffic fails over to every zone. (Envoy's zone-aware routing weighs
   zones by the sizes of the local and upstream clusters; a sidecar does not
   know the former, so meshgate keeps Istio's locality-failover behaviour:
   stay local while the local zone is healthy enough not to be in panic.)
2. **Panic.** Over all zones, when fewer than ``panicThreshold`` percent of
   the endpoints are available, every endpoint -- available or not -- is
   eligible, as in Envoy's panic mode: spreading load over sick endpoints
   beats piling it on the few healthy ones. ``panicThreshold: 0`` disables
   panic; then no available endpoint means ``pick`` returns ``None``.
3. Otherwise the available endpoints.

Slow start (``slowStart.window`` > 0) scales the weight of an endpoint added
less than ``window`` ago with Envoy's formula (``effective_weight``). Tables
are rebuilt from the ramped weights by ``sweep(now)``, which the cluster
calls on its periodic sweep; it does nothing once no endpoint is ramping.
Balancers that do not use weights per pick (ring-hash, maglev, peak-ewma)
set ``slow_start_aware = False`` and are never rebuilt by ``sweep``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.plugins import Registry

if TYPE_CHECKING:
    from meshgate.config.mesh import LoadBalancer
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint


class Balancer:
    """Base of every balancer: eligibility, slow start, the default hooks."""

    wants_latency: bool = False      # True: the proxy calls observe() after each response
    slow_start_aware: bool = True    # False: weights are fixed when the table is built

    def __init__(self, config: LoadBalancer, local_zone: str) -> None:
        self.config = config
        self.local_zone = local_zone
        self.endpoints: list[Endpoint] = []   # the whole set, as last given to update()
        self.eligible: list[Endpoint] = []    # what pick() chooses among
        self.panic = False                    # balancing over unavailable endpoints too
        self.local_only = False               # eligible is the local zone alone
        slow = config.slowStart
        self._window = slow.window / 1000.0 if slow is not None else 0.0
        self._min_share = slow.minWeightPercent / 100.0 if slow is not None else 0.0
        self._exponent = 1.0 / slow.aggression if slow is not None else 1.0
        self._ramp_end = 0.0                  # when the last ramping endpoint is at full weight

    # -- the endpoint set ---------------------------------------------------
    def update(self, endpoints: list[Endpoint], now: float) -> None:
        """The set, health or ejections changed: recompute eligibility and tables."""
        self.endpoints = endpoints
        self.eligible = self._eligible(endpoints)
        self._ramp_end = self._ramp_end_of(self.eligible, now)
        self.rebuild(self.eligible, now)

    def _eligible(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        self.panic = self.local_only = False
        total = len(endpoints)
        if not total:
            return []
        threshold = self.config.panicThreshold
        zone = self.local_zone
        if zone and self.config.zoneAware:
            local = [ep for ep in endpoints if ep.zone == zone]
            up = [ep for ep in local if ep.available]
            if up and len(up) * 100.0 >= threshold * len(local):
                self.local_only = len(local) < total
                return up
        available = [ep for ep in endpoints if ep.available]
        if len(available) * 100.0 < threshold * total:
            self.panic = True
            return list(endpoints)
        return available

    def rebuild(self, eligible: list[Endpoint], now: float) -> None:
        """Precompute the pick tables for ``eligible`` (subclasses)."""

    # -- per request --------------------------------------------------------
    def pick(self, ex: Exchange | None, exclude: Endpoint | None = None) -> Endpoint | None:
        raise NotImplementedError

    def observe(self, ep: Endpoint, rtt: float, ok: bool) -> None:
        """A response (or failure) from ``ep`` took ``rtt`` seconds (latency-aware only)."""

    # -- slow start -----------------------------------------------------------
    def effective_weight(self, ep: Endpoint, now: float) -> float:
        """``weight``, ramped up over ``slowStart.window`` after the endpoint was added.

        Envoy's formula: ``weight * max(minWeightPercent / 100, time_factor **
        (1 / aggression))`` with ``time_factor = max(0.001, elapsed / window)``.
        ``added == 0`` means "unknown", which is treated as long ago.
        """
        weight = float(ep.weight)
        window = self._window
        if window <= 0.0 or ep.added <= 0.0:
            return weight
        elapsed = now - ep.added
        if elapsed >= window:
            return weight
        factor = max(0.001, elapsed / window)
        return weight * max(self._min_share, factor ** self._exponent)

    def weights(self, eligible: list[Endpoint], now: float) -> list[float]:
        """The effective weights of ``eligible``, in order."""
        if self._window <= 0.0:
            return [float(ep.weight) for ep in eligible]
        return [self.effective_weight(ep, now) for ep in eligible]

    def _ramp_end_of(self, eligible: list[Endpoint], now: float) -> float:
        window = self._window
        if window <= 0.0 or not self.slow_start_aware:
            return 0.0
        ends = [ep.added + window for ep in eligible if ep.added > 0.0]
        end = max(ends, default=0.0)
        return end if end > now else 0.0

    def sweep(self, now: float) -> None:
        """Periodic upkeep: rebuild the tables while some endpoint is ramping up."""
        end = self._ramp_end
        if not end:
            return
        if now >= end:
            self._ramp_end = 0.0      # one last rebuild, at full weights
        self.rebuild(self.eligible, now)


@dataclass(frozen=True)
class BalancerSpec:
    name: str
    build: Callable[[LoadBalancer, str], Balancer]
    description: str = ""


BALANCERS: Registry[BalancerSpec] = Registry("load balancer", "meshgate.upstream.balancer")


def build_balancer(config: LoadBalancer, local_zone: str | None = None) -> Balancer:
    """The balancer ``config.type`` names; the zone defaults to localZone, $MESHGATE_ZONE."""
    spec = BALANCERS.get(config.type)
    if spec is None:
        raise ValueError(f"unknown load balancer {config.type!r}; expected one of "
                         + ", ".join(BALANCERS.names()))
    if local_zone is None:
        local_zone = config.localZone or os.environ.get("MESHGATE_ZONE", "")
    return spec.build(config, local_zone)
