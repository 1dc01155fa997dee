"""One proxied Exchange as a stream of an HTTP/2 upstream connection.

``request_headers`` turns the HTTP/1.1 request head the proxy built
(``Forward.head``) into pseudo-headers and a header list without the
connection-specific fields (RFC 9113 8.2.2); HTTP/2 frames the body itself,
so nothing in that list can change where the request ends.

An ``H2Stream`` is the Exchange's body sink (the request body goes out as
the peer's windows allow; while anything waits, the client's reading is
paused through the Exchange), its response source (a slow client stops the
stream's window credit, ``pause_producing``) and, while in flight, an entry
of ``ctx.upstream_conns`` whose ``deadline`` the worker's sweep enforces.
See ``h2_client`` for the connection around it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from meshgate.protocol.grpc import status_in
from meshgate.protocol.h1_head import FORBIDDEN_TRAILERS
from meshgate.protocol.http1_client import upstream_failed, wants_trailers

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers
    from meshgate.protocol.h2_client import H2Connection

# Never sent in an HTTP/2 request (RFC 9113 8.2.2); TE is sent only as "trailers".
_CONNECTION_SPECIFIC: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
    b"te", b"host", b"http2-settings",
})
# Sent as "never indexed" literals (the connection's encoder keeps no dynamic
# table at all): the next hop must not index them either, or one client could
# probe another's secrets through its table (RFC 7541 7.1.3).
NEVER_INDEXED: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie",
                                   b"eg-request-id"})
_NOT_RELAYED: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade", b"te", b"trailer"})
_KEEP_BODY: Final = 65536       # a body up to this is kept to resend an unprocessed stream


def request_headers(head: bytes, scheme: bytes, ex: Exchange) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header list of an HTTP/1.1 request head built by the proxy."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    path = rest.rpartition(b" ")[0]
    authority = b""
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        value = value.strip()
        if name == b"host":
            authority = value
        elif name not in _CONNECTION_SPECIFIC:
            fields.append((name, value))
    for name, value in ex.headers:           # gRPC and friends ask for trailers
        if name == b"te" and b"trailers" in value.lower():
            fields.append((b"te", b"trailers"))
            break
    return [(b":method", method), (b":scheme", scheme), (b":authority", authority),
            (b":path", path), *fields]


class H2Stream:
    """One Exchange on an HTTP/2 connection: body sink, response source, deadline."""

    __slots__ = ("blocked", "chunked", "conn", "deadline", "end_out", "ex", "head", "kept",
                 "kept_size", "out", "paused", "resends", "started", "stream_id", "timeout",
                 "trailers", "trailers_out", "unacked")

    def __init__(self, conn: H2Connection, ex: Exchange, head: bytes, chunked: bool,
                 timeout: float, resends: int) -> None:
        self.conn = conn
        self.ex: Exchange | None = ex
        self.head = head                 # kept to send it again elsewhere
        self.chunked = chunked
        self.timeout = timeout
        self.deadline = 0.0
        self.stream_id = 0
        self.started = False             # the response head went to the client
        self.out: list[bytes] = []       # request body the peer's window has no room for
        self.end_out = False             # ... and its end, once sent
        self.trailers_out: Headers | None = None
        self.blocked = False             # we paused the client's body
        self.paused = False              # the client reads slowly: hold the window
        self.unacked = 0                 # response bytes not yet credited to the stream
        self.trailers: Headers | None = None
        # Without a Call, a short body is kept to send an unprocessed stream again.
        self.kept: list[bytes] | None = [] if ex.retry is None else None
        self.kept_size = 0
        self.resends = resends           # times this request was sent again, unprocessed

    # -- BodySink: the request body ------------------------------------------
    def body_data(self, data: bytes) -> None:
        if self.ex is None:
            return
        kept = self.kept
        if kept is not None:
            kept.append(data)
            self.kept_size += len(data)
            if self.kept_size > _KEEP_BODY:
                self.kept = None
        self.out.append(data)
        self._push()

    def body_end(self, trailers: Headers | None) -> None:
        if self.ex is None:
            return
        self.end_out = True
        self.trailers_out = trailers
        self._push()

    def body_abort(self) -> None:
        self.abort()

    def _push(self) -> None:
        """Send what the windows allow; pause the client while anything waits."""
        self.conn.send_body(self)    # a stream gone meanwhile: its reset or the close reports
        ex = self.ex
        if ex is None:
            return
        if self.out and not self.blocked:
            self.blocked = True
            ex.responder.pause_body(ex)
        elif not self.out and self.blocked:
            self.blocked = False
            ex.responder.resume_body(ex)

    # -- ResponseSource --------------------------------------------------------
    def pause_producing(self) -> None:
        self.paused = True

    def resume_producing(self) -> None:
        self.paused = False
        if self.unacked:
            self.conn.credit(self, self.unacked)

    def abort(self) -> None:
        """The client is gone, or a Call discards the response: cancel the stream only."""
        if self.ex is not None:
            self.ex = None
            self.conn.cancel(self)

    def expire(self) -> None:
        """Called by the worker's sweep once ``deadline`` has passed."""
        ex = self.ex
        self.abort()
        if ex is not None:
            upstream_failed(ex, self, "timeout", 504, b"Gateway Timeout\n")

    # -- what the connection reports ------------------------------------------
    def on_head(self, headers: Headers, ended: bool) -> None:
        """The response head; ``ended``: it ends the stream (a trailers-only gRPC answer)."""
        ex = self.ex
        if ex is None:
            return
        if ended:
            ex.grpc_status = status_in(headers)
        status = 0
        block: list[bytes] = []
        length: int | None = None
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif name == b"content-length":
                length = int(value)
            elif name[:1] != b":" and name not in _NOT_RELAYED:
                block.append(b"%s: %s\r\n" % (name, value))
        owner = self.conn.owner
        owner.responses += 1
        if status >= 500:
            owner.errors += 1
        call = ex.retry
        if call is not None and call.response(self, status):
            return                       # discarded (and cancelled): the Call retries
        self.started = True
        self.kept = None
        has_body = ex.method != b"HEAD" and status != 204 and status != 304
        if has_body and ex.http_version != b"2" and wants_trailers(ex):
            length = None                # chunked, so that trailers can follow
        elif length is not None and status != 204:
            block.append(b"content-length: %d\r\n" % length)
        if status == 204:
            length = None
        ex.responder.start_response_raw(ex, status, b"".join(block), has_body, length)

    def on_data(self, data: bytes, size: int) -> None:
        ex = self.ex
        if ex is not None and self.started:
            ex.responder.send_data(ex, data)
        self.unacked += size
        if not self.paused:
            self.conn.credit(self, 0)

    def on_trailers(self, headers: Headers) -> None:
        self.trailers = trailers = [(n, v) for n, v in headers
                                    if n[:1] != b":" and n not in FORBIDDEN_TRAILERS]
        ex = self.ex
        if ex is not None:
            ex.grpc_status = status_in(trailers)

    def on_end(self) -> None:
        ex = self.ex
        self.ex = None
        if ex is None or ex.done:
            return
        if not self.started:             # END_STREAM without a final response head
            upstream_failed(ex, self, "protocol", 502, b"Bad Gateway: no response head\n")
            return
        trailers = self.trailers if self.trailers and wants_trailers(ex) else None
        ex.responder.end_response(ex, trailers)

    def on_reset(self, refused: bool) -> None:
        """RST_STREAM from the peer, or the connection ended under this stream."""
        ex = self.ex
        self.ex = None
        if ex is None or ex.done:
            return
        if self.started:
            ex.responder.abort(ex)
        elif refused:
            self.ex = ex
            self.conn.owner.unprocessed(self)
        else:
            upstream_failed(ex, self, "reset", 502, b"Bad Gateway: upstream stream reset\n")
