"""WebSocket over HTTP/2 (RFC 8441): one extended CONNECT stream as a tunnel's client side.

Theory of operation
-------------------
``H2Server`` advertises SETTINGS_ENABLE_CONNECT_PROTOCOL when some route's
proxy tunnels WebSocket (``Snapshot.websocket``; always on a sidecar's
outbound port). A stream opened with ``:method CONNECT`` and ``:protocol
websocket`` becomes the request an HTTP/1.1 handshake is (``h2_head``: a
bodiless GET of ``:path`` with a fresh ``Sec-WebSocket-Key``), marked
``ex.upgrade``, and gets an ``H2Tunnel``. The route's pipeline runs on it
unchanged, so auth, rate limits, CORS and conditions refuse it with their
statuses on the stream, and a proxy action that allows WebSocket sends the
HTTP/1.1 handshake upstream (``UpgradeClient``), exactly as for an HTTP/1.1
client.

Until the upstream answers, the stream's DATA are held here unacknowledged,
so the client can send no more than its stream window before the tunnel
exists, and none of it reaches the upstream unless the handshake succeeds.
A valid 101 calls ``switch`` (the codec's ``switch_protocols``): the stream
answers ``:status 200`` with the 101's headers (``Sec-WebSocket-Protocol``,
``-Extensions``, policy headers; ``Sec-WebSocket-Accept`` is not used by RFC
8441), the exchange ends (counted with status 200), and the ``H2Tunnel`` is
handed to ``tunnel.Tunnel`` as the client's transport. From then on:

* upstream bytes are ``write``: DATA within the client's windows; past
  ``streamBufferBytes`` held (or while the connection cannot write) the
  tunnel's ``pause_writing`` stops reading the upstream, as a TCP client's
  full socket would (the ``H2Tunnel`` is the stream's ``ResponseSource``,
  so the codec pauses and resumes it like any response);
* client DATA go to the tunnel as ``data_received`` and are acknowledged
  (WINDOW_UPDATE) while it reads; ``pause_reading`` leaves them
  unacknowledged, so the client's window closes;
* END_STREAM from the client is ``eof_received`` (the upstream gets a
  half-close), ``write_eof`` is our END_STREAM; the stream stays open for the
  client's remaining DATA until it ends too;
* RST_STREAM from the client, or the connection's loss, is
  ``connection_lost``; the tunnel closing (upstream gone, ``idleTimeout``, a
  reload) ends our side with END_STREAM and, if the client is still
  sending, RST_STREAM NO_ERROR (RFC 9113 8.1).

A stream whose exchange ends without a tunnel (a policy refused it, the
upstream answered something other than 101) is answered as usual, then
reset with NO_ERROR if the client is still sending. A 2xx answer on such a
stream would tell the client its tunnel is open: it is turned into 501
(``refuse_plain``) -- a route that does not tunnel WebSocket served it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from meshgate.protocol.h1_response import plain_headers
from meshgate.protocol.h2_conn import NO_ERROR
from meshgate.protocol.h2_head import response_head
from meshgate.protocol.hop import render_block

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange
    from meshgate.protocol.h2_server import H2Server, _Stream

NOT_TUNNELLED: Final = b"Not Implemented: WebSocket is not enabled on this route\n"
# RFC 8441 does not use the accept; a 2xx to CONNECT has no length (RFC 9110 9.3.6).
_NOT_ON_THE_200: Final = frozenset({b"sec-websocket-accept", b"content-length"})


class H2Tunnel(asyncio.Transport):
    """The client half of a WebSocket tunnel: one HTTP/2 stream, seen as a transport."""

    def __init__(self, server: H2Server, stream: _Stream) -> None:
        super().__init__()
        self.server = server
        self.stream = stream
        self.protocol: Any = None        # the Tunnel's client side, once switched
        self.held: list[bytes] = []      # DATA that came before the 101
        self.reading = False             # acknowledge DATA as they come (set by the Tunnel)
        self.client_ended = False        # END_STREAM from the client
        self.eof_passed = False          # ... told to the tunnel
        self.ended = False               # our END_STREAM is owed or sent
        self.closed = False

    # -- from the codec ----------------------------------------------------------
    def on_data(self, data: bytes, size: int) -> None:
        stream = self.stream
        server = self.server
        stream.progress = server.ctx.now
        if self.closed or self.client_ended:
            if size:
                server.conn.acknowledge_received_data(size, stream.id)
            return
        if self.reading:
            if size:
                server.conn.acknowledge_received_data(size, stream.id)
        else:
            stream.unacked += size
        if self.protocol is None:
            if data:
                self.held.append(data)
        elif data:
            self.protocol.data_received(data)

    def on_end(self) -> None:
        self.client_ended = True
        self._pass_eof()

    def on_sent(self) -> bool:
        """Our END_STREAM went out; True keeps the stream for the client's remaining DATA."""
        if self.protocol is not None and not self.closed and not self.client_ended:
            return True
        if not self.client_ended:
            self.client_ended = True
            self.server.conn.reset_stream(self.stream.id, NO_ERROR)
        return False

    def lost(self) -> None:
        """The stream was reset, by either side, or the connection is gone."""
        if self.closed:
            return
        self.closed = True
        self.held = []
        if self.protocol is not None:
            self.protocol.connection_lost(None)

    def _pass_eof(self) -> None:
        protocol = self.protocol
        if protocol is None or self.eof_passed or self.closed or not self.client_ended:
            return
        self.eof_passed = True
        if not protocol.eof_received():
            self.close()

    # -- asyncio.Transport, for the Tunnel -------------------------------------------
    def write(self, data: bytes) -> None:  # type: ignore[override]
        if self.closed or self.ended or not data:
            return
        server = self.server
        stream = self.stream
        stream.out.append(data)
        stream.out_bytes += len(data)
        server._pump(stream)
        server._queue_write()
        if server._write_paused or stream.out_bytes > server.cfg.streamBufferBytes:
            server._pause_source(stream)

    def write_eof(self) -> None:
        if self.closed or self.ended:
            return
        self.ended = True
        self.stream.end = True
        self.server._pump(self.stream)
        self.server._queue_write()

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        stream = self.stream
        server = self.server
        if not self.reading and not self.closed:
            self.reading = True
            if stream.unacked and not server._closing:
                server.conn.acknowledge_received_data(stream.unacked, stream.id)
                stream.unacked = 0
                server._queue_write()
        self._pass_eof()

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        """The tunnel ended: our side ends (after what is queued), the client's is reset."""
        if self.closed:
            return
        self.closed = True
        server = self.server
        stream = self.stream
        if server._closing or server.streams.get(stream.id) is not stream:
            return
        if not self.ended:
            self.ended = True
            stream.end = True
            server._pump(stream)         # END_STREAM now, or once the window takes the rest
        elif not stream.out:
            server._sent(stream)         # END_STREAM was sent; on_sent resets a sending client
        server._queue_write()

    def abort(self) -> None:
        """As the codec's ResponseSource: the stream is being given up."""
        self.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self.server.transport
        return default if transport is None else transport.get_extra_info(name, default)

    # -- ResponseSource: the codec's flow control of the stream ---------------------------
    def pause_producing(self) -> None:
        if self.protocol is not None and not self.closed:
            self.protocol.pause_writing()

    def resume_producing(self) -> None:
        if self.protocol is not None and not self.closed:
            self.protocol.resume_writing()


