"""HTTP/1.1 downstream codec: bytes from a client in, Exchanges out.

Theory of operation
-------------------
One ``H1Server`` protocol per client connection. httptools parses; its
callbacks build the request head, and on headers-complete the Exchange is
routed and its pipeline run -- synchronously, no task per request. The codec
is then the Exchange's ``Responder``: the proxy (or any policy) calls
``start_response`` / ``send_data`` / ``end_response`` and ``flush`` once per
batch of upstream bytes, so a small response leaves in one ``write``.

Flow control is symmetric: a slow client (``pause_writing``) pauses the
response source; a slow consumer of the request body pauses our reading.

Connection phases, for the timeout sweep run by the worker once per tick:
IDLE (between requests), HEAD (a request has begun, its head is incomplete),
BUSY (an exchange is in flight). The sweep sees progress by comparing a
request counter, so requests pay nothing for timeouts.

Pipelined requests are queued and answered in order; reading pauses while a
request waits. Malformed input answers 400 (431 for an oversized head) and
closes; nothing a client sends reaches other connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from meshgate.protocol.exchange import Exchange, Headers, ResponseSource, dispatch
from meshgate.protocol.grpc import is_grpc_request, local_answer
from meshgate.protocol.h1_head import (
    FORBIDDEN_TRAILERS,
    TOO_MANY_HEADERS,
    VERSIONS,
    Refusal,
    drop_nominated,
    host_only,
    resolve,
    te_refusal,
)
from meshgate.protocol.h1_response import chunk, last_chunk, plain_headers, response_head
from meshgate.protocol.hop import render_block
from meshgate.protocol.websocket import websocket_requested

if TYPE_CHECKING:
    from meshgate.server.context import WorkerContext

log = logging.getLogger("meshgate.http1")

IDLE: Final = 0                # between requests
HEAD: Final = 1                # a request head is arriving
BUSY: Final = 2                # an exchange is in flight
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _HeadTooLarge(Exception):
    pass


class _LastMessage(Exception):
    """Raised when a request that ends the connection is complete: stop parsing."""


class H1Server(asyncio.Protocol):
    __slots__ = (
        "_authority", "_bad_head", "_body_expected", "_chunked", "_clock", "_closing", "_current",
        "_expect", "_final", "_head_bytes", "_head_rx", "_headers", "_held", "_host", "_host_seen",
        "_host_sent", "_last", "_length", "_merge", "_nheaders", "_nominated", "_out", "_parsing",
        "_paused_reading", "_queue", "_queued", "_te", "_tick_mark", "_tick_since", "_upgrade",
        "_url", "_write_paused", "ctx", "nread", "nreq", "outbound", "parser", "peer", "phase",
        "scheme", "transport"
    )

    def __init__(self, ctx: WorkerContext, scheme: bytes = b"http",
                 outbound: bool = False) -> None:
        self.ctx = ctx
        self.scheme = scheme
        self.outbound = outbound        # a sidecar's outbound listener: route by service name
        self._merge = ctx.merge_slashes  # the settings when the connection opened
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self._url = b""
        self._headers: Headers = []
        self._host = b""
        self._host_sent = False                # a Host header came (perhaps empty)
        self._te = 0                           # Transfer-Encoding headers in this head
        self._host_seen = b""                  # the last request's Host ...
        self._authority = b""                  # ... and the authority made of it
        self._head_bytes = 0
        self._head_rx = 0                      # bytes of reads a head spanned whole
        self._nheaders = 0
        self._body_expected = False
        self._length = -1                      # Content-Length of the request, -1: none
        self._expect = False
        self._upgrade = False                  # an Upgrade header was sent
        self._nominated = b""                  # Connection tokens naming other headers
        self._final = False                    # no request may follow the one being read
        self._last = False                     # ... and it was read: the rest is discarded
        self._held: list[bytes] | None = None  # bytes after a WebSocket handshake (a tunnel's)
        self.nread = 0                         # reads so far: progress for the body timeout
        self._clock = ctx.loop.time
        self._bad_head = b""               # why the head being read is unacceptable
        self._parsing: Exchange | None = None    # exchange whose request is being read
        self._current: Exchange | None = None    # exchange whose response is being written
        self._queue: deque[Exchange] | None = None
        self._chunked = False                    # response to the client is chunked
        self._out: list[bytes] = []
        self._queued = False                     # _out waits in ctx.batch
        self.phase = IDLE
        self.nreq = 0
        self._tick_mark = (-1, -1)
        self._tick_since = 0.0
        self._paused_reading = False
        self._write_paused = False
        self._closing = False

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b""
        self.ctx.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        self._closing = True
        ex = self._current
        if ex is not None and not ex.done:
            ex.done = True
            ex.keep_alive = False
            if ex.source is not None:
                ex.source.abort()
                ex.source = None
            sink = ex.body_sink
            if sink is not None and not ex.body_done:
                sink.body_abort()
            if ex.on_done is not None:
                ex.on_done(ex)
        self._current = None
        self._queue = None

    def data_received(self, data: bytes) -> None:
        if self._last:                  # the last request was read: the rest is discarded
            if self._held is not None:
                self._hold(data)        # ... unless a WebSocket tunnel may want it
            return
        self.nread += 1
        rest = b""
        # A head that spans whole reads is counted here too: httptools keeps
        # a header value to itself until it is complete, so a never-ending one
        # would grow unseen by on_header.
        spanning = self.nreq if self.phase == HEAD else -1
        try:
            self.parser.feed_data(data)
            if self.nreq == spanning and self.phase == HEAD:
                self._head_rx += len(data)
                if self._head_rx > self.ctx.max_header_bytes:
                    raise _HeadTooLarge
        except httptools.HttpParserUpgrade as exc:
            # A bodiless request with Upgrade was served as plain HTTP (Upgrade
            # is hop-by-hop and not forwarded); what followed is the next
            # request. One with a body was refused (the parser stops at its head).
            self.parser = httptools.HttpRequestParser(self)
            rest = data[exc.args[0]:] if exc.args else b""
            if self._held is not None and self._current is not None:
                self._last = True       # a WebSocket handshake in flight: hold what follows
                self._hold(rest)
                rest = b""
            else:
                self._held = None       # ... answered already: parse on, as for any request
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _LastMessage):
                self._pause_reading()
            elif isinstance(cause, _HeadTooLarge):
                self._reject(431, b"Request Header Fields Too Large\n")
            else:
                log.error("request handling failed", exc_info=cause or exc)
                self._reject(500, b"Internal Server Error\n")
        except httptools.HttpParserError:
            # llhttp stops at HTTP/2's connection preface ("PRI * HTTP/2.0"):
            # looked at here, on the error path, it costs HTTP/1.1 nothing.
            if self.nread == 1 and data[:24] == _PREFACE and self.ctx.http2.enabled:
                self._to_http2(data)
            elif not self._last:
                self._reject(400, b"Bad Request\n")
        except _HeadTooLarge:
            self._reject(431, b"Request Header Fields Too Large\n")
        if rest and not self._closing:
            self.nread -= 1
            self.data_received(rest)

    def _to_http2(self, data: bytes) -> None:
        """HTTP/2 with prior knowledge: the connection is handed to the HTTP/2 codec."""
        from meshgate.protocol.h2_server import H2Server  # only when a client speaks it

        transport = self.transport
        if transport is None:
            return
        self._last = True
        self.transport = None
        self.ctx.connections.discard(self)
        codec = H2Server(self.ctx, self.scheme, self.outbound)
        transport.set_protocol(codec)
        codec.connection_made(transport)
        codec.data_received(data)

    def pause_writing(self) -> None:
        self._write_paused = True
        ex = self._current
        if ex is not None and ex.source is not None:
            ex.source.pause_producing()

    def resume_writing(self) -> None:
        self._write_paused = False
        ex = self._current
        if ex is not None and ex.source is not None:
            ex.source.resume_producing()

    # -- httptools callbacks -----------------------------------------------
    # The per-message state is reset in on_headers_complete, not in an
    # on_message_begin callback: one Python call less per request.
    def on_url(self, url: bytes) -> None:
        self.phase = HEAD
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.ctx.max_header_bytes:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase != HEAD:           # trailers of a chunked body
            self._trailer(name, value)
            return
        self._head_bytes += len(name) + len(value) + 4
        self._nheaders += 1                # held to maxHeaders once, in on_headers_complete
        if self._head_bytes > self.ctx.max_header_bytes:
            raise _HeadTooLarge
        name = name.lower()
        n = len(name)
        if n == 4 and name == b"host":
            if self._host_sent:
                self._bad_head = b"Bad Request: more than one Host header\n"
            self._host_sent = True
            self._host = value
        elif n == 14:
            if name == b"content-length":
                self._length = int(value)  # llhttp accepted it: digits only, one header
                self._body_expected = self._length > 0
            elif name == b"eg-consumer-id":
                return                     # GATEWAY_ONLY: only the gateway says who this is
        elif n == 17 and name == b"transfer-encoding":
            self._body_expected = True
            self._te += 1
            if (self._te > 1 or value.lower() != b"chunked") and not self._bad_head:
                self._bad_head = te_refusal(value, self._te)
        elif n == 6 and name == b"expect":
            self._expect = value.lower() == b"100-continue"
        elif n == 10 and name == b"connection":
            low = value.lower()
            if low != b"keep-alive" and low != b"close":
                self._nominated += b"," + low
        elif n == 7 and name == b"upgrade":
            self._upgrade = True
        elif n > 11 and name[0] == 0x78 and name.startswith(b"x-meshgate-"):
            return                         # only the gateway says these: a client's are dropped
        self._headers.append((name, value))

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A request trailer: kept unless its name may not appear in a trailer."""
        ex = self._parsing
        if ex is None:
            return
        self._nheaders += 1
        if self._nheaders > self.ctx.max_headers:
            raise _HeadTooLarge
        name = name.lower()
        if name in FORBIDDEN_TRAILERS or name.startswith(b"x-meshgate-"):
            return
        if ex.trailers is None:
            ex.trailers = []
        ex.trailers.append((name, value))

    def on_headers_complete(self) -> None:
        self.phase = BUSY
        self.nreq += 1
        parser = self.parser
        url = self._url
        host = self._host
        host_sent = self._host_sent
        headers = self._headers
        body_expected = self._body_expected
        length = self._length
        expect = self._expect
        bad = self._bad_head
        if self._nheaders > self.ctx.max_headers:
            bad = TOO_MANY_HEADERS         # memory was bounded by maxHeaderBytes meanwhile
        self._url = b""
        self._headers = []
        self._host = b""
        self._host_sent = False
        self._te = 0
        self._head_bytes = 0
        self._head_rx = 0
        self._nheaders = 0
        self._body_expected = False
        self._length = -1
        self._expect = False
        self._bad_head = b""
        version = VERSIONS.get(parser.get_http_version()) or b"1.0"
        method = parser.get_method()
        if self._nominated:                # Connection names hop-by-hop headers to drop
            headers = drop_nominated(headers, self._nominated)
            self._nominated = b""
        websocket = False
        if self._upgrade:
            self._upgrade = False
            if body_expected:
                bad = b"Bad Request: Upgrade with a request body\n"
            elif method == b"GET" and version == b"1.1" and parser.should_keep_alive():
                websocket = websocket_requested(headers)
        # The usual request skips resolve(): origin-form, Host present, HTTP/1.1,
        # and nothing path.normalize could change or refuse (no '%', '#', '\\',
        # '/.', nor '//' when slashes are merged). One translate() finds the first
        # three in a pass; compiled, that is cheaper than `in` or find() for each.
        if (url[:1] != b"/" or not host or bad or method == b"CONNECT" or version != b"1.1"
                or len(url.translate(None, b"%#\\")) != len(url) or url.find(b"/.") >= 0
                or (self._merge and url.find(b"//") >= 0)):
            url, host, headers, bad = resolve(url, host, headers, version, method, bad,
                                              self.ctx.path_rules, host_sent)
        if host == self._host_seen:        # a keep-alive client's usual case
            authority = self._authority
        else:
            authority = host.lower()
            if b":" in authority:
                authority = host_only(authority)
            self._host_seen, self._authority = host, authority
        ex = Exchange(self, method, url, headers, authority,
                      self.scheme, self.peer, version, body_expected, self._clock())
        ex.body_length = length
        keep_alive = parser.should_keep_alive()
        ex.keep_alive = keep_alive and not self.ctx.draining
        ex.expect_continue = expect and body_expected
        if not keep_alive or bad:
            self._final = True             # answer this one; whatever follows is discarded
        if bad:
            ex.keep_alive = False
            ex.pipeline = Refusal(bad)
        if websocket:
            # What follows the head waits, unparsed: a tunnel's if the proxy opens
            # one (which then ends HTTP here, refused or not), else the next request.
            ex.upgrade = True
            self._held = []
        self._parsing = ex
        if self._current is None:
            self._current = ex
            self._dispatch(ex)
        else:
            if self._queue is None:
                self._queue = deque()
            self._queue.append(ex)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is None:
            return
        sink = ex.body_sink
        if sink is not None:
            sink.body_data(body)
        elif not ex.done:
            if ex.body_buffer is None:
                ex.body_buffer = []
            ex.body_buffer.append(body)
            self._pause_reading()        # nobody consumes yet: stop at one read

    def on_message_complete(self) -> None:
        ex = self._parsing
        self._parsing = None
        if ex is None:
            return
        ex.body_done = True
        if ex.body_expected and ex.body_sink is not None:
            ex.body_sink.body_end(ex.trailers)
        if ex is not self._current and self._current is not None:
            self._pause_reading()
        if self._final:
            self._last = True
            raise _LastMessage            # stop the parser before any next request

    # -- dispatch ----------------------------------------------------------
    def _dispatch(self, ex: Exchange) -> None:
        dispatch(ex, self.ctx.outbound if self.outbound else self.ctx.snapshot.router)

    # -- Responder ---------------------------------------------------------
    def start_response(self, ex: Exchange, status: int, headers: Headers,
                       has_body: bool, length: int | None) -> None:
        self.start_response_raw(ex, status, render_block(headers, length), has_body, length)

    def start_response_raw(self, ex: Exchange, status: int, block: bytes,
                           has_body: bool, length: int | None) -> None:
        """``block``: header lines as sent (Content-Length included when known)."""
        head, self._chunked = response_head(ex, status, block, has_body, length,
                                            self.ctx.draining)
        self._out.append(head)

    def send_data(self, ex: Exchange, data: bytes) -> None:
        self._out.append(chunk(data) if self._chunked else data)

    def end_response(self, ex: Exchange, trailers: Headers | None) -> None:
        if self._chunked:
            self._out.append(last_chunk(trailers))
        if not self._queued:               # sent with the rest of this pass's writes
            self._queued = True
            self.ctx.batch.add(self)
        self._finish(ex)

    def send_queued(self) -> None:
        """Write what ``_out`` holds (the batch's call, or anyone's who must send now)."""
        self._queued = False
        out = self._out
        if out and not self._closing and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def flush(self, ex: Exchange) -> None:
        self.send_queued()
        if self._write_paused and ex.source is not None:
            ex.source.pause_producing()

    def respond(self, ex: Exchange, status: int, body: bytes,
                headers: Headers | None = None) -> None:
        if ex.done:
            return
        if ex.status:                 # a response already started: only closing is left
            self._close()
            return
        if ex.method == b"POST" and is_grpc_request(ex.headers):
            # gRPC over HTTP/1.1 (a bridge): the status in the head, no body.
            self.start_response(ex, 200, local_answer(status, body, headers), False, 0)
            ex.status = status        # metrics count what meshgate answered
            self.flush(ex)
            self._finish(ex)
            return
        base = plain_headers(self.ctx.date, headers)
        has_body = ex.method != b"HEAD" and status not in (204, 304) and status >= 200
        length = len(body) if status not in (204, 304) else None
        self.start_response(ex, status, base, False, length)
        if has_body:
            self._out.append(body)
        self.flush(ex)
        self._finish(ex)

    def abort(self, ex: Exchange) -> None:
        """The response cannot be completed: the client learns by the close."""
        if ex is self._current:
            self.flush(ex)
            ex.done = True
            self._close()
            if ex.on_done is not None:
                ex.on_done(ex)

    def pause_body(self, ex: Exchange) -> None:
        if ex is self._parsing:
            self._pause_reading()

    def resume_body(self, ex: Exchange) -> None:
        if ex.expect_continue:
            ex.expect_continue = False
            if self.transport is not None and not ex.status:
                self._out.append(_CONTINUE)
                self.send_queued()
        if ex is self._parsing and (self._queue is None or not self._queue):
            self._resume_reading()

    def set_response_source(self, ex: Exchange, source: ResponseSource | None) -> None:
        if ex is self._current:
            ex.source = source
            if source is not None and self._write_paused:
                source.pause_producing()

    # -- WebSocket: the connection leaves HTTP ------------------------------
    def _hold(self, data: bytes) -> None:
        """Bytes after a WebSocket handshake: set aside unparsed, reading paused."""
        held = self._held
        if held is None or self._closing:
            return
        if data:
            held.append(data)
            if sum(map(len, held)) > self.ctx.max_header_bytes:
                self._held = None        # more than a client may send before the 101
                self._close()
                return
        self._pause_reading()

    def _unhold(self) -> None:
        """A handshake served as plain HTTP: what followed it is the next request."""
        held = b"".join(self._held or ())
        self._held = None
        self._last = False
        self._resume_reading()
        if held:
            self.data_received(held)

    def switch_protocols(self, ex: Exchange, head: bytes) -> tuple[asyncio.Transport, bytes] | None:
        """Send ``head`` (a 101) and give up the connection: (its transport, bytes held).

        The exchange ends here, counted with status 101; from now on the
        transport belongs to whoever took it (a tunnel), and this protocol
        never touches it again. None when the client is gone.
        """
        transport = self.transport
        if transport is None or self._closing or ex is not self._current or ex.done:
            return None
        self.send_queued()
        transport.write(head)
        ex.status = 101
        ex.done = True
        self.ctx.metrics.observe(ex, self._clock())
        if ex.on_done is not None:
            ex.on_done(ex)
        held = b"".join(self._held or ())
        self._held = None
        self._current = None
        self._closing = True
        self.transport = None
        self.ctx.connections.discard(self)
        return transport, held

    # -- exchange end, errors ----------------------------------------------
    def _finish(self, ex: Exchange) -> None:
        ex.done = True
        ex.source = None
        self.ctx.metrics.observe(ex, self._clock())
        if ex.on_done is not None:
            ex.on_done(ex)
        if not ex.body_done:
            ex.keep_alive = False        # unread request body: the connection is unusable
            self._parsing = None
        if not ex.keep_alive:
            self._close()
            return
        self._current = None
        queue = self._queue
        if queue:
            nxt = queue.popleft()
            self._current = nxt
            self._dispatch(nxt)
            return
        if self._parsing is None and self.phase == BUSY:
            self.phase = IDLE
        if self._paused_reading:
            if self._held is not None:
                self._unhold()
                return
            self._resume_reading()

    def _reject(self, status: int, body: bytes) -> None:
        """A protocol error: the client gets the answers it is owed, then this one, then the close.

        Requests read whole before the error (one in flight, others queued)
        are answered first, in order; nothing after the error is read. A
        request whose body was being read when it broke is not dispatched.
        """
        self._last = True                    # the parser is spent: whatever follows is dropped
        ex = self._current
        if ex is not None and ex is not self._parsing and not ex.done:
            queue = self._queue
            if queue and queue[-1] is self._parsing:
                queue.pop()                  # its body broke off: it is refused, not served
            self._parsing = None
            refusal = Exchange(self, b"GET", b"/", [], b"", self.scheme, self.peer, b"1.1",
                               False, self._clock())
            refusal.keep_alive = False
            refusal.body_done = True
            refusal.pipeline = Refusal(body, status)
            if queue is None:
                self._queue = queue = deque()
            queue.append(refusal)
            self._pause_reading()
            return
        self._queue = None
        if ex is None or (not ex.done and not ex.status):
            if ex is None:
                ex = Exchange(self, b"GET", b"/", [], b"", self.scheme, self.peer, b"1.1",
                              False, self._clock())
                self._current = ex
            ex.keep_alive = False
            if ex.body_sink is not None:
                ex.body_sink.body_abort()
            if ex.source is not None:
                ex.source.abort()
            self.respond(ex, status, body)
        self._close()

    def timeout_head(self) -> None:
        """The head did not arrive within headersTimeout (after any answer still owed)."""
        self._reject(408, b"Request Timeout\n")

    def _close(self) -> None:
        if self.transport is not None:
            if self._out and not self._closing:
                self.send_queued()
            self.transport.close()
        self._closing = True

    def drain(self) -> None:
        """Graceful stop: close if idle, otherwise after the current response."""
        if self.phase == IDLE and self._current is None:
            self._close()
        elif self._current is not None:
            self._current.keep_alive = False

    def _pause_reading(self) -> None:
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused_reading and not self._closing and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()

    # -- timeout sweep -----------------------------------------------------
    def tick(self, now: float, head_timeout: float, idle_timeout: float) -> None:
        phase = self.phase
        if phase == BUSY:
            if self._parsing is not None and not self._paused_reading:
                self._tick_body(now)       # a request body is arriving: is it?
            return
        mark = (self.nreq, phase)
        if mark != self._tick_mark:
            self._tick_mark = mark
            self._tick_since = now
            return
        waited = now - self._tick_since
        if phase == HEAD and waited >= head_timeout:
            self.timeout_head()
        elif phase == IDLE and waited >= (idle_timeout if self.nreq else head_timeout):
            self._close()

    def _tick_body(self, now: float) -> None:
        """bodyTimeout: a client that stops sending its body gets 408 and a close.

        Progress is the read counter; a pause of ours (the upstream is slow)
        is not the client's fault and does not count.
        """
        timeout = self.ctx.body_timeout
        mark = (-self.nread - 1, BUSY)
        if mark != self._tick_mark:
            self._tick_mark = mark
            self._tick_since = now
        elif timeout and now - self._tick_since >= timeout:
            ex = self._parsing
            if ex is not None and not ex.done and not ex.status:
                if ex.body_sink is not None:
                    ex.body_sink.body_abort()
                    ex.body_sink = None
                ex.keep_alive = False
                if ex.source is not None:
                    ex.source.abort()
                    ex.source = None
                self._parsing = None
                ex.body_done = True       # nothing more will be read: answer and close
                if ex is self._current:
                    self.respond(ex, 408, b"Request Timeout: request body too slow\n")
                    return
            self._close()
