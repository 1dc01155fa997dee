"""A Call: one proxied request over its attempts (retries, deadlines, limits).

Theory of operation
-------------------
Unguarded clusters send a request with one pool write and never meet this
class. For a guarded cluster the proxy makes a Call, which sets
``ex.retry = self`` so the upstream codec reports to it:

* ``response(conn, status)`` when a response head arrives: the outcome is
  recorded (outlier detection, the balancer's latency, per-endpoint stats);
  a retriable status (or a trailers-only gRPC answer whose ``grpc-status``,
  which the codec put in ``ex.grpc_status``, is retriable) with a retry
  left discards the response (the
  connection is closed) and schedules the next attempt; anything else
  commits -- from then on the response streams to the client untouched;
* ``failed(conn, kind)`` when no response came (connect failure, reset,
  timeout, protocol error, or a stale keep-alive connection): retried the
  same way, or the caller answers 502/504 as without a Call.

The request body passes through the Call (it is the body sink the upstream
connections attach to): chunks are forwarded and, up to ``maxBodyBytes``,
kept so that a retry can replay them. A body that outgrows the limit makes
the request unretriable.

Retries wait a jittered backoff, go to another endpoint when there is one,
must fit the retry budget and the ``maxRetries`` breaker, and stop at the
overall ``requestTimeout`` (504 if it expires before the response starts,
wherever the request is -- the worker's sweep checks ``ctx.timed_calls``;
each attempt's timeout is capped by it). A gRPC request's deadline
(``ex.deadline``, from ``grpc-timeout``) becomes the overall deadline when
it is sooner. ``on_done`` releases the counters however the exchange ends.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Final

from meshgate.protocol.http1_client import upstream_failed
from meshgate.upstream.retry import IDEMPOTENT

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers
    from meshgate.upstream.api import Attempt
    from meshgate.upstream.cluster import Cluster, Endpoint

_NO_HEALTHY: Final = b"Service Unavailable: no healthy upstream\n"
request_ids: Final = itertools.count(1)    # the counter part of eg-request-id, per worker


class Call:
    __slots__ = ("attached", "attempts", "cluster", "committed", "conn", "deadline", "ep",
                 "ex", "policy", "proxy", "retrying", "rid", "saved", "saved_bytes", "sent",
                 "timer")

    def __init__(self, proxy: Any, cluster: Cluster, ex: Exchange) -> None:
        self.proxy = proxy
        self.cluster = cluster
        self.ex = ex
        self.policy = cluster.retry
        self.attempts = 0                 # retries made
        self.ep: Endpoint | None = None
        self.conn: Attempt | None = None   # where body bytes go now
        self.attached = False
        self.committed = False
        self.retrying = False             # counted in the active-retries gauges
        self.sent = ex.started
        self.timer: Any = None
        overall = proxy.overall
        self.deadline = ex.started + overall if overall else 0.0
        self.rid = next(request_ids)      # one eg-request-id for every attempt
        self.saved: list[bytes] | None = None
        self.saved_bytes = 0
        if ex.body_expected and self.policy is not None:
            length = ex.header(b"content-length")
            if length is None or (length.isdigit() and int(length) <= self.policy.max_body):
                self.saved = []

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> bool:
        cluster = self.cluster
        ex = self.ex
        limits = cluster.limits
        if limits is not None:
            if limits.requests >= limits.max_requests:
                limits.overflow(ex, "requests")
                return True
            limits.requests += 1
        cluster.active += 1
        ex.retry = self
        ex.on_done = self._done if ex.on_done is None else _chain(ex.on_done, self._done)
        if self.deadline and self.policy is not None:
            # The overall deadline holds wherever the request is: queued for a
            # connection, connecting, parked, between attempts. The worker's
            # sweep enforces it (no timer per request).
            cluster.ctx.timed_calls.add(self)
        ep = cluster.single or cluster.pick(ex, None)
        if ep is None:
            self._no_endpoint(None)
            return True
        self.ep = ep
        timeout = self.proxy.first_timeout
        head, chunked = self.proxy.head(ex, ep, self.rid)
        if ex.deadline:
            timeout = self._take_deadline(timeout)
        ep.pool.send(ex, head, chunked, timeout)
        return True

    def _attempt(self, exclude: Endpoint | None) -> None:
        """A retry (or a parked request's first attempt)."""
        ex = self.ex
        if ex.done:
            return
        cluster = self.cluster
        ep = cluster.single or cluster.pick(ex, exclude)
        if ep is None:
            self._no_endpoint(exclude)
            return
        self.ep = ep
        timeout = self._attempt_timeout()
        head, chunked = self.proxy.head(ex, ep, self.rid)
        if ex.deadline:
            timeout = self._take_deadline(timeout)
        ep.pool.send(ex, head, chunked, timeout)

    def _attempt_timeout(self) -> float:
        """Seconds this attempt (starting now) may take: perTry, capped by the deadline."""
        now = self.sent = self.cluster.ctx.loop.time()
        per_try = self.proxy.per_try
        if not self.deadline:
            return per_try
        left = max(0.001, self.deadline - now)
        return min(per_try, left) if per_try else left

    def _take_deadline(self, timeout: float) -> float:
        """A gRPC deadline (``ex.deadline``, from grpc-timeout): the Call's too, if sooner.

        Returns the attempt's ``timeout`` bounded by it, counted as the codec
        counts it (from ``sent``).
        """
        deadline = self.ex.deadline
        if not self.deadline or deadline < self.deadline:
            if not self.deadline and self.policy is not None:
                self.cluster.ctx.timed_calls.add(self)
            self.deadline = deadline
        left = max(0.001, deadline - self.sent)
        return left if not timeout or left < timeout else timeout

    def expire(self) -> None:
        """requestTimeout passed: 504 unless the response has started (it streams on)."""
        self.cluster.ctx.timed_calls.discard(self)
        ex = self.ex
        if ex.done or ex.status or self.committed:
            return
        self.committed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        source = ex.source
        if source is not None:
            source.abort()
        self.cluster.ctx.metrics.count("meshgate_upstream_timeouts", (self.cluster.name,))
        ex.responder.respond(ex, 504, b"Gateway Timeout\n")

    def _no_endpoint(self, exclude: Endpoint | None) -> None:
        cluster = self.cluster
        if cluster.awaiting_first:
            cluster.park(self.ex, lambda: self._attempt(exclude))
            return
        self.committed = True
        self.ex.responder.respond(self.ex, 503, _NO_HEALTHY)

    def _done(self, ex: Exchange) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.deadline:
            self.cluster.ctx.timed_calls.discard(self)
        cluster = self.cluster
        cluster.active -= 1
        limits = cluster.limits
        if limits is not None:
            limits.requests -= 1
        if self.retrying:
            self.retrying = False
            cluster.active_retries -= 1
            if limits is not None:
                limits.retries -= 1

    def overflowed(self) -> None:
        self.committed = True

    # -- what the upstream codec reports -----------------------------------------
    def response(self, conn: Attempt, status: int) -> bool:
        """A response head arrived; True if it is discarded for a retry."""
        cluster = self.cluster
        ep = self.ep
        if ep is not None:
            rtt = cluster.ctx.loop.time() - self.sent
            ep.latency_sum += rtt
            ep.latency_count += 1
            if cluster.balancer.wants_latency:
                cluster.balancer.observe(ep, rtt, status < 500)
            outlier = cluster.outlier
            if outlier is not None:
                if status < 500 and not ep.consecutive_5xx and not ep.consecutive_gateway:
                    ep.requests += 1          # the common case, inline
                else:
                    outlier.result(ep, status)
        policy = self.policy
        if not self.committed and policy is not None:
            ex = self.ex
            if (status in policy.statuses and self._may_retry("status")) or (
                    ex.grpc_status >= 0 and ex.grpc_status in policy.grpc_codes
                    and self._may_retry("grpc")):
                ex.grpc_status = -1
                conn.abort()
                self._retry_later()
                return True
        self.committed = True
        return False

    def failed(self, conn: Attempt | None, kind: str) -> bool:
        """No response came; True if the Call takes care of it (a retry)."""
        ex = self.ex
        if self.committed or ex.done or ex.status:
            return False
        cluster = self.cluster
        ep = self.ep
        if kind == "removed":
            # Discovery removed the endpoint this request waited for: pick again.
            if self.saved is not None or not ex.body_expected:
                self._attempt(None)
                return True
            kind = "connect-failure"
        elif kind == "stale":
            # The keep-alive race is not the endpoint's fault and costs no retry,
            # but the upstream may have seen the request: idempotent ones only.
            if not ex.body_expected or (self.saved is not None and ex.method in IDEMPOTENT):
                self.conn = None
                ex.source = None
                if ep is None:
                    self._attempt(None)
                else:
                    self._resend(ep)
                return True
            kind = "reset"
        if ep is not None:
            if cluster.outlier is not None:
                cluster.outlier.local_failure(ep)
            if cluster.balancer.wants_latency:
                cluster.balancer.observe(ep, cluster.ctx.loop.time() - self.sent, False)
        if kind == "timeout":
            cluster.ctx.metrics.count("meshgate_upstream_timeouts", (cluster.name,))
            if self.deadline and cluster.ctx.loop.time() >= self.deadline - 0.001:
                self.committed = True
                return False
        policy = self.policy
        if policy is not None and kind in policy.kinds and self._may_retry(kind):
            self._retry_later()
            return True
        self.committed = True
        return False

    def _resend(self, ep: Endpoint) -> None:
        head, chunked = self.proxy.head(self.ex, ep, self.rid)
        ep.pool.retry(self.ex, head, chunked, self._attempt_timeout())

    # -- retries -----------------------------------------------------------------
    def _may_retry(self, kind: str) -> bool:
        policy = self.policy
        assert policy is not None
        cluster = self.cluster
        ex = self.ex
        if self.attempts >= policy.num_retries:
            return False
        if ex.body_expected and self.saved is None:
            return False              # the body was not kept: it cannot be replayed
        if ex.method not in IDEMPOTENT and kind != "connect-failure" and kind != "grpc":
            return False              # the upstream may have acted on it (gRPC: see retry.py)
        if self.deadline and cluster.ctx.loop.time() >= self.deadline:
            return False
        if not self.retrying:
            limits = cluster.limits
            if limits is not None and limits.retries >= limits.max_retries:
                cluster.ctx.metrics.count("meshgate_upstream_overflow", (cluster.name, "retries"))
                return False
            if not policy.budget_allows(cluster.active, cluster.active_retries):
                cluster.ctx.metrics.count("meshgate_retry_budget_exhausted", (cluster.name,))
                return False
        return True

    def _retry_later(self) -> None:
        cluster = self.cluster
        ex = self.ex
        assert self.policy is not None
        self.attempts += 1
        if not self.retrying:
            self.retrying = True
            cluster.active_retries += 1
            if cluster.limits is not None:
                cluster.limits.retries += 1
        cluster.ctx.metrics.count("meshgate_upstream_retries", (cluster.name,))
        self.conn = None
        ex.source = None
        delay = self.policy.backoff(self.attempts)
        if self.deadline:
            delay = max(0.0, min(delay, self.deadline - cluster.ctx.loop.time()))
        self.timer = cluster.ctx.loop.call_later(delay, self._fire, self.ep)

    def _fire(self, exclude: Endpoint | None) -> None:
        self.timer = None
        ex = self.ex
        if ex.done:
            return
        if self.deadline and self.cluster.ctx.loop.time() >= self.deadline:
            self.committed = True
            upstream_failed(ex, None, "timeout", 504, b"Gateway Timeout\n")
            return
        if ex.body_expected and self.saved is None:     # the body outgrew the replay buffer
            self.committed = True
            ex.responder.respond(ex, 502, b"Bad Gateway: request body too long to retry\n")
            return
        self._attempt(exclude)

    # -- BodySink: the request body, kept for replay ------------------------------
    def attach_body_sink(self, conn: Attempt) -> None:
        self.conn = conn
        ex = self.ex
        if not self.attached:
            self.attached = True
            ex.attach_body_sink(self)         # buffered chunks come through body_data
            return
        saved = self.saved
        if saved is None:
            # The body outgrew the replay buffer while no attempt was connected:
            # the start of it is gone, so this attempt cannot be sent whole.
            conn.abort()
            self.committed = True
            ex.responder.respond(ex, 502, b"Bad Gateway: request body too long to retry\n")
            return
        for chunk in saved:
            conn.body_data(chunk)
        if ex.body_done:
            conn.body_end(ex.trailers)
        else:
            ex.responder.resume_body(ex)      # the failed attempt may have paused the client

    def body_data(self, data: bytes) -> None:
        saved = self.saved
        if saved is not None:
            self.saved_bytes += len(data)
            if self.policy is not None and self.saved_bytes > self.policy.max_body:
                self.saved = None
            else:
                saved.append(data)
        conn = self.conn
        if conn is not None:
            conn.body_data(data)

    def body_end(self, trailers: Headers | None) -> None:
        conn = self.conn
        if conn is not None:
            conn.body_end(trailers)

    def body_abort(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.body_abort()


def _chain(first: Any, second: Any) -> Any:
    def both(ex: Exchange) -> None:
        first(ex)
        second(ex)
    return both
