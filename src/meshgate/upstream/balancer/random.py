"""The ``random`` balancer: each endpoint drawn with probability proportional to its weight.

Theory of operation
-------------------
Equal weights: one uniform draw indexes the endpoint list. Otherwise an
alias table (``_alias``) built on ``rebuild`` keeps the weighted draw O(1)
-- one random number, two look-ups. Slow start re-weights through the
base class's ``sweep``. A retry that draws the endpoint it is avoiding
draws once more, then takes the next endpoint in the list.

(This module is ``meshgate.upstream.balancer.random``; ``import random``
below is the standard library's, as imports are absolute.)
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from meshgate.upstream.balancer import BALANCERS, Balancer, BalancerSpec
from meshgate.upstream.balancer._alias import alias_table

if TYPE_CHECKING:
    from meshgate.config.mesh import LoadBalancer
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint

_random = random.random


class Random(Balancer):
    def __init__(self, config: LoadBalancer, local_zone: str) -> None:
        super().__init__(config, local_zone)
        self._eps: list[Endpoint] = []        # eligible, plus a copy of the last
        self._n = 0
        self._prob: list[float] | None = None  # None: equal weights
        self._alias: list[int] = []

    def rebuild(self, eligible: list[Endpoint], now: float) -> None:
        self._n = n = len(eligible)
        self._eps = [*eligible, eligible[-1]] if n else []
        self._prob = None
        weights = self.weights(eligible, now)
        if n and min(weights) != max(weights):
            self._prob, self._alias = alias_table(weights)

    def _draw(self) -> int:
        r = _random() * self._n
        i = int(r)
        prob = self._prob
        if prob is None or r - i < prob[i]:
            return i
        return self._alias[i]

    def pick(self, ex: Exchange | None, exclude: Endpoint | None = None) -> Endpoint | None:
        n = self._n
        if not n:
            return None
        r = _random() * n
        i = int(r)
        prob = self._prob
        if prob is not None and r - i >= prob[i]:
            i = self._alias[i]
        ep = self._eps[i]
        if ep is exclude and n > 1:
            i = min(self._draw(), n - 1)
            ep = self._eps[i]
            if ep is exclude:
                ep = self._eps[(i + 1) % n]
        return ep


BALANCERS.add(BalancerSpec(
    "random", Random, "Weighted random choice (an alias table: O(1) per pick)."))
