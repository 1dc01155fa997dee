"""The ``least-request`` balancer: the fewest requests in flight, as Envoy's.

Theory of operation
-------------------
Looking at every endpoint's load on every request costs O(n) and makes all
balancers in a fleet stampede onto the same idle endpoint. Envoy instead
samples: with equal weights it draws ``choiceCount`` endpoints at random
and takes the one with the fewest active requests ("power of two
choices"), which comes close to the full scan at O(1). With two choices the
pair is distinct; with more, draws are independent (as Envoy's).

With unequal weights (including weights ramping under slow start) Envoy
switches to an earliest-deadline-first schedule whose weights are
``weight / (active + 1) ** active_request_bias``, bias 1.0 by default; the
picked endpoint's next deadline is computed from its load at the time it
is picked. Unloaded, that is weighted round-robin; loaded, an endpoint
receives traffic in proportion to its weight divided by its backlog. Here
that schedule is ``_edf``: O(log n) per pick.

``active`` is the endpoint's pool state (connecting + busy + waiting), read
live, so no bookkeeping is needed here.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from meshgate.upstream.balancer import BALANCERS, Balancer, BalancerSpec
from meshgate.upstream.balancer._edf import Edf

if TYPE_CHECKING:
    from meshgate.config.mesh import LoadBalancer
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint

_random = random.random


class LeastRequest(Balancer):
    def __init__(self, config: LoadBalancer, local_zone: str) -> None:
        super().__init__(config, local_zone)
        self._choices = config.choiceCount
        self._eps: list[Endpoint] = []     # eligible, plus a copy of the last (see _alias)
        self._n = 0
        self._edf: Edf | None = None       # None: equal weights, sample instead
        self._weights: list[float] = []

    def rebuild(self, eligible: list[Endpoint], now: float) -> None:
        self._n = n = len(eligible)
        self._eps = [*eligible, eligible[-1]] if n else []
        weights = self.weights(eligible, now)
        self._weights = weights
        self._edf = Edf(weights) if n and min(weights) != max(weights) else None

    def pick(self, ex: Exchange | None, exclude: Endpoint | None = None) -> Endpoint | None:
        n = self._n
        if n < 2:
            return self._eps[0] if n else None
        edf = self._edf
        if edf is not None:
            return self._pick_weighted(edf, exclude)
        eps = self._eps
        if self._choices != 2:
            return self._pick_sampled(exclude)
        i = int(_random() * n)
        j = int(_random() * (n - 1))
        if j >= i:
            j += 1
        a = eps[i]
        b = eps[j]
        if a is exclude:
            return b
        if b is exclude:
            return a
        # Endpoint.active, inlined: this is the hottest line of the balancer.
        pa = a.pool
        pb = b.pool
        if pa.open - len(pa.idle) + len(pa.waiting) <= pb.open - len(pb.idle) + len(pb.waiting):
            return a
        return b

    def _pick_sampled(self, exclude: Endpoint | None) -> Endpoint:
        eps, n = self._eps, self._n
        best: Endpoint | None = None
        least = 0
        for _ in range(self._choices):
            ep = eps[int(_random() * n)]
            if ep is exclude:
                continue
            load = ep.active
            if best is None or load < least:
                best, least = ep, load
        if best is None:                   # every draw was the excluded endpoint
            i = eps.index(exclude) if exclude is not None else 0
            best = eps[(i + 1) % n]
        return best

    def _pick_weighted(self, edf: Edf, exclude: Endpoint | None) -> Endpoint:
        eps = self._eps
        slot = edf.top()
        ep = eps[slot]
        if ep is exclude:
            slot = edf.skip_top()
            ep = eps[slot]
            edf.charge_second((ep.active + 1) / self._weights[slot])
        else:
            edf.charge_top((ep.active + 1) / self._weights[slot])
        return ep


BALANCERS.add(BalancerSpec(
    "least-request", LeastRequest,
    "Fewest active requests among choiceCount random endpoints (Envoy's)."))
