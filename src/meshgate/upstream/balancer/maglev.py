"""The ``maglev`` balancer: Google's Maglev consistent hashing, as Envoy's.

Theory of operation
-------------------
A lookup table of ``tableSize`` slots (a prime; rounded up to one if it is
not) is filled by the endpoints taking turns. Each endpoint has its own
permutation of the slots -- ``offset + j * skip (mod size)``, offset and
skip derived from hashing its key -- and on its turn claims the next slot
of its permutation that is still free. A request's key is hashed to one
slot: O(1) per pick, a list index. Because each endpoint's preferences do
not depend on the others, removing one of N endpoints reassigns little more
than its own ~1/N of the slots.

Weights: turns are handed out earliest-deadline-first over ``1 / weight``,
so each endpoint claims slots in proportion to its weight (the same idea as
Envoy's weighted Maglev, different bookkeeping); equal weights take plain
turns.

Endpoints are placed in the order of their keys so that every worker and
every sidecar builds the same table. A request without the key goes to a
random eligible endpoint. A retry avoiding the endpoint of its slot takes
the next slot with a different endpoint -- a stable second choice per key.
Slow start does not apply.

Building costs about ``tableSize * ln(tableSize)`` probes in the worst case
(the last free slots are hard to find); for the default 65537 slots that is
tens of milliseconds, paid only when the eligible set changes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING

from meshgate.upstream.balancer import BALANCERS, Balancer, BalancerSpec
from meshgate.upstream.balancer._hashkey import (
    key_function,
    key_hash,
    next_other,
    point_hash,
    random_pick,
)
from meshgate.upstream.balancer.ring_hash import identity

if TYPE_CHECKING:
    from meshgate.config.mesh import LoadBalancer
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint



def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def next_prime(n: int) -> int:
    """The smallest prime >= max(n, 2)."""
    n = max(n, 2)
    while not is_prime(n):
        n += 1
    return n


def maglev_table(names: list[str], weights: list[int], size: int) -> list[int]:
    """Slot -> index into ``names``, ``size`` slots (a prime), weighted."""
    table = [-1] * size
    pos = []
    skips = []
    for name in names:
        raw = name.encode()
        pos.append(point_hash(b"offset:" + raw) % size)
        skips.append(point_hash(b"skip:" + raw) % (size - 1) + 1 if size > 1 else 1)
    for filled, i in enumerate(_turns(weights)):
        c = pos[i]
        skip = skips[i]
        while table[c] >= 0:
            c += skip
            if c >= size:
                c -= size
        table[c] = i
        c += skip
        pos[i] = c - size if c >= size else c
        if filled + 1 == size:
            break
    return table


def _turns(weights: list[int]) -> Iterator[int]:
    """Whose turn it is to claim a slot, forever: each index in proportion to its weight."""
    n = len(weights)
    if min(weights) == max(weights):
        while True:
            yield from range(n)
    # Earliest deadline first over 1/weight: one heap step per claimed slot.
    heap = [(1.0 / w, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    while True:
        due, i = heap[0]
        yield i
        heapq.heapreplace(heap, (due + 1.0 / weights[i], i))


class Maglev(Balancer):
    slow_start_aware = False

    def __init__(self, config: LoadBalancer, local_zone: str) -> None:
        super().__init__(config, local_zone)
        if config.hashOn is None:
            raise ValueError("maglev needs hashOn")
        self._key = key_function(config.hashOn)
        self.table_size = next_prime(config.tableSize)
        self._slots: list[Endpoint] = []
        self._eps: list[Endpoint] = []

    def rebuild(self, eligible: list[Endpoint], now: float) -> None:
        eps = sorted(eligible, key=identity)
        self._eps = eps
        if not eps:
            self._slots = []
            return
        table = maglev_table([identity(ep) for ep in eps],
                             [max(ep.weight, 1) for ep in eps], self.table_size)
        self._slots = [eps[i] for i in table]

    def pick(self, ex: Exchange | None, exclude: Endpoint | None = None) -> Endpoint | None:
        slots = self._slots
        if not slots:
            return None
        key = self._key(ex)
        eps = self._eps
        if key is None:
            return random_pick(eps, exclude)
        i = key_hash(key) % self.table_size
        ep = slots[i]
        if ep is exclude and len(eps) > 1:
            return next_other(slots, i, exclude)
        return ep

BALANCERS.add(BalancerSpec(
    "maglev", Maglev, "Maglev consistent hashing over hashOn (O(1) lookup table)."))
