"""HTTP/2 downstream codec: frames from a client in, one Exchange per stream out.

Theory of operation
-------------------
One ``H2Server`` protocol per client connection, reached by prior knowledge
on a plaintext listener (``H1Server`` hands the connection over when its
first read is the connection preface) or by ALPN ``h2`` on a TLS one. The
frame layer (``h2_conn``) parses and frames; each request stream becomes an Exchange
(``h2_head.request_head``) routed and run by ``exchange.dispatch``, as an
HTTP/1.1 request is, so the proxy forwards it as its serviceEndpoint says. The codec is then
the Exchange's ``Responder``, per stream.

Streams opened by one read are dispatched after the whole read was
processed: a stream the client opened and reset in the same read never
reaches a pipeline (rapid reset), and the resets count against
``maxResetsPerSecond``.

Flow control, both ways:

* response data waits in the stream's buffer until the peer's windows take
  it; past ``streamBufferBytes`` buffered (or while the transport is
  write-paused, when no DATA is written at all) the stream's
  ``ResponseSource`` is paused, and resumed once WINDOW_UPDATE or
  ``resume_writing`` drain it below half;
* request data is acknowledged (WINDOW_UPDATE) as the body sink takes it; a
  sink that paused us (``pause_body``) or none attached yet leaves the bytes
  unacknowledged, so a client can send no more than the stream window.

WebSocket over HTTP/2 (RFC 8441): an extended CONNECT stream is dispatched
as a handshake (``ex.upgrade``) and carries an ``h2_tunnel.H2Tunnel``; once
the upstream accepts (``switch_protocols``) the stream is the tunnel's
client side. The few places here that test ``stream.tunnel`` hand that
stream's DATA, END_STREAM, resets and the end of our side to it.

Connection phases for the worker's sweep (``tick``): streams open -- a
request body that stops for ``bodyTimeout`` is 408 (or a reset once the
response started), a response the peer gives no window for ``bodyTimeout``
is reset and its upstream aborted; no streams -- closed with GOAWAY after
``keepAliveTimeout`` (``headersTimeout`` before the first request); an
unfinished header block past ``headersTimeout`` ends the connection.
``drain`` sends GOAWAY naming the last stream taken: those finish, later
ones are refused, and the connection closes when the last ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from meshgate.protocol.exchange import Exchange, Headers, ResponseSource, dispatch
from meshgate.protocol.grpc import is_grpc_request, local_answer
from meshgate.protocol.h1_head import Refusal
from meshgate.protocol.h1_response import plain_headers
from meshgate.protocol.h2_conn import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    ProtocolError,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from meshgate.protocol.h2_guard import (
    MAX_UNSENT,
    Budget,
    goaway,
    new_connection,
    pending_header_bytes,
)
from meshgate.protocol.h2_head import (
    request_head,
    request_trailers,
    response_head,
    response_trailers,
)
from meshgate.protocol.h2_tunnel import H2Tunnel, refuse_plain, switch
from meshgate.protocol.hop import render_block

if TYPE_CHECKING:
    from meshgate.server.context import WorkerContext

log = logging.getLogger("meshgate.http2")

_CALM: Final = ENHANCE_YOUR_CALM


class _Stream:
    """One request stream: its Exchange and what waits to be sent on it."""

    __slots__ = ("body_paused", "end", "ex", "head", "id", "out", "out_bytes", "progress",
                 "source_paused", "trailers", "tunnel", "unacked")

    def __init__(self, stream_id: int, ex: Exchange, now: float) -> None:
        self.id = stream_id
        self.ex = ex
        self.head: Headers | None = None     # response fields not yet sent
        self.out: list[bytes] = []           # response data the windows did not take yet
        self.out_bytes = 0
        self.end = False                     # the response ended (END_STREAM owed)
        self.trailers: Headers | None = None
        self.source_paused = False
        self.body_paused = False             # the body sink asked for no more
        self.unacked = 0                     # request bytes received, not yet acknowledged
        self.progress = now                  # last time bytes moved on this stream
        self.tunnel: H2Tunnel | None = None  # an extended CONNECT for WebSocket (h2_tunnel)


class H2Server(asyncio.Protocol):
    def __init__(self, ctx: WorkerContext, scheme: bytes = b"http",
                 outbound: bool = False) -> None:
        self.ctx = ctx
        self.scheme = scheme
        self.outbound = outbound
        self.cfg = cfg = ctx.http2
        # Extended CONNECT (RFC 8441) advertised; a context with no config yet has no routes.
        snapshot = getattr(ctx, "snapshot", None)
        self.websocket = outbound or (snapshot is not None and snapshot.websocket)
        self.conn, self._opening = new_connection(cfg, self.websocket)
        self.budget = Budget(cfg)
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.streams: dict[int, _Stream] = {}
        self.by_ex: dict[Exchange, _Stream] = {}
        self.nreq = 0
        self._clock = ctx.loop.time
        self._queued = False
        self._write_paused = False
        self._closing = False
        self._goaway_at = -1                 # last stream id our GOAWAY named; -1: none sent
        self._idle_since = ctx.now
        self._window_start = ctx.now
        self._head_since = 0.0               # when an unfinished header block was first seen

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b""
        self.ctx.connections.add(self)
        transport.write(self._opening)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        self._closing = True
        for stream in list(self.streams.values()):
            self._abandon(stream)
        self.streams.clear()
        self.by_ex.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        for stream in self.streams.values():
            self._pause_source(stream)

    def resume_writing(self) -> None:
        self._write_paused = False
        for stream in list(self.streams.values()):
            self._pump(stream)
        self._queue_write()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events: list[Any] = self.conn.receive_data(data)
        except ProtocolError as exc:
            log.debug("HTTP/2 protocol error from %s: %s", self.peer, exc)
            self._close()                  # the GOAWAY it queued goes out first
            return
        opened: list[_Stream] = []
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                self._data(event)
            elif kind is RequestReceived:
                stream = self._open(event)
                if stream is not None:
                    opened.append(stream)
            elif kind is StreamEnded:
                self._body_end(event.stream_id)
            elif kind is WindowUpdated:
                self._window(event.stream_id)
            elif kind is StreamReset:
                self._reset_by_peer(event.stream_id)
            elif kind is TrailersReceived:
                self._trailers(event)
            elif kind is RemoteSettingsChanged or kind is PingReceived:
                if not self.budget.ack():
                    self._calm()
                elif kind is RemoteSettingsChanged:
                    self._window(0)        # a new initial window may open every stream
            elif kind is ConnectionTerminated:
                self._close()
            if self._closing:
                return
        for stream in opened:
            if self.streams.get(stream.id) is stream:
                self._dispatch(stream.ex)
        self._queue_write()

    # -- streams in ----------------------------------------------------------
    def _open(self, event: RequestReceived) -> _Stream | None:
        stream_id = event.stream_id
        if len(self.streams) >= self.cfg.maxConcurrentStreams or (
                0 <= self._goaway_at < stream_id):
            self._refuse(stream_id)
            return None
        ctx = self.ctx
        head = request_head(event.headers, ctx.path_rules, ctx.max_headers, self.websocket)
        ended = event.stream_ended is not None
        now = self._clock()
        ex = Exchange(self, head.method, head.path, head.headers, head.authority, self.scheme,
                      self.peer, b"2", not ended and not head.tunnel, now)
        ex.body_length = head.length
        if head.bad:
            ex.pipeline = Refusal(head.bad, head.status)
        stream = _Stream(stream_id, ex, now)
        if head.tunnel and not head.bad:
            if ended:
                ex.pipeline = Refusal(b"Bad Request: extended CONNECT stream ended at once\n")
            else:
                ex.upgrade = True
                stream.tunnel = H2Tunnel(self, stream)
        self.streams[stream_id] = stream
        self.by_ex[ex] = stream
        self.nreq += 1
        return stream

    def _refuse(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, REFUSED_STREAM)
        if not self.budget.reset():
            self._calm()

    def _dispatch(self, ex: Exchange) -> None:
        dispatch(ex, self.ctx.outbound if self.outbound else self.ctx.snapshot.router)

    def _data(self, event: DataReceived) -> None:
        size = event.flow_controlled_length
        stream = self.streams.get(event.stream_id)
        ex = stream.ex if stream is not None else None
        if stream is None or ex is None or ex.done or ex.body_done:
            if stream is not None and stream.tunnel is not None:
                stream.tunnel.on_data(event.data, size)
                return
            if size:                       # nobody reads it: hand the window back
                self.conn.acknowledge_received_data(size, event.stream_id)
            return
        stream.progress = self.ctx.now
        data = event.data
        sink = ex.body_sink
        if sink is None:
            if ex.body_buffer is None:
                ex.body_buffer = []
            ex.body_buffer.append(data)
            stream.unacked += size
            return
        sink.body_data(data)
        if stream.body_paused:
            stream.unacked += size
        elif size:
            self.conn.acknowledge_received_data(size, stream.id)

    def _trailers(self, event: TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            kept = request_trailers(event.headers)
            if kept:
                stream.ex.trailers = kept

    def _body_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        ex = stream.ex
        if ex.body_done:
            if stream.tunnel is not None:
                stream.tunnel.on_end()
            return
        ex.body_done = True
        if ex.body_expected and ex.body_sink is not None and not ex.done:
            ex.body_sink.body_end(ex.trailers)

    def _reset_by_peer(self, stream_id: int) -> None:
        if not self.budget.reset():
            self._calm()
            return
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self._abandon(stream)

    def _abandon(self, stream: _Stream) -> None:
        """The stream is gone before its exchange ended: stop whoever works for it."""
        if stream.tunnel is not None:
            stream.tunnel.lost()
        self._give_back(stream)
        self.by_ex.pop(stream.ex, None)
        ex = stream.ex
        if ex.done:
            return
        ex.done = True
        if ex.source is not None:
            ex.source.abort()
            ex.source = None
        if ex.body_sink is not None and not ex.body_done:
            ex.body_sink.body_abort()
        ex.body_done = True
        if ex.on_done is not None:
            ex.on_done(ex)

    # -- Responder ---------------------------------------------------------
    def start_response(self, ex: Exchange, status: int, headers: Headers,
                       has_body: bool, length: int | None) -> None:
        self.start_response_raw(ex, status, render_block(headers, length), has_body, length)

    def start_response_raw(self, ex: Exchange, status: int, block: bytes,
                           has_body: bool, length: int | None) -> None:
        ex.status = status
        stream = self.by_ex.get(ex)
        if stream is not None:
            if ex.upgrade and 200 <= status < 300:    # no tunnel took this extended CONNECT
                refuse_plain(self, stream, ex)
                return
            stream.head = response_head(status, block, ex.response_headers_extra)

    def send_data(self, ex: Exchange, data: bytes) -> None:
        stream = self.by_ex.get(ex)
        if stream is not None and data:
            stream.out.append(data)
            stream.out_bytes += len(data)

    def end_response(self, ex: Exchange, trailers: Headers | None) -> None:
        stream = self.by_ex.get(ex)
        if stream is not None:
            stream.end = True
            if trailers:
                stream.trailers = response_trailers(trailers)
            self._pump(stream)
            self._queue_write()
        self._finish(ex)

    def flush(self, ex: Exchange) -> None:
        """Once per upstream read: written now, so a slow client pauses the next read."""
        stream = self.by_ex.get(ex)
        if stream is not None:
            self._pump(stream)
            self.send_queued()
            if self._write_paused or stream.out_bytes > self.cfg.streamBufferBytes:
                self._pause_source(stream)

    def respond(self, ex: Exchange, status: int, body: bytes,
                headers: Headers | None = None) -> None:
        if ex.done:
            return
        if ex.status:                 # a response already started: only a reset is left
            self.abort(ex)
            return
        if ex.method == b"POST" and is_grpc_request(ex.headers):
            # A gRPC call learns the outcome as a gRPC status: one HEADERS frame
            # ending the stream (protocol/grpc.py); metrics count ``status``.
            self.start_response(ex, 200, local_answer(status, body, headers), False, None)
            ex.status = status
            self.end_response(ex, None)
            return
        fields = plain_headers(self.ctx.date, headers)
        bodiless = ex.method == b"HEAD" or status in (204, 304)
        self.start_response(ex, status, fields, not bodiless,
                            None if status in (204, 304) else len(body))
        if not bodiless:
            self.send_data(ex, body)
        self.end_response(ex, None)

    def abort(self, ex: Exchange) -> None:
        """The response cannot be completed: the client learns by a reset stream."""
        stream = self.by_ex.get(ex)
        if stream is not None:
            self._reset(stream, INTERNAL_ERROR)
        else:
            self._finish(ex)

    def pause_body(self, ex: Exchange) -> None:
        stream = self.by_ex.get(ex)
        if stream is not None:
            stream.body_paused = True

    def resume_body(self, ex: Exchange) -> None:
        ex.expect_continue = False         # no 100 Continue: the body is flow-controlled
        stream = self.by_ex.get(ex)
        if stream is None:
            return
        stream.body_paused = False
        if stream.unacked and not self._closing:
            self.conn.acknowledge_received_data(stream.unacked, stream.id)
            stream.unacked = 0
            self._queue_write()

    def switch_protocols(self, ex: Exchange, head: bytes
                         ) -> tuple[asyncio.Transport, bytes] | None:
        """The upstream accepted an extended CONNECT's handshake: see ``h2_tunnel.switch``."""
        return switch(self, ex, head)

    def set_response_source(self, ex: Exchange, source: ResponseSource | None) -> None:
        ex.source = source
        stream = self.by_ex.get(ex)
        if source is not None and stream is not None and (
                self._write_paused or stream.out_bytes > self.cfg.streamBufferBytes):
            stream.source_paused = True
            source.pause_producing()

    # -- sending -------------------------------------------------------------
    def _pump(self, stream: _Stream) -> None:
        """Send what the windows allow of the stream's head, data and end."""
        if self._closing or self.streams.get(stream.id) is not stream:
            return
        conn = self.conn
        sid = stream.id
        if stream.head is not None:
            head = stream.head
            stream.head = None
            conn.send_headers(sid, head, end_stream=stream.end and not stream.out
                              and stream.trailers is None)
            if stream.end and not stream.out and stream.trailers is None:
                self._sent(stream)
                return
        out = stream.out
        if out and not self._write_paused:
            window = min(conn.local_flow_control_window(sid), stream.out_bytes)
            frame = conn.max_outbound_frame_size
            while window > 0:
                data = out[0]
                size = min(len(data), window, frame)
                if size < len(data):
                    out[0] = data[size:]
                    data = data[:size]
                else:
                    out.pop(0)
                stream.out_bytes -= size
                window -= size
                last = stream.end and not out and stream.trailers is None
                conn.send_data(sid, data, end_stream=last)
                stream.progress = self.ctx.now
                if last:
                    self._sent(stream)
                    return
        if (stream.source_paused and not self._write_paused
                and stream.out_bytes <= self.cfg.streamBufferBytes // 2):
            stream.source_paused = False
            source = stream.ex.source
            if source is not None:
                source.resume_producing()
        if stream.end and not out:
            if stream.trailers is not None:
                conn.send_headers(sid, stream.trailers, end_stream=True)
            else:
                conn.end_stream(sid)
            self._sent(stream)

    def _sent(self, stream: _Stream) -> None:
        """The response went out whole; a request body still coming is not wanted."""
        tunnel = stream.tunnel
        if tunnel is not None and tunnel.on_sent():
            return                         # a half-closed tunnel: the client may still send
        del self.streams[stream.id]
        self.by_ex.pop(stream.ex, None)
        ex = stream.ex
        if not ex.body_done:
            ex.body_done = True
            self.conn.reset_stream(stream.id, NO_ERROR)   # RFC 9113 8.1
        self._give_back(stream)
        if not self.streams:
            self._idle_since = self.ctx.now
            if self._goaway_at >= 0:
                self._close()

    def _give_back(self, stream: _Stream) -> None:
        """Request DATA the stream never acknowledged (buffered before a refusal, read
        while paused) return to the connection window, which would shrink for good."""
        if stream.unacked and not self._closing:
            self.conn.acknowledge_received_data(stream.unacked, stream.id)
            stream.unacked = 0
            self._queue_write()

    def _pause_source(self, stream: _Stream) -> None:
        source = stream.ex.source
        if source is not None and not stream.source_paused:
            stream.source_paused = True
            source.pause_producing()

    def _window(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._pump(stream)
            return
        for stream in list(self.streams.values()):
            self._pump(stream)

    def _queue_write(self) -> None:
        if not self._queued:
            self._queued = True
            self.ctx.batch.add(self)

    def send_queued(self) -> None:
        self._queued = False
        transport = self.transport
        if self._closing or transport is None:
            return
        data = self.conn.data_to_send()
        if data:
            transport.write(data)
            if self._write_paused and transport.get_write_buffer_size() > MAX_UNSENT:
                self._calm()             # the peer asks for acks but reads nothing

    # -- exchange end, errors ----------------------------------------------
    def _finish(self, ex: Exchange) -> None:
        if ex.done:
            return
        ex.done = True
        ex.source = None
        self.ctx.metrics.observe(ex, self._clock())
        if ex.on_done is not None:
            ex.on_done(ex)

    def _reset(self, stream: _Stream, code: int) -> None:
        if self.streams.pop(stream.id, None) is not None and not self._closing:
            self.conn.reset_stream(stream.id, code)
            self._queue_write()
            if not self.streams:
                self._idle_since = self.ctx.now
                if self._goaway_at >= 0:
                    self._close()
        self._abandon(stream)

    def _calm(self) -> None:
        """Abuse: GOAWAY ENHANCE_YOUR_CALM, and the connection ends."""
        if not self._closing:
            log.info("HTTP/2 client %s over a limit: GOAWAY ENHANCE_YOUR_CALM", self.peer)
        self._close_with(_CALM)

    def _close_with(self, code: int) -> None:
        if self._closing or self.transport is None:
            return
        self.transport.write(goaway(self.conn.highest_inbound_stream_id, code))
        self._closing = True
        self.transport.close()

    def _close(self) -> None:
        if self._closing:
            return
        transport = self.transport
        if transport is not None:
            data = self.conn.data_to_send()
            if data:
                transport.write(data)
            transport.close()
        self._closing = True

    def drain(self) -> None:
        """Graceful stop: GOAWAY; streams taken finish, then the connection closes."""
        if self._goaway_at >= 0 or self._closing or self.transport is None:
            return
        self._goaway_at = self.conn.highest_inbound_stream_id
        self.transport.write(self.conn.data_to_send() + goaway(self._goaway_at))
        if not self.streams:
            self._close()

    # -- timeout sweep -----------------------------------------------------
    def tick(self, now: float, head_timeout: float, idle_timeout: float) -> None:
        if now - self._window_start >= 1.0:
            self._window_start = now
            self.budget.new_window()
        if pending_header_bytes(self.conn):
            if not self._head_since:
                self._head_since = now
            elif now - self._head_since >= head_timeout:
                self._calm()
            return
        self._head_since = 0.0
        if not self.streams:
            if now - self._idle_since >= (idle_timeout if self.nreq else head_timeout):
                self.drain()
            return
        timeout = self.ctx.body_timeout
        if not timeout:
            return
        for stream in list(self.streams.values()):
            if now - stream.progress < timeout:
                continue
            ex = stream.ex
            reading = not ex.body_done and ex.body_sink is not None and not stream.body_paused
            if reading and not ex.status:
                if ex.source is not None:
                    ex.source.abort()
                    ex.source = None
                if ex.body_sink is not None:
                    ex.body_sink.body_abort()
                    ex.body_sink = None
                ex.body_done = True
                self.respond(ex, 408, b"Request Timeout: request body too slow\n")
            elif reading or stream.out:    # a body that stopped, a window never opened
                self._reset(stream, CANCEL)
        self._queue_write()
