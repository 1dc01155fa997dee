"""HTTP/2 upstream codec: one connection to one endpoint, many streams.

Theory of operation
-------------------
``H2Connection`` is the asyncio Protocol of one upstream connection, driving
the client side of our own frame layer (``h2_client_conn``). Each proxied
Exchange becomes an ``H2Stream``: its request head is the HTTP/1.1 head the
proxy built (``Forward.head``), turned into pseudo-headers and a header list
without the connection-specific fields (``request_headers``); framing is
HTTP/2's own, so nothing in that list can change where the request ends.

A GOAWAY leaves the frame layer's state open, so the streams it lets
finish (up to its last stream id) do.

The connection's life is one state machine (``_TRANSITIONS``):
CONNECTING (preface sent, the peer's SETTINGS not seen yet) -> READY
(streams may open, up to the lower of our ``maxConcurrentStreams`` and the
peer's) -> DRAINING (a GOAWAY came or we sent one: no new streams, those in
flight finish) -> CLOSED. A protocol error, or a connection the peer closed,
goes straight to CLOSED. The pool opens streams only on a READY connection
(``has_room``) and learns of every change through the ``H2Owner`` callbacks,
so this codec never imports a pool.

Flow control, both ways:

* request body: a stream writes what the peer's windows allow and keeps the
  rest; while it keeps anything, the client's reading is paused through the
  Exchange (``pause_body``), and a WINDOW_UPDATE sends more and resumes it;
* response body: DATA goes to the Exchange's responder as it comes. The
  connection window is credited at once (a slow client must not stall the
  other streams); a stream's window only while its client keeps up -- when
  the responder pauses the stream (``pause_producing``) its window is left to
  run out, which stops that stream's sender and nothing else.

Endings: a response ends with END_STREAM (trailers, if any, relayed when the
client can take them: an HTTP/2 client, or an HTTP/1.1 one that sent ``TE:
trailers`` -- its response is then chunked). RST_STREAM or a lost connection
before the response head is a 502 the ``Call`` may retry as ``reset``; a
stream the peer did not process (REFUSED_STREAM, or above a GOAWAY's last
stream id) is handed back to the pool, which sends it again elsewhere
(``H2Owner.unprocessed``). After the head, such an ending aborts the client's
response. The response deadline is the worker's sweep, as for HTTP/1.1:
streams in flight sit in ``ctx.upstream_conns``.

Cancelling a stream (the client went away, a deadline, a ``Call`` retrying)
sends RST_STREAM CANCEL, at most ``RESETS_PER_SECOND`` a second per
connection: a proxy multiplexing many clients must not look like a rapid
reset attack, for which a server closes the connection and every innocent
stream on it. Beyond the budget a cancelled stream stays open, its response
read and dropped, until it ends or a later second's budget resets it
(``tick``, from the pool's sweep); it keeps its slot meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, Protocol

from meshgate.protocol.h2_client_conn import (
    ClientConnection,
    NoAvailableStreamIDError,
    ResponseReceived,
)
from meshgate.protocol.h2_conn import (
    CANCEL,
    REFUSED_STREAM,
    ConnectionTerminated,
    DataReceived,
    ProtocolError,
    RemoteSettingsChanged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from meshgate.protocol.h2_stream import NEVER_INDEXED, H2Stream, request_headers
from meshgate.protocol.http1_client import upstream_failed

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange
    from meshgate.server.context import WorkerContext

log = logging.getLogger("meshgate.upstream.h2")

CONNECTING, READY, DRAINING, CLOSED = "connecting", "ready", "draining", "closed"
# RST_STREAMs one connection sends per second. Servers defend against rapid
# reset (CVE-2023-44487) by closing a connection that resets too many streams
# -- meshgate at server.http2.maxResetsPerSecond, 200 by default -- which would
# fail every other stream on it; half of that holds even when our second and
# theirs do not line up.
RESETS_PER_SECOND: Final = 100
_TRANSITIONS: Final = {
    CONNECTING: {READY, DRAINING, CLOSED},
    READY: {DRAINING, CLOSED},
    DRAINING: {CLOSED},
    CLOSED: set(),
}


class H2Owner(Protocol):
    """What a connection tells its pool (``upstream/h2_pool.py``)."""

    ctx: WorkerContext
    responses: int
    errors: int

    def room(self, conn: H2Connection) -> None: ...

    def gone(self, conn: H2Connection) -> None: ...

    def unprocessed(self, stream: H2Stream) -> None: ...


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to an endpoint (see the module docstring)."""

    def __init__(self, owner: H2Owner, max_streams: int, stream_window: int,
                 connection_window: int) -> None:
        self.owner = owner
        self.state = CONNECTING
        self.transport: asyncio.Transport | None = None
        # Request headers are ours (request_headers: lower-case names, no
        # connection-specific fields, trimmed values) and go out unchecked;
        # the response's are checked by the frame layer.
        self.h2 = ClientConnection(max_streams, stream_window,
                                     never_indexed=NEVER_INDEXED)
        self.our_max = max_streams
        self.max_streams = 1              # until the peer's SETTINGS say more
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.alpn_refused = False         # TLS without "h2" where it was required
        self.streams: dict[int, H2Stream] = {}
        self.idle_since = owner.ctx.now
        self.conn_unacked = 0
        self._queued = False
        self.resets = 0                   # RST_STREAMs sent since reset_second
        self.reset_second = 0.0
        # Cancelled beyond the budget: open, their responses read and dropped,
        # until they end or ``tick`` has room to reset them.
        self.deferred: list[H2Stream] = []
        # Resolved once the peer's SETTINGS arrived (READY) or the connection ended.
        self.ready: asyncio.Future[None] = owner.ctx.loop.create_future()

    # -- the state machine ---------------------------------------------------------
    def _to(self, state: str) -> None:
        if state not in _TRANSITIONS[self.state]:
            return                         # e.g. a GOAWAY while already closed
        self.state = state
        if not self.ready.done():
            self.ready.set_result(None)
        if state == CLOSED:
            self.deferred.clear()
            self.owner.gone(self)
            if self.transport is not None:
                self.transport.close()

    def has_room(self) -> bool:
        return self.state == READY and len(self.streams) < self.max_streams

    # -- streams -------------------------------------------------------------------
    def open_stream(self, ex: Exchange, head: bytes, chunked: bool, timeout: float,
                    scheme: bytes, resends: int) -> None:
        stream = H2Stream(self, ex, head, chunked, timeout, resends)
        try:
            sid = self.h2.get_next_available_stream_id()
        except NoAvailableStreamIDError:
            self.close()                    # stream ids used up: new connections take over
            upstream_failed(ex, None, "reset", 502, b"Bad Gateway: upstream stream ids used up\n")
            return
        self.h2.send_headers(sid, request_headers(head, scheme, ex),
                             end_stream=not ex.body_expected)
        stream.stream_id = sid
        self.streams[sid] = stream
        ctx = self.owner.ctx
        if timeout:
            call = ex.retry
            stream.deadline = (ex.started if call is None else call.sent) + timeout
            ctx.upstream_conns.add(stream)
        ex.source = stream
        self.flush_soon()
        if ex.body_expected:
            call = ex.retry
            (ex if call is None else call).attach_body_sink(stream)

    def send_body(self, stream: H2Stream) -> None:
        """Write as much of the stream's pending body as the windows allow."""
        if self.state == CLOSED:
            return                          # the stream learns from connection_lost
        conn = self.h2
        sid = stream.stream_id
        out = stream.out
        while out:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room <= 0:
                break
            data = out[0]
            if len(data) > room:
                out[0] = data[room:]
                data = data[:room]
            else:
                out.pop(0)
            conn.send_data(sid, data)
        if not out and stream.end_out:
            stream.end_out = False
            if stream.trailers_out:
                conn.send_headers(sid, stream.trailers_out, end_stream=True)
            else:
                conn.end_stream(sid)
        self.flush_soon()

    def credit(self, stream: H2Stream, extra: int) -> None:
        """Give the stream's window back once half of it is used (or at once: ``extra``)."""
        if stream.unacked >= self.stream_window // 2 or (extra and stream.unacked):
            n, stream.unacked = stream.unacked, 0
            if stream.stream_id in self.streams:
                self.h2.increment_flow_control_window(n, stream.stream_id)
                self.flush_soon()

    def cancel(self, stream: H2Stream) -> None:
        """Reset the stream, or, over ``RESETS_PER_SECOND``, leave it to ``tick``."""
        if self.state != CLOSED and stream.stream_id in self.streams \
                and not self._reset_allowed(self.owner.ctx.now):
            self.owner.ctx.upstream_conns.discard(stream)
            self.deferred.append(stream)
            return
        self._reset(stream)

    def _reset_allowed(self, now: float) -> bool:
        if now - self.reset_second >= 1.0:
            self.reset_second = now
            self.resets = 0
        return self.resets < RESETS_PER_SECOND

    def _reset(self, stream: H2Stream) -> None:
        if self._forget(stream) and self.state != CLOSED:
            self.resets += 1
            self.h2.reset_stream(stream.stream_id, CANCEL)
            self.flush_soon()

    def tick(self, now: float) -> None:
        """The pool's sweep: reset the deferred streams the budget allows now."""
        deferred = self.deferred
        while deferred and self._reset_allowed(now):
            stream = deferred.pop(0)
            if self.streams.get(stream.stream_id) is stream:       # not ended meanwhile
                self._reset(stream)

    def _forget(self, stream: H2Stream) -> bool:
        if self.streams.pop(stream.stream_id, None) is None:
            return False
        self.owner.ctx.upstream_conns.discard(stream)
        if not self.streams:
            self.idle_since = self.owner.ctx.now
            if self.state == DRAINING:
                self._to(CLOSED)
                return True
        if self.state == READY:
            self.owner.room(self)
        return True

    # -- writing ---------------------------------------------------------------------
    def flush_soon(self) -> None:
        """Frames leave with the rest of this pass's writes (one write per connection)."""
        if not self._queued:
            self._queued = True
            self.owner.ctx.batch.add(self)

    def send_queued(self) -> None:
        self._queued = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and self.state != CLOSED:
            self.transport.write(data)

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            self.alpn_refused = True       # the pool decides: HTTP/1.1, or a failure
            return
        self.h2.initiate_connection()
        extra = self.connection_window - 65535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        self.send_queued()

    def connection_lost(self, exc: Exception | None) -> None:
        self._to(CLOSED)
        self._end_all(refused=False)

    def pause_writing(self) -> None:
        for stream in list(self.streams.values()):
            ex = stream.ex
            if ex is not None and ex.body_expected and not ex.body_done:
                ex.responder.pause_body(ex)

    def resume_writing(self) -> None:
        for stream in list(self.streams.values()):
            ex = stream.ex
            if ex is not None and not ex.done and not stream.blocked:
                ex.responder.resume_body(ex)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            log.info("HTTP/2 protocol error from upstream: %s", exc)
            self.send_queued()             # the frame layer queued a GOAWAY naming the error
            self._fail_all()
            return
        touched: list[H2Stream] = []
        for event in events:
            self._event(event, touched)
        for stream in touched:
            ex = stream.ex
            if ex is not None:
                ex.responder.flush(ex)
                if stream.deadline:
                    stream.deadline = self.owner.ctx.now + stream.timeout
        self.send_queued()

    def _event(self, event: object, touched: list[H2Stream]) -> None:
        if isinstance(event, DataReceived):
            self.conn_unacked += event.flow_controlled_length
            if self.conn_unacked >= self.connection_window // 2:
                self.h2.increment_flow_control_window(self.conn_unacked)
                self.conn_unacked = 0
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_data(event.data, event.flow_controlled_length)
                touched.append(stream)
        elif isinstance(event, ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_head(event.headers, event.stream_ended is not None)
                touched.append(stream)
        elif isinstance(event, TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_trailers(event.headers)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_end()
                self._forget(stream)
            # A response may end before its request body (RFC 9113 8.1); the
            # body goes no further, so our side ends too, or the stream would
            # hold one of the server's concurrent-stream slots for good.
            self.h2.end_stream(event.stream_id)
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._forget(stream)
                stream.on_reset(event.error_code == REFUSED_STREAM)
        elif isinstance(event, WindowUpdated):
            self._push_waiting(event.stream_id)
        elif isinstance(event, RemoteSettingsChanged):
            self.max_streams = min(self.our_max, self.h2.peer_max_streams)
            if self.state == CONNECTING:
                self._to(READY)
            if self.state == READY:
                self.owner.room(self)
            self._push_waiting(0)           # a larger initial window may free bodies
        elif isinstance(event, ConnectionTerminated):
            self._goaway(event.last_stream_id, event.error_code)

    def _push_waiting(self, sid: int) -> None:
        """Send the bodies that waited for window: stream ``sid``'s, or all (0)."""
        if sid:
            stream = self.streams.get(sid)
            waiting = [] if stream is None else [stream]
        else:
            waiting = list(self.streams.values())
        for stream in waiting:
            if stream.out or stream.end_out:
                stream._push()

    def _goaway(self, last_stream_id: int, code: int) -> None:
        """No new streams; those the peer never processed go elsewhere."""
        if code:
            log.info("upstream sent GOAWAY with error code %d", code)
        self._to(DRAINING)
        for sid in [s for s in self.streams if s > last_stream_id]:
            stream = self.streams[sid]
            self._forget(stream)
            stream.on_reset(refused=True)
        if not self.streams:
            self._to(CLOSED)

    def _fail_all(self) -> None:
        self._to(CLOSED)
        self._end_all(refused=False)

    def _end_all(self, refused: bool) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        ctx = self.owner.ctx
        for stream in streams:
            ctx.upstream_conns.discard(stream)
            stream.on_reset(refused)

    def close(self) -> None:
        """Close when idle; with streams in flight, a GOAWAY first and close after them."""
        if self.state == CLOSED:
            return
        if self.streams and self.transport is not None:
            self.h2.close_connection()
            self.send_queued()
            self._to(DRAINING)
        else:
            self._to(CLOSED)
