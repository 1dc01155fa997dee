"""fault: inject delays and aborts into a share of requests (Envoy's HTTP fault filter).

Theory of operation
-------------------
An action holds up to two faults, each applied to a ``percentage`` of
requests (a float, 0-100, default 100; ``0.1`` is one request in a
thousand):

* ``delay``  -- hold the request ``fixedDelay`` ms, then carry on with the
  pipeline (usually to the proxy);
* ``abort``  -- answer at once with ``httpStatus`` (body ``fault filter
  abort``), or, with ``grpcStatus``, a gRPC trailers-only style answer:
  status 200, ``content-type: application/grpc``, ``grpc-status`` and
  ``grpc-message`` headers, no body.

As in Envoy, a request may get both: the delay is decided first, and the
abort is decided when the delay ends. Envoy's ``headers`` / ``upstream_cluster``
/ ``downstream_nodes`` matching is what conditions on the action are for.

Header-controlled faults (``headerControlled: true`` instead of
``fixedDelay`` / ``httpStatus`` / ``grpcStatus``) take their parameters from
the request, as Envoy's ``header_delay`` / ``header_abort`` do:

* ``x-envoy-fault-delay-request``          delay in ms;
* ``x-envoy-fault-abort-request``          HTTP status, 200-599;
* ``x-envoy-fault-abort-grpc-request``     gRPC status (ignored when the HTTP
  one is present);
* ``x-envoy-fault-delay-request-percentage`` / ``x-envoy-fault-abort-request-percentage``
  the share of such requests to fault, capped by the configured
  ``percentage``; ignored unless the fault's own header is present.

(``x-meshgate-*`` headers never reach a policy: the codec drops every
client-sent one, so there is no ``x-meshgate-fault-...`` spelling.) A missing or malformed
header means no fault. All are read in one pass over the request headers, and
only when some fault of the action is header-controlled.

``maxActiveFaults`` caps the faults active at once in this worker, counted
over every fault step of the pipeline (Envoy's ``max_active_faults``, default
unlimited). A delay is active until it ends; an abort only while it answers.
A request that would exceed the cap gets no fault and is counted as an
overflow.

Hot path: the common outcome -- no fault chosen -- is a ``random()`` per
configured fault and returns ``None``; no coroutine is created unless a delay
was chosen. Injected faults are counted as ``meshgate_faults_injected``
(label ``kind``: ``delay`` or ``abort``, Envoy's ``delays_injected`` /
``aborts_injected``) and refusals at the cap as ``meshgate_faults_overflow``
(Envoy's ``faults_overflow``).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from meshgate.config.base import ParamsModel
from meshgate.policies import POLICIES, BuildContext, Outcome, PolicySpec
from meshgate.protocol.grpc import trailers_only

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange

ABORT_BODY = b"fault filter abort"
_ENVOY = b"x-envoy-fault-"
_DELAY = b"delay-request"
_DELAY_PCT = b"delay-request-percentage"
_ABORT = b"abort-request"
_ABORT_GRPC = b"abort-grpc-request"
_ABORT_PCT = b"abort-request-percentage"
_DELAY_KIND = ("delay",)
_ABORT_KIND = ("abort",)


def _percentage(value: float) -> float:
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"percentage must be between 0 and 100 (a float: 0.1 means 0.1%), "
                         f"got {value:g}")
    return value


class FaultDelay(ParamsModel):
    fixedDelay: int | None = Field(None, ge=0, description="Delay in ms")
    headerControlled: bool = Field(
        False, description="Take the delay from x-envoy-fault-delay-request (ms)")
    percentage: float = Field(100.0, description="Share of requests delayed, 0-100")

    _percentage = field_validator("percentage")(_percentage)

    @model_validator(mode="after")
    def _one_source(self) -> FaultDelay:
        if (self.fixedDelay is None) == (not self.headerControlled):
            raise ValueError("a delay needs exactly one of fixedDelay or headerControlled: true")
        return self


class FaultAbort(ParamsModel):
    httpStatus: int | None = Field(None, description="Status to answer with, 200-599")
    grpcStatus: int | None = Field(None, ge=0, description="gRPC status to answer with")
    headerControlled: bool = Field(
        False, description="Take the status from x-envoy-fault-abort-request")
    percentage: float = Field(100.0, description="Share of requests aborted, 0-100")

    _percentage = field_validator("percentage")(_percentage)

    @field_validator("httpStatus")
    @classmethod
    def _status(cls, value: int | None) -> int | None:
        if value is not None and not 200 <= value <= 599:
            raise ValueError(f"httpStatus must be within 200-599, got {value}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> FaultAbort:
        chosen = (self.httpStatus is not None) + (self.grpcStatus is not None) + \
            self.headerControlled
        if chosen != 1:
            raise ValueError("an abort needs exactly one of httpStatus, grpcStatus or "
                             "headerControlled: true")
        return self


class FaultParams(ParamsModel):
    delay: FaultDelay | None = Field(None, description="Delay a share of requests")
    abort: FaultAbort | None = Field(None, description="Answer a share of requests at once")
    maxActiveFaults: int | None = Field(
        None, ge=0, description="Faults active at once per worker (default unlimited)")

    @model_validator(mode="after")
    def _something(self) -> FaultParams:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault needs a delay, an abort, or both")
        return self


class _Active:
    """Faults active in this worker for one pipeline (kept across reloads)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


