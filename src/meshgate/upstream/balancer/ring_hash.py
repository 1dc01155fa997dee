"""The ``ring-hash`` balancer: a consistent hash ring (Ketama), as Envoy's.

Theory of operation
-------------------
Every eligible endpoint is hashed onto a 32-bit ring many times (as
``"<key>_<n>"``); a request's key (``hashOn``, see ``_hashkey``) is hashed
onto the same ring and served by the first endpoint point at or after it,
wrapping round. Removing one of N endpoints only moves the keys that landed
on its arcs -- about 1/N of them -- and everybody else keeps its endpoint;
adding one takes about 1/(N+1) from the others.

Ring size: an endpoint gets ``weight * per_unit`` points, ``per_unit``
being the least power of two that makes the ring at least
``minimumRingSize`` (capped at ``MAX_RING``). Envoy instead scales the ring
to exactly fill the minimum, so the points per endpoint -- and with them
about a tenth of the keys of a small cluster -- change whenever an
endpoint comes or goes; rounding to a power of two keeps the points of the
endpoints that stay unchanged (an endpoint's points are ``"<key>_0"`` ..
``"<key>_<k-1>"``, a prefix when ``k`` grows) except when the total weight
crosses a power of two, where ``per_unit`` halves or doubles.

Points are kept as two parallel sorted lists (hashes, owners) so that a
pick is one ``bisect`` -- O(log ring) in C. Endpoints are placed in the
order of their keys so that every worker and every sidecar builds the same
ring.

A request without the key goes to a random eligible endpoint (Envoy's
behaviour). A retry that lands on the endpoint it avoids walks on round the
ring to the next different endpoint -- the one the key would move to if the
first were removed. Slow start does not apply (the ring holds weights
fixed, as in Envoy).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from meshgate.upstream.balancer import BALANCERS, Balancer, BalancerSpec
from meshgate.upstream.balancer._hashkey import (
    key_function,
    key_hash,
    next_other,
    point_hash,
    random_pick,
)

if TYPE_CHECKING:
    from meshgate.config.mesh import LoadBalancer
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint

MAX_RING = 1 << 18        # cap on ring points unless minimumRingSize asks for more



def points_per_weight(total_weight: int, min_ring: int) -> int:
    """Ring points per unit of weight: the least power of two filling ``min_ring``."""
    cap = max(MAX_RING, min_ring)
    per_unit = 1
    while per_unit * total_weight < min_ring and per_unit * 2 * total_weight <= cap:
        per_unit *= 2
    return per_unit


def identity(ep: Endpoint) -> str:
    """What names an endpoint on the ring: the same in every worker and sidecar."""
    return ep.key or ep.url


class RingHash(Balancer):
    slow_start_aware = False

    def __init__(self, config: LoadBalancer, local_zone: str) -> None:
        super().__init__(config, local_zone)
        if config.hashOn is None:
            raise ValueError("ring-hash needs hashOn")
        self._key = key_function(config.hashOn)
        self._min_ring = config.minimumRingSize
        self._hashes: list[int] = []
        self._owners: list[Endpoint] = []
        self._eps: list[Endpoint] = []

    def rebuild(self, eligible: list[Endpoint], now: float) -> None:
        eps = sorted(eligible, key=identity)
        self._eps = eps
        if not eps:
            self._hashes, self._owners = [], []
            return
        weights = [max(ep.weight, 1) for ep in eps]
        per_unit = points_per_weight(sum(weights), self._min_ring)
        points: list[tuple[int, str, Endpoint]] = []
        for ep, weight in zip(eps, weights, strict=True):
            name = identity(ep)
            points.extend((point_hash(f"{name}_{n}".encode()), name, ep)
                          for n in range(weight * per_unit))
        points.sort(key=lambda p: (p[0], p[1]))
        self._hashes = [p[0] for p in points]
        self._owners = [p[2] for p in points]

    def pick(self, ex: Exchange | None, exclude: Endpoint | None = None) -> Endpoint | None:
        owners = self._owners
        if not owners:
            return None
        key = self._key(ex)
        eps = self._eps
        if key is None:
            return random_pick(eps, exclude)
        i = bisect_left(self._hashes, key_hash(key))
        if i == len(owners):
            i = 0
        ep = owners[i]
        if ep is exclude and len(eps) > 1:
            return next_other(owners, i, exclude)
        return ep


BALANCERS.add(BalancerSpec(
    "ring-hash", RingHash,
    "Consistent hash ring over hashOn (Ketama, Envoy's ring_hash)."))
