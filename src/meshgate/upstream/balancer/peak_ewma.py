"""The ``peak-ewma`` balancer: latency-aware power of two choices (Finagle, Linkerd).

Theory of operation
-------------------
Each endpoint keeps a moving average of its round-trip times that is
*peak-sensitive*: a sample above the average replaces it at once (one slow
response is believed immediately), while lower samples pull it down
gradually, each weighted by ``1 - exp(-elapsed / decayTime)``. The average
also decays towards zero while no samples arrive, so an endpoint that was
slow a while ago is tried again. The cost of an endpoint is
``ewma * (active + 1)`` -- latency times the queue it would join. A pick
draws two distinct endpoints at random and takes the cheaper (Finagle's
``PeakEwma`` with ``P2C``), O(1).

An endpoint never measured costs 0 while idle, so it is tried at once; with
requests already in flight and still no answer it costs a large penalty, so
a new (or hung) endpoint is not flooded before it has proved itself.
Failures (``observe(..., ok=False)``) count as a slow sample: at least
``FAILURE_RTT`` and at least double the current average (capped), so a
failing endpoint that answers fast is not mistaken for a fast one.

The proxy reports each response through ``observe(ep, rtt, ok)``
(``wants_latency`` is True); ``rtt`` is in seconds. Statistics live here,
keyed by the endpoint object, and survive rebuilds for endpoints that stay.
Times come from ``time.monotonic`` as ``pick`` is given no clock. Slow
start does not apply.
"""

from __future__ import annotations

import random
import time
from math import exp
from typing import TYPE_CHECKING

from meshgate.upstream.balancer import BALANCERS, Balancer, BalancerSpec

if TYPE_CHECKING:
    from meshgate.config.mesh import LoadBalancer
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint

PENALTY = 1.0e5       # seconds: cost of an unmeasured endpoint with requests in flight
FAILURE_RTT = 1.0     # seconds: the least a failure counts as
FAILURE_CAP = 60.0    # seconds: repeated failures do not push the average past this

_random = random.random
_monotonic = time.monotonic


class LatencyStat:
    """One endpoint's peak EWMA of RTT, in seconds; ``stamp`` < 0 until measured."""

    __slots__ = ("cost", "stamp")

    def __init__(self) -> None:
        self.cost = 0.0
        self.stamp = -1.0


class PeakEwma(Balancer):
    wants_latency = True
    slow_start_aware = False

    def __init__(self, config: LoadBalancer, local_zone: str) -> None:
        super().__init__(config, local_zone)
        self.tau = max(config.decayTime / 1000.0, 0.001)
        self.stats: dict[Endpoint, LatencyStat] = {}
        self._eps: list[Endpoint] = []        # eligible, plus a copy of the last
        self._stats: list[LatencyStat] = []   # parallel to _eps
        self._n = 0

    def rebuild(self, eligible: list[Endpoint], now: float) -> None:
        old = self.stats
        self.stats = stats = {ep: old.get(ep) or LatencyStat()
                              for ep in (*self.endpoints, *eligible)}
        self._n = n = len(eligible)
        self._eps = [*eligible, eligible[-1]] if n else []
        self._stats = [stats[ep] for ep in self._eps]

    def cost(self, ep: Endpoint, now: float | None = None) -> float:
        """The current cost of ``ep`` (for tests and the admin view)."""
        st = self.stats.get(ep)
        if st is None:
            return 0.0
        return self._cost(st, ep.active, _monotonic() if now is None else now)

    def _cost(self, st: LatencyStat, active: int, now: float) -> float:
        if st.stamp < 0.0:
            return PENALTY + active if active else 0.0
        return st.cost * exp((st.stamp - now) / self.tau) * (active + 1)

    def pick(self, ex: Exchange | None, exclude: Endpoint | None = None) -> Endpoint | None:
        n = self._n
        if n < 2:
            return self._eps[0] if n else None
        i = int(_random() * n)
        j = int(_random() * (n - 1))
        if j >= i:
            j += 1
        eps = self._eps
        a = eps[i]
        b = eps[j]
        if a is exclude:
            return b
        if b is exclude:
            return a
        now = _monotonic()
        tau = self.tau
        stats = self._stats
        # _cost() for both, inlined (Endpoint.active too): this runs on every request.
        st = stats[i]
        pool = a.pool
        load = pool.open - len(pool.idle) + len(pool.waiting)
        if st.stamp < 0.0:
            cost_a = PENALTY + load if load else 0.0
        else:
            cost_a = st.cost * exp((st.stamp - now) / tau) * (load + 1)
        st = stats[j]
        pool = b.pool
        load = pool.open - len(pool.idle) + len(pool.waiting)
        if st.stamp < 0.0:
            cost_b = PENALTY + load if load else 0.0
        else:
            cost_b = st.cost * exp((st.stamp - now) / tau) * (load + 1)
        return a if cost_a <= cost_b else b

    def observe(self, ep: Endpoint, rtt: float, ok: bool) -> None:
        st = self.stats.get(ep)
        if st is None:
            return
        now = _monotonic()
        if not ok:
            rtt = min(FAILURE_CAP, max(rtt, FAILURE_RTT, 2.0 * st.cost))
        if st.stamp < 0.0 or rtt > st.cost:
            st.cost = rtt
        else:
            w = exp((st.stamp - now) / self.tau)
            st.cost = st.cost * w + rtt * (1.0 - w)
        st.stamp = now


BALANCERS.add(BalancerSpec(
    "peak-ewma", PeakEwma,
    "Lower of two random endpoints by peak EWMA latency x (active + 1) (Linkerd)."))
