"""The ``round-robin`` balancer: smooth weighted round-robin, as nginx's.

Theory of operation
-------------------
nginx's smooth weighted round-robin gives each endpoint a running score;
each pick adds every endpoint's weight to its score, takes the highest and
subtracts the total weight from it. Over a cycle of ``sum(weights)`` picks
each endpoint is chosen ``weight`` times, interleaved (weights 5, 1, 1 give
``a a b a c a a``, not ``a a a a a b c``).

The cycle depends only on the weights, so ``rebuild`` plays it once into a
list and ``pick`` walks that list: O(1). Equal weights make the cycle the
endpoint list itself -- a plain rotation. When the cycle would be long
(large, coprime weights) or the weights are fractional (slow start ramping
them), an earliest-deadline-first schedule (``_edf``) takes over: the same
proportions and smoothness at O(log n) per pick.

Every worker starts at a random point of the cycle so that a fleet of
workers does not send its first requests to the same endpoint.
"""

from __future__ import annotations

import random
from math import gcd
from typing import TYPE_CHECKING

from meshgate.upstream.balancer import BALANCERS, Balancer, BalancerSpec
from meshgate.upstream.balancer._edf import Edf

if TYPE_CHECKING:
    from meshgate.config.mesh import LoadBalancer
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint

MAX_CYCLE = 4096          # longest precomputed cycle
MAX_CYCLE_WORK = 200_000  # cycle length x endpoints spent building it


def smooth_cycle(weights: list[int]) -> list[int]:
    """nginx's smooth weighted round-robin over one full cycle, as slot indexes."""
    total = sum(weights)
    scores = [0] * len(weights)
    cycle = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(weights):
            scores[i] += w
            if scores[i] > scores[best]:
                best = i
        scores[best] -= total
        cycle.append(best)
    return cycle


class RoundRobin(Balancer):
    def __init__(self, config: LoadBalancer, local_zone: str) -> None:
        super().__init__(config, local_zone)
        self._eps: list[Endpoint] = []
        self._cycle: list[Endpoint] = []      # the precomputed cycle (empty: use _edf)
        self._n = 0
        self._i = -1                          # position in the cycle; -1: not started
        self._edf: Edf | None = None
        self._steps: list[float] = []         # 1 / weight per slot, for _edf

    def rebuild(self, eligible: list[Endpoint], now: float) -> None:
        self._eps = eligible
        self._edf = None
        self._cycle = []
        self._n = 0
        if not eligible:
            return
        weights = self.weights(eligible, now)
        cycle = self._plan(eligible, weights)
        if cycle is None:
            self._edf = Edf(weights)
            self._steps = [1.0 / w for w in weights]
            return
        self._cycle = cycle
        self._n = n = len(cycle)
        self._i = random.randrange(n) if self._i < 0 else self._i % n

    @staticmethod
    def _plan(eligible: list[Endpoint], weights: list[float]) -> list[Endpoint] | None:
        """The cycle as a list of endpoints, or None when it is too long to precompute."""
        if any(w != int(w) for w in weights):
            return None
        ints = [int(w) for w in weights]
        if len(set(ints)) == 1:
            return list(eligible)
        common = 0
        for w in ints:
            common = gcd(common, w)
        ints = [w // common for w in ints]
        total = sum(ints)
        if total > MAX_CYCLE or total * len(ints) > MAX_CYCLE_WORK:
            return None
        return [eligible[i] for i in smooth_cycle(ints)]

    def pick(self, ex: Exchange | None, exclude: Endpoint | None = None) -> Endpoint | None:
        n = self._n
        if n:
            i = self._i
            ep = self._cycle[i]
            i += 1
            self._i = 0 if i == n else i
            if ep is exclude and len(self._eps) > 1:
                return self._other(exclude)
            return ep
        edf = self._edf
        if edf is None:
            return None
        eps = self._eps
        slot = edf.top()
        if eps[slot] is exclude and len(eps) > 1:
            slot = edf.skip_top()
            edf.charge_second(self._steps[slot])
        else:
            edf.charge_top(self._steps[slot])
        return eps[slot]

    def _other(self, exclude: Endpoint) -> Endpoint:
        """The next endpoint of the cycle that is not ``exclude``."""
        cycle, n, i = self._cycle, self._n, self._i
        for _ in range(n):
            ep = cycle[i]
            i += 1
            if i == n:
                i = 0
            if ep is not exclude:
                self._i = i
                return ep
        return exclude


BALANCERS.add(BalancerSpec(
    "round-robin", RoundRobin,
    "Smooth weighted round-robin (nginx); a plain rotation when weights are equal."))
