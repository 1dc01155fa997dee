"""request-transformer: add/remove request headers and JSON body fields (EG's policy).

Theory of operation
-------------------
Params and value syntax are described in ``_transform``. Header rules are
applied in place to ``ex.headers``, synchronously.

Body rules need the whole body, so only then is it buffered: a
``_BodyBuffer`` attaches itself as the Exchange's body sink, collects up to
``maxBodySize`` bytes (more answers 413, as does a larger declared
Content-Length, before anything is read), rewrites the body and puts the
result back on the Exchange as an already-received body -- ``body_buffer``
holding the new bytes, ``body_done`` set, Content-Length corrected and
Transfer-Encoding dropped -- so the proxy, attaching itself as the next
sink, replays it like any early-arrived body and never knows. Invalid JSON
answers 400. When the body had already arrived with the head, all of this
happens inside the action and the pipeline goes on synchronously; otherwise
the action returns a future that resolves when the body has been read.
Requests without a body, or whose body is not JSON or a form, are not
buffered.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from meshgate.policies import POLICIES, BuildContext, PolicySpec
from meshgate.policies._transform import Rules, TransformerParams, body_kind

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers

_FRAMING = (b"content-length", b"transfer-encoding")
_PENDING = object()


class RequestTransformer:
    def __init__(self, params: TransformerParams, ctx: BuildContext) -> None:
        self.rules = Rules(params)

    def __call__(self, ex: Exchange) -> bool | asyncio.Future[bool | None] | None:
        rules = self.rules
        if rules.header_rules:
            drop = rules.drop_headers
            headers = [h for h in ex.headers if h[0] not in drop] if drop else ex.headers
            headers.extend(rules.added_headers(ex))
            ex.headers = headers
        if not rules.body_rules or not ex.body_expected:
            return None
        kind = body_kind(ex.header(b"content-type"), ex.header(b"content-encoding"), form=True)
        if not kind:
            return None
        declared = ex.header(b"content-length")
        if declared is not None and declared.strip().isdigit() \
                and int(declared) > rules.max_body:
            _refuse(ex, 413, b"Payload Too Large\n")
            return True
        buffer = _BodyBuffer(rules, ex, kind)
        ex.attach_body_sink(buffer)
        if buffer.outcome is not _PENDING:
            return buffer.outcome          # type: ignore[return-value]
        buffer.future = asyncio.get_running_loop().create_future()
        return buffer.future


class _BodyBuffer:
    """BodySink that collects the request body, then rewrites it onto the Exchange."""

    __slots__ = ("chunks", "ex", "future", "kind", "outcome", "rules", "size")

    def __init__(self, rules: Rules, ex: Exchange, kind: int) -> None:
        self.rules = rules
        self.ex = ex
        self.kind = kind
        self.chunks: list[bytes] = []
        self.size = 0
        self.outcome: object = _PENDING
        self.future: asyncio.Future[bool | None] | None = None

    def body_data(self, data: bytes) -> None:
        if self.outcome is not _PENDING:
            return
        self.size += len(data)
        if self.size > self.rules.max_body:
            self.chunks = []
            _refuse(self.ex, 413, b"Payload Too Large\n")
            self._settle(True)
            return
        self.chunks.append(data)

    def body_end(self, trailers: Headers | None) -> None:
        if self.outcome is not _PENDING:
            return
        ex = self.ex
        body = b"".join(self.chunks)
        self.chunks = []
        try:
            new = self.rules.transform_body(ex, body, self.kind)
        except ValueError:
            ex.respond(400, b"Bad Request: invalid JSON body\n")
            self._settle(True)
            return
        _replace_body(ex, body if new is None else new)
        self._settle(None)

    def body_abort(self) -> None:
        self.chunks = []
        self._settle(True)               # the client is gone: nothing more to do

    def _settle(self, outcome: bool | None) -> None:
        self.outcome = outcome
        future = self.future
        if future is not None and not future.done():
            future.set_result(outcome)


def _replace_body(ex: Exchange, body: bytes) -> None:
    """Make ``body`` the request body, as if it had arrived complete with the head."""
    ex.body_sink = None
    ex.body_buffer = [body] if body else None
    ex.body_expected = bool(body)
    ex.body_length = len(body)          # the upstream head's framing comes from here
    ex.body_done = True
    ex.trailers = None
    headers = [h for h in ex.headers if h[0] not in _FRAMING]
    headers.append((b"content-length", b"%d" % len(body)))
    ex.headers = headers


def _refuse(ex: Exchange, status: int, body: bytes) -> None:
    ex.keep_alive = False                # the rest of the request body is not read
    ex.respond(status, body)


POLICIES.add(PolicySpec("request-transformer", TransformerParams, RequestTransformer,
                        "Add or remove request headers and JSON body fields"))
