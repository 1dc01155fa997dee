"""The proxy action's request path: pick an endpoint, build the head, send.

``Forward`` forwards to one serviceEndpoint (the proxy action, or one target
of a split). Its options are settled at load (``proxy.py`` parses them);
per request it picks an endpoint and builds the upstream head in one pass
over the client's headers: hop-by-hop headers are dropped (those a
``Connection`` header named were dropped by the codec), ``Expect`` is
answered by us, X-Forwarded-* and an ``eg-request-id`` are added. The
framing -- ``Content-Length`` or ``Transfer-Encoding: chunked`` -- is written
by us from what the codec parsed (``ex.body_length``), never copied, so no
header list can change where the request ends. Guarded clusters send
through a ``Call``.

A request body up to ``server.bufferRequestBody`` bytes is read whole before
an upstream connection is taken (nginx's request buffering): a client that
uploads slowly holds its own connection, never one of the serviceEndpoint's
pool. Longer bodies stream, each read bounded by ``server.bodyTimeout``.

Compiled with mypyc (see setup.py): keep it fully typed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

from meshgate.protocol import grpc_web
from meshgate.protocol.hop import HOP_BY_HOP
from meshgate.upstream.call import Call, request_ids

if TYPE_CHECKING:
    from meshgate.policies import BuildContext
    from meshgate.policies.proxy import ProxyParams
    from meshgate.protocol.exchange import Exchange, Headers
    from meshgate.upstream.cluster import Endpoint


# Client headers we never copy verbatim: hop-by-hop, and the ones we rewrite.
_SPECIAL: Final = HOP_BY_HOP | {b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
                                b"x-forwarded-host", b"eg-request-id", b"content-length"}
_ID_PREFIX: Final = b"%x" % (os.getpid() ^ int.from_bytes(os.urandom(4), "big"))


def _merged_options(action: ProxyParams, endpoint_options: dict[str, Any]) -> dict[str, Any]:
    """Express Gateway's precedence: action < serviceEndpoint < action.proxyOptions."""
    merged = {k: v for k, v in action.model_dump().items() if v is not None}
    merged.update(endpoint_options)
    merged.update(action.proxyOptions)
    return merged


class Forward:
    """Forward to one serviceEndpoint (the proxy action, or one target of a split)."""

    def __init__(self, params: ProxyParams, service: str, ctx: BuildContext) -> None:
        cluster = ctx.clusters[service]
        options = _merged_options(params, cluster.proxy_options)
        self.cluster = cluster
        self.name = service
        self.change_origin = bool(options.get("changeOrigin", False))
        self.strip_path = bool(options.get("stripPath", False))
        self.prepend_path = bool(options.get("prependPath", True))
        self.ignore_path = bool(options.get("ignorePath", False))
        self.xfwd = bool(options.get("xfwd", True))
        timeout = options.get("timeout", options.get("proxyTimeout"))
        self.timeout = float(timeout) / 1000.0 if timeout is not None else None
        self.request_timeout = (params.requestTimeout or 0) / 1000.0
        extra = options.get("headers") or {}
        self.extra_headers = b"".join(b"%s: %s\r\n" % (str(k).lower().encode(),
                                                          str(v).encode("latin-1"))
                                      for k, v in extra.items())
        # The request id line ends every head; its counter is the only variable part.
        self.extra_headers += b"eg-request-id: " + _ID_PREFIX + b"-"
        self.rewrites_path = self.strip_path or self.ignore_path or (
            self.prepend_path and cluster.has_base_path)
        # Attempt timeouts, decided once (seconds, 0 = none): an attempt's own
        # limit, and the first attempt's, capped by the overall requestTimeout.
        policy = cluster.retry
        if self.timeout is not None:
            self.per_try = self.timeout
        elif policy is not None and policy.per_try:
            self.per_try = policy.per_try
        else:
            self.per_try = cluster.response_timeout
        self.overall = self.request_timeout or cluster.request_timeout
        self.first_timeout = (min(self.per_try, self.overall) if self.per_try and self.overall
                              else self.per_try or self.overall)
        # Without retries an overall deadline is just the one attempt's: no Call needed.
        self.guarded = cluster.guarded or (policy is not None and bool(self.overall))

    def __call__(self, ex: Exchange) -> bool:
        if ex.body_expected and not ex.body_done and ex.body_sink is None \
                and ex.body_tee is None and self.cluster.ctx.buffer_body:
            wait = BodyWait(ex, self, self.cluster.ctx.buffer_body)
            ex.attach_body_sink(wait)
            if not wait.released:
                return True              # sent once the body is in (or outgrew the buffer)
        return self.send(ex)

    def send(self, ex: Exchange) -> bool:
        cluster = self.cluster
        ex.cluster_name = self.name
        if self.guarded:
            return Call(self, cluster, ex).start()
        ep = cluster.single or cluster.pick(ex)
        if ep is None:
            if cluster.awaiting_first:
                cluster.park(ex, lambda: self.send(ex))
            else:
                ex.responder.respond(ex, 503, b"Service Unavailable: no healthy upstream\n")
            return True
        head, chunked = self.head(ex, ep)
        ep.pool.send(ex, head, chunked, self.first_timeout)
        return True

    def head(self, ex: Exchange, ep: Endpoint, rid: int = 0) -> tuple[bytes, bool]:
        """The request head for ``ep``, and whether the body goes chunked.

        ``rid`` keeps one request id over a Call's attempts (0: a new one).
        """
        path = ex.path
        if self.rewrites_path:
            path = self._rewrite(ex, ep, path)
        lines = [b"%s %s HTTP/1.1\r\n" % (ex.method, path)]
        append = lines.append
        host = xff = None
        special = _SPECIAL
        for item in ex.headers:
            name = item[0]
            if name not in special:
                append(b"%s: %s\r\n" % item)
            elif name == b"host":
                host = item[1]
            elif name == b"x-forwarded-for":
                xff = item[1] if xff is None else xff + b", " + item[1]
            elif not self.xfwd and name.startswith(b"x-forwarded-"):
                append(b"%s: %s\r\n" % item)
        host_line = ep.authority if self.change_origin or host is None else host
        if self.xfwd:
            client = ex.client_addr
            append(_XFWD % (host_line, client if xff is None else xff + b", " + client,
                            ex.scheme, host or ep.authority))
        else:
            append(b"host: %s\r\n" % host_line)
            if xff is not None:
                append(b"x-forwarded-for: %s\r\n" % xff)
        chunked = ex.body_expected and ex.body_length < 0
        if chunked:
            append(b"transfer-encoding: chunked\r\n")
        elif ex.body_length >= 0:
            append(b"content-length: %d\r\n" % ex.body_length)
        append(self.extra_headers)          # ... and "eg-request-id: <prefix>-"
        append(b"%x\r\n\r\n" % (rid or next(request_ids)))
        return b"".join(lines), chunked

    def _rewrite(self, ex: Exchange, ep: Endpoint, path: bytes) -> bytes:
        if self.strip_path:
            path = _strip(ex.route.strip_pos, path)
        if self.ignore_path:
            return ep.base_path or b"/"
        if self.prepend_path and ep.base_path:
            return ep.base_path + (b"" if path == b"/" else path)
        return path


