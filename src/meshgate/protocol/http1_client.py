"""HTTP/1.1 upstream codec: one pooled connection to one endpoint.

Theory of operation
-------------------
``start(ex, head)`` writes a request head and, if a body follows, attaches
itself as the Exchange's body sink: request body bytes are written as they
arrive (re-chunked when the client sent them chunked). The response is parsed
with httptools and handed to the Exchange's responder as it comes; after each
read the responder is flushed once, so head and body of a small response
leave together.

Whether the connection may be reused is decided in one place,
``_settle``, after the parser has consumed a whole read: only when the
request was sent completely (``_req_done``), the response ended
(``_resp_done``), the upstream allows keep-alive, and not one byte followed
the response. A byte after the response starts a new message in the parser
(``on_message_begin`` with ``_resp_done`` set): the connection is closed,
because those bytes would otherwise become the next request's response
(response desync). Any error, timeout, unfinished body or abort closes it
too. The pool hands a reusable connection to a waiting request from the event
loop (``Pool.release``), never from inside a parser callback.

A reused connection that the upstream closed before any byte of the
response arrived is retried once on a fresh one when nothing of the request
body was sent yet (the keep-alive race every proxy meets).

Response trailers (after a chunked body) are relayed when the client can
take them: an HTTP/2 client, or an HTTP/1.1 one that sent ``TE: trailers``.
Reading them needs httptools' per-field callback, which costs every
response's head a Python call per field; so the connection's parser has
none, and a chunked response whose client wants trailers is read again
from its first byte by a parser that reports fields (``_TrailerTap``),
kept until the connection goes back to its pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import httptools

from meshgate.protocol.exchange import Exchange, Headers
from meshgate.protocol.grpc import status_in
from meshgate.protocol.h1_head import FORBIDDEN_TRAILERS
from meshgate.protocol.hop import filter_block

if TYPE_CHECKING:
    from meshgate.upstream.api import Attempt
    from meshgate.upstream.pool import Pool

log = logging.getLogger("meshgate.upstream")


_MAX_TRAILERS: Final = 100


class _HeadResponseDone(Exception):
    """Raised from a callback to stop parsing after a HEAD response's head."""


class _BytesAfterResponse(Exception):
    """Raised when the upstream sends more than the response it was asked for."""


class _ReadTrailers(Exception):
    """Raised from a chunked response's head to read it again with a ``_TrailerTap``."""


