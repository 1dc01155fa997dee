"""Earliest-deadline-first schedule over weighted slots (a helper, not a balancer).

Theory of operation
-------------------
Each slot ``i`` sits in a binary heap keyed by its next deadline. Picking
takes the slot with the earliest deadline and moves its deadline on by
``step`` -- ``1 / weight`` for a static weight, so over time slot ``i``
is picked in proportion to its weight and never twice in a row when others
are due first (as smooth as nginx's smooth weighted round-robin, at O(log n)
per pick). The caller may compute ``step`` at pick time from the slot's
current state, which is how least-request weighs ``weight / (active + 1)``
as Envoy's EDF scheduler does.

Heap entries are three-item lists ``[deadline, order, slot]`` mutated in
place and put back with ``heapreplace``, so a pick allocates only the new
float. ``order`` breaks ties first-come-first-served. First deadlines are
spread at random within one period so that workers started together do not
all begin with the same endpoint.
"""

from __future__ import annotations

import heapq
import random


class Edf:
    __slots__ = ("heap", "order")

    def __init__(self, weights: list[float]) -> None:
        rnd = random.random
        self.heap: list[list[float]] = [
            [rnd() / w, float(i), float(i)] for i, w in enumerate(weights)]
        heapq.heapify(self.heap)
        self.order = float(len(weights))

    def top(self) -> int:
        """The slot due next (not yet charged)."""
        return int(self.heap[0][2])

    def charge_top(self, step: float) -> None:
        """The slot due next was picked: its next deadline is ``step`` later."""
        heap = self.heap
        entry = heap[0]
        entry[0] += step
        entry[1] = self.order
        self.order += 1.0
        heapq.heapreplace(heap, entry)

    def skip_top(self) -> int:
        """The slot due after the top one (for a retry avoiding the top); heap unchanged."""
        heap = self.heap
        if len(heap) < 2:
            return int(heap[0][2])
        if len(heap) == 2 or heap[1] < heap[2]:
            return int(heap[1][2])
        return int(heap[2][2])

    def charge_second(self, step: float) -> None:
        """The slot ``skip_top`` named was picked: move its deadline on by ``step``."""
        heap = self.heap
        top = heapq.heappop(heap)
        self.charge_top(step)
        heapq.heappush(heap, top)