def switch(server: H2Server, ex: Exchange, head: bytes
           ) -> tuple[asyncio.Transport, bytes] | None:
    """The upstream's 101 (``head``): the stream answers 200 and becomes the tunnel's transport."""
    stream = server.by_ex.get(ex)
    if stream is None or server._closing or ex.done or stream.tunnel is None:
        return None
    tunnel = stream.tunnel
    block = head[head.find(b"\r\n") + 2:]
    stream.head = [item for item in response_head(200, block, None)
                   if item[0] not in _NOT_ON_THE_200]
    ex.status = 200
    ex.done = True
    server.by_ex.pop(ex, None)
    server.ctx.metrics.observe(ex, server._clock())
    if ex.on_done is not None:
        ex.on_done(ex)
    ex.source = tunnel                   # paused and resumed by the codec's flow control
    stream.source_paused = False
    server._pump(stream)
    server._queue_write()
    held = b"".join(tunnel.held)
    tunnel.held = []
    return tunnel, held


def refuse_plain(server: H2Server, stream: _Stream, ex: Exchange) -> None:
    """A 2xx for an extended CONNECT that no tunnel took: 501 instead (see the module doc).

    The response's producer goes on into nothing: the exchange is no longer
    the stream's, so its data and end are ignored.
    """
    server.by_ex.pop(ex, None)
    block = render_block(plain_headers(server.ctx.date, None), len(NOT_TUNNELLED))
    stream.head = response_head(501, block, ex.response_headers_extra)
    stream.out = [NOT_TUNNELLED]
    stream.out_bytes = len(NOT_TUNNELLED)
    stream.end = True
    ex.status = 501
    server._finish(ex)
    server._pump(stream)
    server._queue_write()