def wants_trailers(ex: Exchange) -> bool:
    """Whether the client takes response trailers: HTTP/2, or ``TE: trailers``."""
    if ex.http_version == b"2":
        return True
    return any(n == b"te" and b"trailers" in v.lower() for n, v in ex.headers)


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_closed",
        "_got_bytes",
        "_head_out",
        "_interim",
        "_req_chunked",
        "_req_done",
        "_resp_chunked",
        "_resp_done",
        "_resp_length",
        "_resp_started",
        "_reusable",
        "_rx",
        "_rx_pos",
        "_tapped",
        "_trailers",
        "deadline",
        "ex",
        "forgotten",
        "head",
        "idle_since",
        "parser",
        "pool",
        "reused",
        "timeout",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.head = b""
        self.reused = False
        self.deadline = 0.0
        self.idle_since = 0.0
        self._rx: list[bytes] = []      # bytes of the response head, until it is complete
        self._rx_pos = 0                # where the current head starts in them
        self._req_chunked = False
        self._req_done = True
        self._resp_started = False
        self._resp_done = False         # the response to the current request has ended
        self._reusable = False          # ... cleanly: _settle may pool the connection
        self._resp_chunked = False
        self._resp_length: int | None = None
        self._interim = False
        self._got_bytes = False
        self._tapped = False            # the parser is a _TrailerTap's
        self._trailers: Headers | None = None
        self._closed = False
        self._head_out = b""            # a bodiless request's head, waiting in ctx.batch
        self.forgotten = False          # the pool no longer counts it
        self.timeout = 0.0

    # -- driving a request ---------------------------------------------------
    def start(self, ex: Exchange, head: bytes, chunked_body: bool, timeout: float) -> None:
        assert self.transport is not None
        self.ex = ex
        self.head = head
        self._rx = []
        self._rx_pos = 0
        self._resp_started = False
        self._resp_done = False
        self._reusable = False
        self._got_bytes = False
        self._trailers = None
        self._req_chunked = chunked_body
        self._req_done = not ex.body_expected
        self.timeout = timeout
        if timeout:                 # from the request's arrival, or this attempt's start
            call = ex.retry
            self.deadline = (ex.started if call is None else call.sent) + timeout
        else:
            self.deadline = 0.0
        ex.source = self
        if not ex.body_expected:    # nothing follows: send with the rest of this pass
            self._head_out = head
            self.pool.ctx.batch.add(self)
            return
        self.transport.write(head)
        if ex.body_expected:
            call = ex.retry         # a Call keeps the body for replay and hands it on
            (ex if call is None else call).attach_body_sink(self)

    def send_queued(self) -> None:
        head = self._head_out
        if head:
            self._head_out = b""
            if not self._closed and self.transport is not None:
                self.transport.write(head)

    # -- BodySink: the request body ----------------------------------------
    def body_data(self, data: bytes) -> None:
        if self.transport is None or self._closed:
            return
        if self._req_chunked:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def body_end(self, trailers: Headers | None) -> None:
        self._req_done = True
        if self._req_chunked and self.transport is not None and not self._closed:
            tail = b"".join(b"%s: %s\r\n" % kv for kv in trailers) if trailers else b""
            self.transport.write(b"0\r\n" + tail + b"\r\n")

    def body_abort(self) -> None:
        self.abort()

    # -- ResponseSource ------------------------------------------------------
    def pause_producing(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume_producing(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """The client is gone or the request failed: never reuse this connection."""
        self.ex = None
        self._close()

    # -- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.ctx.upstream_conns.add(self)

    def pause_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.responder.pause_body(ex)

    def resume_writing(self) -> None:
        ex = self.ex
        if ex is not None and not ex.done:
            ex.responder.resume_body(ex)

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:               # bytes while idle: the upstream is confused
            self._close()
            return
        self._got_bytes = True
        if not self._resp_started:
            self._rx.append(data)
        replay = b""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _BytesAfterResponse):
                self._reusable = False
            elif isinstance(cause, _ReadTrailers):
                replay = self._rx[0]     # the response from its first byte
                self._rx = []
                self._rx_pos = 0
                self._tapped = True
                self.parser = httptools.HttpResponseParser(_TrailerTap(self))
            elif isinstance(cause, _HeadResponseDone):
                # Bytes after a HEAD response's head are no part of it: not reusable.
                keep_alive = self.parser.should_keep_alive() and not self._rx
                self.parser = httptools.HttpResponseParser(self)
                self._tapped = False
                self._complete(keep_alive)
            else:
                log.error("upstream response handling failed", exc_info=cause)
                self._fail("protocol", 502, b"Bad Gateway\n")
                return
        except httptools.HttpParserError:
            if self._resp_done:         # garbage after a complete response
                self._reusable = False
            else:
                self._fail("protocol", 502, b"Bad Gateway: invalid response from upstream\n")
                return
        if replay:                       # read again by the parser that reports trailers
            self.data_received(replay)
            return
        if self._resp_done:
            self._settle()
            return
        ex = self.ex
        if ex is not None:
            ex.responder.flush(ex)
            if self.deadline:
                self.deadline = self.pool.ctx.now + self.timeout

    def _settle(self) -> None:
        """After a read that ended the response: pool the connection, or close it."""
        if self._reusable and not self._closed:
            self._reusable = False
            if self._tapped:             # back to the parser without field callbacks
                self._tapped = False
                self.parser = httptools.HttpResponseParser(self)
            self.pool.release(self)
        else:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.pool.ctx.upstream_conns.discard(self)
        self.pool.forget(self)
        ex = self.ex
        self.ex = None
        if ex is None or ex.done:
            return
        if self._resp_started:
            if self._resp_length is None and not self._resp_chunked:
                ex.responder.end_response(ex, None)   # close-delimited body ended
            else:
                ex.responder.abort(ex)
            return
        if self.reused and not self._got_bytes:
            # The keep-alive race: the upstream closed an idle connection as we
            # reused it. Once more on a fresh one, if the body can be replayed.
            if ex.retry is not None:
                upstream_failed(ex, self, "stale", 502,
                                b"Bad Gateway: upstream connection closed\n")
                return
            if not (ex.body_expected and ex.body_sink):
                self.pool.retry(ex, self.head, self._req_chunked, self.timeout)
                return
        upstream_failed(ex, self, "reset", 502, b"Bad Gateway: upstream connection closed\n")

    # -- httptools callbacks -------------------------------------------------
    def on_message_begin(self) -> None:
        if self._resp_done:          # a second response nobody asked for
            raise _BytesAfterResponse

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is None:
            return
        rx = self._rx
        raw = rx[0] if len(rx) == 1 else b"".join(rx)
        start = self._rx_pos
        end = raw.find(b"\r\n\r\n", start)
        status = self.parser.get_status_code()
        if status < 200:
            self._rx = [raw]
            self._rx_pos = end + 4
            self._interim = True     # 100 Continue and friends: we answer those ourselves
            return
        block, length, chunked = filter_block(raw[raw.find(b"\r\n", start) + 2:end + 2])
        if chunked and not self._tapped and wants_trailers(ex):
            self._rx = [raw[start:]]
            raise _ReadTrailers
        pool = self.pool
        pool.responses += 1
        if status >= 500:
            pool.errors += 1
        call = ex.retry
        if call is not None and call.response(self, status):
            return                   # discarded: the Call retries elsewhere
        self._rx = []
        self._rx_pos = 0
        self._resp_started = True
        self._resp_chunked = chunked
        self._resp_length = length
        head_only = ex.method == b"HEAD"
        has_body = not head_only and status != 204 and status != 304
        if status == 204:
            length = None            # no framing at all
        ex.responder.start_response_raw(ex, status, block, has_body, length)
        if head_only:
            rest = raw[end + 4:]
            self._rx = [rest] if rest else []    # anything after the head: not reusable
            raise _HeadResponseDone

    def on_trailer(self, name: bytes, value: bytes) -> None:
        """A field of the trailer section (through ``_TrailerTap``); past
        ``_MAX_TRAILERS`` of them, the rest are dropped (Envoy's header count)."""
        name = name.lower()
        if name in FORBIDDEN_TRAILERS or name[:1] == b":":
            return
        trailers = self._trailers
        if trailers is None:
            self._trailers = [(name, value)]
        elif len(trailers) < _MAX_TRAILERS:
            trailers.append((name, value))

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.responder.send_data(ex, body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete()

    # -- endings ---------------------------------------------------------------
    def _complete(self, keep_alive: bool | None = None) -> None:
        ex = self.ex
        if ex is None:
            return
        if keep_alive is None:
            keep_alive = self.parser.should_keep_alive()
        self._resp_done = True
        self._reusable = self._req_done and keep_alive
        self.ex = None
        trailers = self._trailers
        if trailers is not None:
            self._trailers = None
            ex.grpc_status = status_in(trailers)
        ex.responder.end_response(ex, trailers)

    def _fail(self, kind: str, status: int, body: bytes) -> None:
        ex = self.ex
        self.ex = None
        self._close()
        if ex is not None:
            upstream_failed(ex, self, kind, status, body)

    def expire(self) -> None:
        """Called by the worker's sweep once ``deadline`` has passed."""
        self._fail("timeout", 504, b"Gateway Timeout\n")

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class _TrailerTap:
    """The parser's protocol while a response's trailers are read: the connection's
    callbacks, and ``on_header``, which passes trailer fields on (head fields,
    already read from the raw head, are skipped)."""

    __slots__ = ("conn", "on_body", "on_headers_complete", "on_message_begin",
                 "on_message_complete")

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.on_message_begin: Callable[[], None] = conn.on_message_begin
        self.on_headers_complete: Callable[[], None] = conn.on_headers_complete
        self.on_body: Callable[[bytes], None] = conn.on_body
        self.on_message_complete: Callable[[], None] = conn.on_message_complete

    def on_header(self, name: bytes, value: bytes) -> None:
        conn = self.conn
        if conn._resp_started:
            conn.on_trailer(name, value)


def upstream_failed(ex: Exchange, conn: Attempt | None, kind: str, status: int,
                    body: bytes) -> None:
    """No response came from the upstream: let the Call retry, or answer ``status``.

    ``kind`` names what went wrong in Envoy's retry vocabulary: ``connect-failure``,
    ``reset``, ``timeout``, ``protocol``, ``stale`` (a reused connection closed
    before answering), ``removed`` (discovery removed the endpoint it waited for).
    """
    call = ex.retry
    if call is not None and call.failed(conn, kind):
        return
    if not ex.done:
        ex.responder.respond(ex, status, body)
