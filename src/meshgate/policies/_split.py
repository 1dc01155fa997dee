"""Traffic split and mirroring for the proxy policy.

Theory of operation
-------------------
``Split`` holds one ``Forward`` per target serviceEndpoint. Per request:

1. a target whose ``match`` (all its headers and cookies equal) fits the
   request takes it -- the way to pin testers to a canary;
2. otherwise, with ``stickyBy``, a stable hash of the key (header, cookie,
   query parameter or client address) picks the target, so a client stays on
   one version while the weights stay put;
3. otherwise a weighted random draw (a bisect over cumulative weights).

Weights change by editing the pipeline (reload or Admin API); requests in
flight finish on the Snapshot they started with. Each decision is counted
per target (``meshgate_split_decisions``).

``Mirror`` sends a copy of a share of requests to another serviceEndpoint,
fire-and-forget: the copy has its own Exchange whose responder discards
everything, ``-shadow`` appended to its Host (as Envoy does), and its
failures never reach the client. A request body of up to 64 KiB (with a
Content-Length) is copied as it streams to the primary (``_Tee``, installed
through ``ex.body_tee``); longer or chunked bodies are not mirrored and are
counted as skipped.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from meshgate.config.mesh import HashOn
from meshgate.protocol.exchange import Exchange
from meshgate.upstream.balancer._hashkey import key_function, key_hash

if TYPE_CHECKING:
    from meshgate.policies import Action, BuildContext
    from meshgate.protocol.exchange import Headers


def _matcher(match: Any) -> list[tuple[Any, bytes]]:
    """(key extractor, expected value) for every header and cookie of a ``match``."""
    wanted = [({"header": k}, v) for k, v in match.headers.items()]
    wanted += [({"cookie": k}, v) for k, v in match.cookies.items()]
    return [(key_function(HashOn.model_validate(on)), v.encode()) for on, v in wanted]


class Split:
    def __init__(self, params: Any, targets: list[tuple[Any, Any]], ctx: BuildContext) -> None:
        self.forwards = [fwd for fwd, _ in targets]
        self.weights = [t.weight for _, t in targets]
        self.cumulative = list(accumulate(self.weights))
        self.total = self.cumulative[-1]
        sticky: HashOn | None = params.stickyBy
        self.sticky_key = key_function(sticky) if sticky is not None else None
        self.matchers = [(fwd, _matcher(t.match)) for fwd, t in targets if t.match is not None]
        self.pipeline = ctx.pipeline

    def choose(self, ex: Exchange) -> Any:
        for fwd, wanted in self.matchers:
            if all(key(ex) == value for key, value in wanted):
                return fwd
        if self.sticky_key is not None:
            key = self.sticky_key(ex)
            if key is not None:
                point = key_hash(key) % self.total
                return self.forwards[bisect_right(self.cumulative, point)]
        return self.forwards[bisect_right(self.cumulative, random.random() * self.total)]

    def __call__(self, ex: Exchange) -> bool:
        fwd = self.choose(ex)
        fwd.cluster.ctx.metrics.count("meshgate_split_decisions", (self.pipeline, fwd.name))
        result: bool = fwd(ex)
        return result


class _Discard:
    """Responder of a mirrored copy: the response is read and dropped."""

    def start_response(self, ex: Exchange, status: int, headers: Headers,
                       has_body: bool, length: int | None) -> None:
        ex.status = status

    def start_response_raw(self, ex: Exchange, status: int, block: bytes,
                           has_body: bool, length: int | None) -> None:
        ex.status = status

    def send_data(self, ex: Exchange, data: bytes) -> None:
        pass

    def end_response(self, ex: Exchange, trailers: Headers | None) -> None:
        _finish(ex)

    def respond(self, ex: Exchange, status: int, body: bytes,
                headers: Headers | None = None) -> None:
        if not ex.done:
            ex.status = status
            _finish(ex)

    def flush(self, ex: Exchange) -> None:
        pass

    def abort(self, ex: Exchange) -> None:
        _finish(ex)

    def pause_body(self, ex: Exchange) -> None:
        pass

    def resume_body(self, ex: Exchange) -> None:
        pass

    def set_response_source(self, ex: Exchange, source: Any) -> None:
        ex.source = source


def _finish(ex: Exchange) -> None:
    """The copy ended: once, as a codec would end it (a Call releases its counters)."""
    if not ex.done:
        ex.done = True
        ex.source = None
        if ex.on_done is not None:
            ex.on_done(ex)


_DISCARD = _Discard()


class Mirror:
    def __init__(self, primary: Action, shadow: Any, percentage: float,
                 ctx: BuildContext) -> None:
        self.primary = primary
        self.shadow = shadow
        self.share = percentage / 100.0
        self.metrics = shadow.cluster.ctx.metrics
        self.name = shadow.name

    def __call__(self, ex: Exchange) -> Any:
        if self.share >= 1.0 or random.random() < self.share:
            if ex.body_expected:
                length = ex.header(b"content-length")
                if length is None or not length.isdigit() or int(length) > MIRROR_MAX_BODY:
                    self.metrics.count("meshgate_mirror_skipped", (self.name, "body"))
                    return self.primary(ex)
            self._copy(ex)
        return self.primary(ex)

    def _copy(self, ex: Exchange) -> None:
        headers = [(k, v + b"-shadow") if k == b"host" else (k, v) for k, v in ex.headers]
        copy = Exchange(_DISCARD, ex.method, ex.path, headers, ex.authority, ex.scheme,
                        ex.client_addr, ex.http_version, ex.body_expected, ex.started)
        copy.route = ex.route
        copy.body_length = ex.body_length
        if ex.body_expected:
            tee = ex.body_tee = _Tee(copy)
            # Should the original end before its body did (refused, client gone),
            # the copy must not wait for the rest of it.
            ex.on_done = tee.original_done if ex.on_done is None else _both(
                ex.on_done, tee.original_done)
        self.metrics.count("meshgate_mirror_requests", (self.name,))
        self.shadow(copy)


MIRROR_MAX_BODY = 65536      # larger (or chunked) bodies are not mirrored


class _Tee:
    """The body sink of a mirrored request: the primary's, plus a copy for the shadow."""

    __slots__ = ("copy", "primary")

    def __init__(self, copy: Exchange) -> None:
        self.copy = copy
        self.primary: Any = None

    def body_data(self, data: bytes) -> None:
        self.primary.body_data(data)
        copy = self.copy
        if copy.body_sink is not None:
            copy.body_sink.body_data(data)
        elif copy.body_buffer is None:
            copy.body_buffer = [data]
        else:
            copy.body_buffer.append(data)

    def body_end(self, trailers: Headers | None) -> None:
        self.primary.body_end(trailers)
        copy = self.copy
        copy.body_done = True
        copy.trailers = trailers
        if copy.body_sink is not None:
            copy.body_sink.body_end(trailers)

    def body_abort(self) -> None:
        self.primary.body_abort()
        self._abort_copy()

    def original_done(self, ex: Exchange) -> None:
        if not self.copy.body_done:
            self._abort_copy()

    def _abort_copy(self) -> None:
        copy = self.copy
        if copy.body_sink is not None:
            copy.body_sink.body_abort()
        elif copy.source is not None:
            copy.source.abort()
        _finish(copy)


def _both(first: Any, second: Any) -> Any:
    def both(ex: Exchange) -> None:
        first(ex)
        second(ex)
    return both