class GrpcWebForward(Forward):
    """A Forward whose gRPC-Web requests go on as gRPC (``protocol/grpc_web.py``).

    Chosen at load for serviceEndpoints that speak HTTP/2 (the proxy's
    ``grpcWeb``), so that other routes pay nothing for it.
    """

    def __call__(self, ex: Exchange) -> bool:
        web = grpc_web.variant(ex)
        if web is not None:
            grpc_web.translate(ex, web)
        return super().__call__(ex)


_XFWD: Final = (b"host: %s\r\nx-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n"
         b"x-forwarded-host: %s\r\n")


def _strip(pos: int | None, path: bytes) -> bytes:
    """EG's stripPath: cut the url at the route path's first ':' or '*'."""
    if pos is None or pos == 0:
        return path
    if pos < 0:
        q = path.find(b"?")
        return b"/" if q < 0 else b"/" + path[q:]
    rest = path[pos:]
    return rest if rest[:1] == b"/" else b"/" + rest



class BodyWait:
    """Holds a request body until it is complete (or too long), then sends it.

    A BodySink: it collects what the codec reads, and on ``body_end`` -- or
    when the body outgrows ``limit`` -- hands the chunks back to the Exchange
    as if they had just arrived and calls ``forward.send``, whose upstream
    connection takes them (and the rest, streaming) as its sink.

    A body that outgrows the buffer streams, and a streaming upload holds an
    upstream connection for as long as its client takes: at most
    ``cluster.max_uploads`` of them do so at once. Beyond that the upload
    waits, its client unread, for one of them to end (``_free``); requests
    with small bodies never wait for that.
    """

    __slots__ = ("chunks", "ex", "forward", "limit", "queued", "released", "size")

    def __init__(self, ex: Exchange, forward: Forward, limit: int) -> None:
        self.ex = ex
        self.forward = forward
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.released = False
        self.queued = False              # waiting for an upload slot

    def body_data(self, data: bytes) -> None:
        if self.released:                # still being replayed to us: pass it on, in order
            ex = self.ex
            sink = ex.body_sink
            if sink is not None and sink is not self:
                sink.body_data(data)
            elif ex.body_buffer is None:
                ex.body_buffer = [data]
            else:
                ex.body_buffer.append(data)
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size > self.limit and not self.queued:
            cluster = self.forward.cluster
            if cluster.uploads < cluster.max_uploads:
                self._take_slot()
                self._release()
            else:
                self.queued = True
                cluster.upload_waiters.append(self)
                self.ex.responder.pause_body(self.ex)

    def body_end(self, trailers: Headers | None) -> None:
        if not self.released:
            self._release()              # complete: no upload slot needed
            return
        sink = self.ex.body_sink
        if sink is not None and sink is not self:
            sink.body_end(trailers)

    def body_abort(self) -> None:
        self.released = True             # the client is gone: nothing to send
        self.chunks = []

    def _take_slot(self) -> None:
        ex = self.ex
        self.forward.cluster.uploads += 1
        free = self._free
        done = ex.on_done
        ex.on_done = free if done is None else _Both(done, free)

    def _free(self, ex: Exchange) -> None:
        cluster = self.forward.cluster
        cluster.uploads -= 1
        waiters = cluster.upload_waiters
        while waiters:
            wait: BodyWait = waiters.popleft()
            if not wait.released and not wait.ex.done:
                wait._take_slot()
                wait._release()
                wait.ex.responder.resume_body(wait.ex)
                return

    def _release(self) -> None:
        self.released = True
        ex = self.ex
        ex.body_sink = None
        ex.body_buffer = self.chunks or None
        self.chunks = []
        if not ex.done:
            self.forward.send(ex)


class _Both:
    """Two ``on_done`` callbacks in turn."""

    __slots__ = ("first", "second")

    def __init__(self, first: Any, second: Any) -> None:
        self.first = first
        self.second = second

    def __call__(self, ex: Exchange) -> None:
        self.first(ex)
        self.second(ex)
