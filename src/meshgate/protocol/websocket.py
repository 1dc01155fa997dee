"""WebSocket over HTTP/1.1 (RFC 6455): the handshake and its own upstream connection.

Theory of operation
-------------------
The downstream codec marks a request as a handshake (``ex.upgrade``) when it
is a GET without a body whose ``Upgrade`` names ``websocket`` and whose
``Connection`` names ``upgrade`` (``websocket_requested``), and sets the
bytes after it aside, unparsed. The route's pipeline runs as for any
request. A proxy action that allows WebSocket checks the rest of the
handshake (``handshake_refusal``) and opens an ``UpgradeClient``: a
connection of its own to the chosen endpoint, never a pooled one.

The upstream's answer decides what happens to the client connection:

* ``101`` with ``Upgrade: websocket``, ``Connection: upgrade`` and the
  ``Sec-WebSocket-Accept`` the key asks for: the 101 goes to the client
  (hop-by-hop lines redone, policy headers merged), the codec hands its
  transport over (``switch_protocols``), and ``on_switch`` makes a tunnel of
  the two connections. The bytes the client sent after its handshake go
  upstream first, those the upstream sent after its 101 go to the client.
* a ``101`` without them: 502 (the upstream is not speaking WebSocket to us).
* any other answer is relayed as a normal response; the client connection
  closes after it (the codec decided so when it marked the handshake), so
  bytes meant for a tunnel are never read as HTTP.

The answer's deadline is the proxy's response timeout, enforced by the
worker's sweep like a pooled connection's (``ex``, ``deadline``, ``expire``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import httptools

from meshgate.protocol.hop import filter_block, merge_extra

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SWITCHING: Final = b"HTTP/1.1 101 Switching Protocols\r\n"
UPGRADE_LINES: Final = b"connection: upgrade\r\nupgrade: websocket\r\n"

# (status, body, extra headers) of a refused handshake.
Refused = tuple[int, bytes, "Headers | None"]


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",")]


def websocket_requested(headers: Headers) -> bool:
    """``Upgrade`` names websocket and ``Connection`` names upgrade (RFC 6455 4.2.1, 3-4)."""
    upgrade = connection = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in _tokens(value)
        elif name == b"connection":
            connection = connection or b"upgrade" in _tokens(value)
    return upgrade and connection


def accept_for(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value that answers ``key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def handshake_refusal(ex: Exchange) -> Refused | None:
    """Why a marked handshake cannot be forwarded (RFC 6455 4.2.1, 4.4), or None.

    One ``Sec-WebSocket-Key`` that is base64 of 16 bytes, and version 13;
    another version is 426 naming the one we speak.
    """
    keys = [v for k, v in ex.headers if k == b"sec-websocket-key"]
    versions = [v.strip() for k, v in ex.headers if k == b"sec-websocket-version"]
    if len(keys) != 1 or not _valid_key(keys[0].strip()):
        return 400, b"Bad Request: invalid Sec-WebSocket-Key\n", None
    if not versions:
        return 400, b"Bad Request: missing Sec-WebSocket-Version\n", None
    if versions != [b"13"]:
        return (426, b"Upgrade Required: WebSocket version 13\n",
                [(b"sec-websocket-version", b"13")])
    return None


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


class Switcher(Protocol):
    """A downstream codec that can hand its connection over after a 101."""

    def switch_protocols(self, ex: Exchange, head: bytes
                         ) -> tuple[asyncio.Transport, bytes] | None: ...


# on_switch(client transport, upstream transport, client bytes held, upstream bytes after the 101)
OnSwitch = Callable[[asyncio.Transport, asyncio.Transport, bytes, bytes], None]


class _BadSwitch(Exception):
    """A 101 that does not complete the WebSocket handshake."""


class UpgradeClient(asyncio.Protocol):
    """One handshake on a dedicated upstream connection; a tunnel's upstream half after it."""

    def __init__(self, ex: Exchange, head: bytes, key: bytes, timeout: float, ctx: Any,
                 on_switch: OnSwitch, release: Callable[[], None]) -> None:
        self.ex: Exchange | None = ex
        self.head = head
        self.accept = accept_for(key)
        self.timeout = timeout
        self.ctx = ctx
        self.deadline = ctx.now + timeout if timeout else 0.0
        self.on_switch = on_switch
        self.release = release           # the tunnel slot, unless a tunnel takes it over
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.rx: list[bytes] = []        # the response head's bytes until it is complete
        self.headers: Headers = []
        self.status = 0
        self.started = False             # a non-101 answer is being relayed
        self.length: int | None = None
        self.chunked = False
        self.switched = False

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        ex = self.ex
        if ex is None or ex.done:        # the client left while we connected
            self.ex = None
            self.transport.close()
            return
        self.ctx.upstream_conns.add(self)
        ex.responder.set_response_source(ex, self)
        self.transport.write(self.head)

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:
            return
        if not self.started:
            self.rx.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.status == 101:
                self._switch(ex, data[exc.args[0]:] if exc.args else b"")
                return
            self._fail(502, b"Bad Gateway: invalid response from upstream\n")
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _BadSwitch):
                self._fail(502, b"Bad Gateway: upstream did not accept the WebSocket handshake\n")
            else:
                self._fail(502, b"Bad Gateway: invalid response from upstream\n")
            return
        except httptools.HttpParserError:
            self._fail(502, b"Bad Gateway: invalid response from upstream\n")
            return
        if self.ex is not None:
            ex.responder.flush(ex)
            if self.deadline:
                self.deadline = self.ctx.now + self.timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.upstream_conns.discard(self)
        if not self.switched:
            self.switched = True         # once: the slot goes back
            self.release()
        ex = self.ex
        self.ex = None
        if ex is None or ex.done:
            return
        if not self.started:
            ex.responder.respond(ex, 502, b"Bad Gateway: upstream connection closed\n")
        elif self.length is None and not self.chunked:
            ex.responder.end_response(ex, None)      # a close-delimited body ended
        else:
            ex.responder.abort(ex)

    # -- ResponseSource: a relayed non-101 answer ---------------------------------
    def pause_producing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_producing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        self.ex = None
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """The worker's sweep: no answer (or no progress) within the proxy's timeout."""
        self._fail(504, b"Gateway Timeout\n")

    # -- httptools callbacks ---------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is None:
            return
        status = self.status = self.parser.get_status_code()
        raw = b"".join(self.rx)
        end = raw.find(b"\r\n\r\n")
        block = raw[raw.find(b"\r\n") + 2:end + 2]
        headers, self.headers = self.headers, []
        if status == 101:
            if not self._accepted(headers):
                raise _BadSwitch
            self.rx = [block]
            return
        if status < 200:                 # 100 and friends: not for the client
            self.rx = [raw[end + 4:]]
            return
        self.started = True
        self.rx = []
        block, self.length, self.chunked = filter_block(block)
        length = None if status == 204 else self.length
        ex.responder.start_response_raw(ex, status, block, status not in (204, 304), length)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None and self.started:
            ex.responder.send_data(ex, body)

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex is None or not self.started:
            return                       # an interim answer, or the 101 (the parser stops next)
        self.ex = None
        ex.responder.end_response(ex, None)
        if self.transport is not None:
            self.transport.close()

    # -- endings ---------------------------------------------------------------
    def _accepted(self, headers: Headers) -> bool:
        upgrade = connection = False
        accepts = []
        for name, value in headers:
            if name == b"upgrade":
                upgrade = upgrade or b"websocket" in _tokens(value)
            elif name == b"connection":
                connection = connection or b"upgrade" in _tokens(value)
            elif name == b"sec-websocket-accept":
                accepts.append(value.strip())
        return upgrade and connection and accepts == [self.accept]

    def _switch(self, ex: Exchange, rest: bytes) -> None:
        """A valid 101: to the client, then both connections become a tunnel."""
        self.ex = None
        self.ctx.upstream_conns.discard(self)
        block = filter_block(self.rx[0])[0] if self.rx else b""
        self.rx = []
        extra = ex.response_headers_extra
        if extra is not None:
            block = merge_extra(block, extra)
        head = _SWITCHING + block + UPGRADE_LINES + b"\r\n"
        upstream = self.transport
        taken = cast(Switcher, ex.responder).switch_protocols(ex, head)
        if taken is None or upstream is None:      # the client is gone
            if upstream is not None:
                upstream.close()
            return
        self.switched = True             # the tunnel holds the slot now
        client, held = taken
        self.on_switch(client, upstream, held, rest)

    def _fail(self, status: int, body: bytes) -> None:
        ex = self.ex
        self.ex = None
        if self.transport is not None:
            self.transport.close()
        if ex is not None and not ex.done:
            ex.responder.respond(ex, status, body)