def _fault_headers(ex: Exchange) -> dict[bytes, bytes] | None:
    """The fault headers of a request, by the part after the prefix."""
    found: dict[bytes, bytes] | None = None
    for name, value in ex.headers:
        if name.startswith(_ENVOY):
            if found is None:
                found = {}
            found[name[len(_ENVOY):]] = value
    return found


def _int(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _chosen(percentage: float, header: bytes | None) -> bool:
    """Roll for a fault; a valid percentage header can only lower ``percentage``."""
    if header is not None:
        try:
            asked = float(header)
        except ValueError:
            asked = math.nan
        if math.isfinite(asked) and asked >= 0:
            percentage = min(percentage, asked)
    return percentage >= 100.0 or random.random() * 100.0 < percentage


def _no_count(name: str, labels: tuple[str, ...]) -> None:
    return None


def _counter(ctx: BuildContext) -> Callable[[str, tuple[str, ...]], Any]:
    """The worker's ``metrics.count``, where the build context leads to it."""
    metrics = getattr(ctx, "metrics", None)
    if metrics is None:
        for cluster in ctx.clusters.values():
            metrics = getattr(getattr(cluster, "ctx", None), "metrics", None)
            if metrics is not None:
                break
    count = getattr(metrics, "count", None)
    return count if callable(count) else _no_count


class Fault:
    def __init__(self, params: FaultParams, ctx: BuildContext) -> None:
        delay, abort = params.delay, params.abort
        self.delay_pct = delay.percentage if delay else 0.0
        self.delay_fixed = (delay.fixedDelay or 0) / 1000.0 if delay else 0.0
        self.delay_header = bool(delay and delay.headerControlled)
        self.abort_pct = abort.percentage if abort else 0.0
        self.abort_header = bool(abort and abort.headerControlled)
        self.abort_status = abort.httpStatus if abort else None
        self.abort_grpc = abort.grpcStatus if abort else None
        # A percentage header can only lower the configured one: at 0 a fault never fires.
        self.has_delay = (delay is not None and self.delay_pct > 0
                          and (self.delay_header or self.delay_fixed > 0))
        self.has_abort = abort is not None and self.abort_pct > 0
        self.reads_headers = ((self.has_delay and self.delay_header)
                              or (self.has_abort and self.abort_header))
        self.max_active = params.maxActiveFaults
        self.active: _Active = ctx.services.get(f"fault-active:{ctx.pipeline}", _Active)
        self.count = _counter(ctx)

    def __call__(self, ex: Exchange) -> Outcome:
        headers = _fault_headers(ex) if self.reads_headers else None
        if self.has_delay:
            seconds = self._delay(headers)
            if seconds > 0.0 and self._admit():
                self.active.count += 1
                self.count("meshgate_faults_injected", _DELAY_KIND)
                return self._delayed(ex, seconds, headers)
        if self.has_abort and self._abort(ex, headers, admitted=False):
            return True
        return None

    # -- the two faults ------------------------------------------------------------------
    def _delay(self, headers: dict[bytes, bytes] | None) -> float:
        """Seconds to hold this request; 0.0 for none."""
        if not self.delay_header:
            return self.delay_fixed if _chosen(self.delay_pct, None) else 0.0
        if headers is None:
            return 0.0
        ms = _int(headers.get(_DELAY))
        if ms is None or ms <= 0 or not _chosen(self.delay_pct, headers.get(_DELAY_PCT)):
            return 0.0
        return ms / 1000.0

    async def _delayed(self, ex: Exchange, seconds: float,
                       headers: dict[bytes, bytes] | None) -> bool | None:
        try:
            await asyncio.sleep(seconds)
        finally:
            self.active.count -= 1
        if ex.done:                    # the client went away meanwhile
            return True
        if self.has_abort and self._abort(ex, headers, admitted=True):
            return True
        return None

    def _abort(self, ex: Exchange, headers: dict[bytes, bytes] | None, admitted: bool) -> bool:
        """Answer now if an abort is chosen (``admitted``: this request already holds a fault)."""
        status, grpc = self.abort_status, self.abort_grpc
        if self.abort_header:
            if headers is None:
                return False
            status = _int(headers.get(_ABORT))
            if status is not None and not 200 <= status <= 599:
                status = None
            if status is None:
                grpc = _int(headers.get(_ABORT_GRPC))
                if grpc is not None and grpc < 0:
                    grpc = None
            if status is None and grpc is None:
                return False
            if not _chosen(self.abort_pct, headers.get(_ABORT_PCT)):
                return False
        elif not _chosen(self.abort_pct, None):
            return False
        if not admitted and not self._admit():
            return False
        self.count("meshgate_faults_injected", _ABORT_KIND)
        if status is not None:
            ex.respond(status, ABORT_BODY)
        else:
            ex.respond(200, b"", trailers_only(grpc or 0, ABORT_BODY))
        return True

    def _admit(self) -> bool:
        """Room for one more active fault? Counts the overflow when not."""
        if self.max_active is None or self.active.count < self.max_active:
            return True
        self.count("meshgate_faults_overflow", ())
        return False


def build(params: FaultParams, ctx: BuildContext) -> Fault:
    return Fault(params, ctx)


POLICIES.add(PolicySpec("fault", FaultParams, build,
                        "Inject delays and aborts into a share of requests (Envoy's fault filter)"))
