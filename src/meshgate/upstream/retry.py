"""A serviceEndpoint's retry policy, compiled once (Envoy's router retry semantics).

Theory of operation
-------------------
``retryOn`` names are turned into two sets at load: the response statuses
that are retried, and the local failure kinds (from ``http1_client``:
``connect-failure``, ``reset``, ``timeout``, ``protocol``) that are. A retry
then costs two set look-ups.

=====================  ===================================================
``5xx``                any 5xx response; every local failure
``gateway-error``      502, 503, 504; every local failure
``reset``              the upstream did not answer: reset, timeout, bad reply
``connect-failure``    no connection could be made
``retriable-4xx``      409
``retriable-status-codes``  the statuses in ``retriableStatusCodes``
``cancelled``, ``deadline-exceeded``, ``internal``, ``resource-exhausted``,
``unavailable``        a gRPC response whose ``grpc-status`` (in its head:
                       a trailers-only answer) is that code
=====================  ===================================================

Backoff is fully jittered exponential: attempt *n* waits uniformly in
``[0, min(maxInterval, baseInterval * 2**n))``. Only safe requests are
retried: a body larger than ``maxBodyBytes`` is not kept, so such a request
is never replayed, and non-idempotent methods (POST, PATCH) are retried only
after a connect failure, when the upstream never saw them. The gRPC
conditions are the exception, as in Envoy: every gRPC call is a POST, and
naming a code in ``retryOn`` says the service answers it only for calls it
did not act on. Only a trailers-only answer is retried: once a response has
sent its head and messages, its status comes in the trailers, after the
response was committed to the client.
"""

from __future__ import annotations

import random
from typing import Final

from meshgate.config.mesh import Retry
from meshgate.protocol import grpc

_GRPC: Final = {"cancelled": grpc.CANCELLED, "deadline-exceeded": grpc.DEADLINE_EXCEEDED,
                "internal": grpc.INTERNAL, "resource-exhausted": grpc.RESOURCE_EXHAUSTED,
                "unavailable": grpc.UNAVAILABLE}
_LOCAL: Final = frozenset({"connect-failure", "reset", "timeout", "protocol"})
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class RetryPolicy:
    __slots__ = ("base", "budget_min", "budget_ratio", "cap", "grpc_codes", "kinds", "max_body",
                 "num_retries", "per_try", "statuses")

    def __init__(self, cfg: Retry) -> None:
        statuses: set[int] = set()
        kinds: set[str] = set()
        codes: set[int] = set()
        for name in cfg.retryOn:
            if name == "5xx":
                statuses.update(range(500, 600))
                kinds.update(_LOCAL)
            elif name == "gateway-error":
                statuses.update((502, 503, 504))
                kinds.update(_LOCAL)
            elif name == "reset":
                kinds.update(("reset", "timeout", "protocol", "connect-failure"))
            elif name == "connect-failure":
                kinds.add("connect-failure")
            elif name == "retriable-4xx":
                statuses.add(409)
            elif name == "retriable-status-codes":
                statuses.update(cfg.retriableStatusCodes)
            elif name in _GRPC:
                codes.add(_GRPC[name])
        self.statuses = frozenset(statuses)
        self.kinds = frozenset(kinds)
        self.grpc_codes = frozenset(codes)     # gRPC statuses retried (trailers-only answers)
        self.num_retries = cfg.numRetries
        self.per_try = cfg.perTryTimeout / 1000.0 if cfg.perTryTimeout else 0.0
        self.base = cfg.backoff.baseInterval / 1000.0
        cap = cfg.backoff.maxInterval
        self.cap = cap / 1000.0 if cap is not None else self.base * 10
        self.budget_ratio = cfg.budget.percent / 100.0
        self.budget_min = cfg.budget.minRetryConcurrency
        self.max_body = cfg.maxBodyBytes

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return random.uniform(0.0, min(self.cap, self.base * (2 ** (attempt - 1))))

    def budget_allows(self, active_requests: int, active_retries: int) -> bool:
        """Linkerd/Envoy retry budget: retries in flight stay under a share of requests."""
        allowed = max(self.budget_min, active_requests * self.budget_ratio)
        return active_retries < allowed
