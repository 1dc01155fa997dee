"""Walker/Vose alias tables: a weighted random choice in O(1) (a helper, not a balancer).

Theory of operation
-------------------
The weights are scaled so that their mean is 1 and cut into ``n`` columns
of height 1, each holding at most two slots: its own (with probability
``prob[i]``) and one ``alias[i]`` that filled the rest. A pick draws one
uniform float ``r`` in ``[0, n)``: the column is ``int(r)`` and the
fraction ``r - int(r)`` chooses between the column's own slot and its
alias. Building is O(n); picking is one random number and two look-ups.

``random() * n`` can round up to exactly ``n`` for large ``n``; the tables
carry one extra column (a copy of the last) so that edge costs no test.
"""

from __future__ import annotations


def alias_table(weights: list[float]) -> tuple[list[float], list[int]]:
    """``(prob, alias)`` for ``weights`` (all > 0), each with one padding column."""
    n = len(weights)
    total = sum(weights)
    scaled = [w * n / total for w in weights]
    prob = [1.0] * n
    alias = list(range(n))
    small = [i for i, s in enumerate(scaled) if s < 1.0]
    large = [i for i, s in enumerate(scaled) if s >= 1.0]
    while small and large:
        lo = small.pop()
        hi = large[-1]
        prob[lo] = scaled[lo]
        alias[lo] = hi
        scaled[hi] += scaled[lo] - 1.0
        if scaled[hi] < 1.0:
            small.append(large.pop())
    # Leftovers (rounding) keep their own column whole: prob 1.0.
    prob.append(prob[n - 1])
    alias.append(alias[n - 1])
    return prob, alias
