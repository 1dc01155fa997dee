"""The server side of an HTTP/2 connection (RFC 9113): frames in, events out.

Theory of operation
-------------------
``ServerConnection`` is the frame layer under ``H2Server``: it cuts the
inbound bytes into frames, keeps each stream's state and both directions'
flow-control windows, decodes header blocks (``h2_hpack``), checks request
heads as RFC 9113 8.2-8.3 asks, and answers what the protocol answers by
itself (SETTINGS and PING acknowledgements). What the codec must act on
comes back from ``receive_data`` as events; what the codec sends
(``send_headers``, ``send_data``, ``reset_stream``, window credit) is framed
into a buffer that ``data_to_send`` empties, so one write carries a whole
pass of work.

It is the subset of ``h2``'s ``H2Connection`` the codec uses, with the same
names and events, in plain typed Python that mypyc compiles: per request it
allocates the stream, its fields and two events.

Errors: a connection error queues GOAWAY with its code (the last stream is
the highest the peer opened) and raises ``ProtocolError``; the codec then
sends what is queued and closes. A stream error (DATA past a stream's
window or after its END_STREAM, a zero WINDOW_UPDATE on a stream) resets
that stream and reports it as ``StreamReset``, so the codec abandons its
exchange. Defences enforced here rather than after decoding:

* a frame longer than our ``SETTINGS_MAX_FRAME_SIZE`` is FRAME_SIZE_ERROR as
  soon as its nine header bytes are in -- nothing is buffered for it;
* a header block (HEADERS + CONTINUATION) whose bytes as received, frame
  headers included (so empty CONTINUATIONs count too), pass
  ``max_header_list_size``, or whose decoded list does, is ENHANCE_YOUR_CALM
  (CONTINUATION flood, HPACK bomb);
* frames that carry nothing but cost work (CVE-2019-9518, -9513): more than
  one empty DATA frame without END_STREAM in a row, or more than 100
  PRIORITY frames per stream opened, are ENHANCE_YOUR_CALM, as in Envoy;
* new streams beyond ``max_streams`` open at once end the connection: the
  codec refuses streams past the advertised limit itself (REFUSED_STREAM),
  so only a peer ignoring that setting altogether reaches this cap.

Frames for a stream that is gone are ignored (after we reset it, the
peer's frames already in flight still come), except that DATA on it gives
its connection-window credit straight back.
"""

from __future__ import annotations

import re
import struct
from typing import Final, NoReturn

from meshgate.protocol.h2_hpack import Decoder, Encoder, HeaderListTooLarge, HpackError

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9
# flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20
# error codes
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB
# settings
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6
ENABLE_CONNECT_PROTOCOL: Final = 0x8

MAX_WINDOW: Final = (1 << 31) - 1
DEFAULT_WINDOW: Final = 65535
DEFAULT_FRAME_SIZE: Final = 16384
_FRAME_HEAD: Final = 9
# Frames that cost us work and carry nothing (CVE-2019-9518, -9513); Envoy's limits.
_EMPTY_FRAMES: Final = 1                 # empty DATA without END_STREAM, in a row
_PRIORITY_PER_STREAM: Final = 100        # PRIORITY frames per stream opened (+1)
_RECENT_RESETS: Final = 256              # stream ids we reset, whose late frames are ignored

_HEAD: Final = struct.Struct(">BHBBI")   # length (24 bits as 8 + 16), type, flags, stream id
_U32: Final = struct.Struct(">I")

# RFC 9113 8.2.1 / 8.2.2: what no field may hold, and fields HTTP/2 has no use for.
_BAD_NAME: Final = re.compile(rb"[\x00-\x20A-Z:\x7f-\xff]")
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
_CONNECTION_SPECIFIC: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
})
_METHOD: Final = 1
_SCHEME: Final = 2
_PATH: Final = 4
_AUTHORITY: Final = 8
_PROTOCOL: Final = 16
_PSEUDO_BIT: Final[dict[bytes, int]] = {
    b":method": _METHOD, b":scheme": _SCHEME, b":path": _PATH, b":authority": _AUTHORITY,
    b":protocol": _PROTOCOL,
}


class ProtocolError(Exception):
    """A connection error: GOAWAY with ``error_code`` is queued."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


# -- events (named as h2 names them) --------------------------------------------------
class StreamEnded:
    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class RequestReceived:
    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                 stream_ended: StreamEnded | None) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class TrailersReceived:
    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers


class DataReceived:
    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow_controlled_length


class StreamReset:
    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.error_code = error_code


class WindowUpdated:
    def __init__(self, stream_id: int, delta: int) -> None:
        self.stream_id = stream_id
        self.delta = delta


class RemoteSettingsChanged:
    pass


class PingReceived:
    def __init__(self, ping_data: bytes) -> None:
        self.ping_data = ping_data


class ConnectionTerminated:
    def __init__(self, error_code: int, last_stream_id: int) -> None:
        self.error_code = error_code
        self.last_stream_id = last_stream_id


def frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


def goaway(last_stream_id: int, error_code: int = NO_ERROR) -> bytes:
    return frame_head(8, GOAWAY, 0, 0) + _U32.pack(last_stream_id) + _U32.pack(error_code)


def settings_frame(values: dict[int, int]) -> bytes:
    body = b"".join(struct.pack(">HI", code, value) for code, value in values.items())
    return frame_head(len(body), SETTINGS, 0, 0) + body


def window_update(stream_id: int, increment: int) -> bytes:
    return frame_head(4, WINDOW_UPDATE, 0, stream_id) + _U32.pack(increment)


class _Stream:
    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window     # what we may still send
        self.recv_window = recv_window     # what the peer may still send
        self.acked = 0                     # bytes consumed, not yet credited back
        self.remote_open = True            # the peer has not ended its side
        self.local_open = True             # we have not ended ours


class ServerConnection:
    """One client connection's HTTP/2 state, server side."""

    def __init__(self, max_frame_size: int, initial_window_size: int, connection_window: int,
                 max_header_list_size: int, max_streams: int) -> None:
        self.max_frame_size = max_frame_size
        self.initial_window = initial_window_size
        self.connection_window = connection_window
        self.max_header_list_size = max_header_list_size
        self.max_streams = max_streams
        self.decoder = Decoder(max_header_list_size)
        self.encoder = Encoder()
        self.streams: dict[int, _Stream] = {}
        self.highest_inbound_stream_id = 0
        self.max_outbound_frame_size = DEFAULT_FRAME_SIZE
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW       # the connection's outbound window
        self.recv_window = connection_window    # inbound, as raised by our first WINDOW_UPDATE
        self.recv_acked = 0
        self.closed = False
        self._out: list[bytes] = []
        self._parts: list[bytes] = []          # bytes of an incomplete frame
        self._have = 0
        self._need = 0
        self._preface = False                   # the client preface was read
        self._settled = False                   # its first frame (SETTINGS) was read
        self._block: list[bytes] = []           # an unfinished header block's fragments
        self._block_sid = 0
        self._block_flags = 0
        self.pending_header_bytes = 0
        self._reset_ids: dict[int, None] = {}   # recently reset streams, oldest first
        self._empty = 0                         # empty DATA frames in a row
        self._priority = 0                      # PRIORITY frames received
        self._opened = 0                        # streams the peer opened

    # -- inbound -----------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[object]:
        if self.closed:
            return []
        events: list[object] = []
        parts = self._parts
        if parts:                              # a frame (or the preface) still incomplete
            parts.append(data)
            self._have += len(data)
            if self._have < self._need:        # joined once whole, not once per read
                return events
            buf = b"".join(parts)
            parts.clear()
        else:
            buf = data
        pos = 0
        end = len(buf)
        if not self._preface:
            if end < 24:
                if PREFACE[:end] != buf:
                    self._fail(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
                self._keep(buf, 24)
                return events
            if buf[:24] != PREFACE:
                self._fail(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
            self._preface = True
            pos = 24
        max_frame = self.max_frame_size
        need = 3                               # a frame's length is known from 3 bytes
        while end - pos >= 3:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if length > max_frame:
                self._fail(FRAME_SIZE_ERROR, "frame over SETTINGS_MAX_FRAME_SIZE")
            if end - pos < _FRAME_HEAD + length:
                need = _FRAME_HEAD + length
                break
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            sid = ((buf[pos + 5] & 0x7F) << 24) | (buf[pos + 6] << 16) | (buf[pos + 7] << 8) \
                | buf[pos + 8]
            payload = buf[pos + 9:pos + 9 + length]
            pos += 9 + length
            self._frame(kind, flags, sid, payload, events)
        if pos < end and not self.closed:
            self._keep(buf[pos:], need)
        return events

    def _keep(self, rest: bytes, need: int) -> None:
        """Hold the start of an incomplete frame until ``need`` bytes of it are in."""
        self._parts.append(rest)
        self._have = len(rest)
        self._need = need

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes,
               events: list[object]) -> None:
        if self._block_sid and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "a frame inside a header block")
        if not self._settled:
            if kind != SETTINGS or flags & ACK:
                self._fail(PROTOCOL_ERROR, "the preface's first frame is not SETTINGS")
            self._settled = True
        if kind == DATA:
            self._data(flags, sid, payload, events)
        elif kind == HEADERS:
            self._headers(flags, sid, payload, events)
        elif kind == CONTINUATION:
            self._continuation(flags, sid, payload, events)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload, events)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload, events)
        elif kind == PING:
            if len(payload) != 8:
                self._fail(FRAME_SIZE_ERROR, "PING of the wrong length")
            if sid:
                self._fail(PROTOCOL_ERROR, "PING on a stream")
            if not flags & ACK:
                self._out.append(frame_head(8, PING, ACK, 0) + payload)
                events.append(PingReceived(payload))
        elif kind == RST_STREAM:
            self._rst_stream(sid, payload, events)
        elif kind == PRIORITY:
            if not sid:
                self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._stream_error(sid, FRAME_SIZE_ERROR, events)
            self._priority += 1
            if self._priority > _PRIORITY_PER_STREAM * (1 + self._opened):
                self._fail(ENHANCE_YOUR_CALM, "PRIORITY frames far beyond the streams opened")
        elif kind == GOAWAY:
            if sid:
                self._fail(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                self._fail(FRAME_SIZE_ERROR, "GOAWAY too short")
            last = _U32.unpack_from(payload, 0)[0] & MAX_WINDOW
            events.append(ConnectionTerminated(_U32.unpack_from(payload, 4)[0], last))
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # other frame types are extensions we do not speak: ignored (RFC 9113 5.5)

    def _data(self, flags: int, sid: int, payload: bytes, events: list[object]) -> None:
        if not sid:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if size > self.recv_window:
            self._fail(FLOW_CONTROL_ERROR, "DATA past the connection window")
        self.recv_window -= size
        data = payload
        if flags & PADDED:
            if not size or payload[0] >= size:
                self._fail(PROTOCOL_ERROR, "padding longer than the frame")
            data = payload[1:size - payload[0]]
        stream = self.streams.get(sid)
        if stream is None or not stream.remote_open or size > stream.recv_window:
            if stream is None and sid > self.highest_inbound_stream_id:
                self._fail(PROTOCOL_ERROR, "DATA on an idle stream")
            if stream is not None:            # after END_STREAM, or past the stream window
                self._stream_error(sid, FLOW_CONTROL_ERROR if stream.remote_open
                                   else STREAM_CLOSED, events)
            self._credit(size)                # nobody will consume it
            return
        stream.recv_window -= size
        if size:
            self._empty = 0
        elif not flags & END_STREAM:
            self._empty += 1
            if self._empty > _EMPTY_FRAMES:
                self._fail(ENHANCE_YOUR_CALM, "empty DATA frames in a row")
        events.append(DataReceived(sid, data, size))
        if flags & END_STREAM:
            stream.remote_open = False
            events.append(StreamEnded(sid))
            if not stream.local_open:
                del self.streams[sid]

    def _headers(self, flags: int, sid: int, payload: bytes, events: list[object]) -> None:
        if not sid or not sid & 1:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0 or an even stream")
        start = 0
        stop = len(payload)
        if flags & PADDED:
            if not stop:
                self._fail(PROTOCOL_ERROR, "padding longer than the frame")
            start = 1
            stop -= payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if stop < start:
            self._fail(PROTOCOL_ERROR, "padding longer than the frame")
        self._block_sid = sid
        self._block_flags = flags
        fragment = payload[start:stop] if start or stop < len(payload) else payload
        if flags & END_HEADERS:
            self._header_block(sid, flags, fragment, events)
            return
        self._block = [fragment]
        self._grow(_FRAME_HEAD + len(fragment))

    def _continuation(self, flags: int, sid: int, payload: bytes,
                      events: list[object]) -> None:
        if not self._block_sid or sid != self._block_sid:
            self._fail(PROTOCOL_ERROR, "CONTINUATION without a header block")
        if payload:
            self._block.append(payload)
        self._grow(_FRAME_HEAD + len(payload))   # empty frames count: their headers
        if flags & END_HEADERS:
            block = b"".join(self._block)
            self._block = []
            self.pending_header_bytes = 0
            self._header_block(sid, self._block_flags, block, events)

    def _grow(self, size: int) -> None:
        self.pending_header_bytes += size
        if self.pending_header_bytes > self.max_header_list_size:
            self._fail(ENHANCE_YOUR_CALM, "header block over the header list limit")

    def _header_block(self, sid: int, flags: int, block: bytes, events: list[object]) -> None:
        self._block_sid = 0
        try:
            fields = self.decoder.decode(block)
        except HeaderListTooLarge:
            self._fail(ENHANCE_YOUR_CALM, "header list over the limit")
        except HpackError:
            self._fail(COMPRESSION_ERROR, "header block does not decode")
        stream = self.streams.get(sid)
        ended = flags & END_STREAM
        if stream is None:
            if sid <= self.highest_inbound_stream_id:
                if sid in self._reset_ids:
                    return
                self._fail(STREAM_CLOSED, "HEADERS on a closed stream")
            if len(self.streams) >= self.max_streams:
                self._fail(PROTOCOL_ERROR, "streams over twice the advertised limit")
            self.highest_inbound_stream_id = sid
            self._opened += 1
            self._empty = 0
            why = _request_error(fields)
            if why:
                self._fail(PROTOCOL_ERROR, why)
            stream = _Stream(self.peer_initial_window, self.initial_window)
            self.streams[sid] = stream
            if ended:
                stream.remote_open = False
                done = StreamEnded(sid)
                events.append(RequestReceived(sid, fields, done))
                events.append(done)
            else:
                events.append(RequestReceived(sid, fields, None))
            return
        if not stream.remote_open:
            self._stream_error(sid, STREAM_CLOSED, events)
            return
        if not ended:
            self._fail(PROTOCOL_ERROR, "trailers without END_STREAM")
        for name, value in fields:
            if name[:1] == b":" or _BAD_NAME.search(name) or _BAD_VALUE.search(value):
                self._fail(PROTOCOL_ERROR, "malformed trailer field")
        stream.remote_open = False
        events.append(TrailersReceived(sid, fields))
        events.append(StreamEnded(sid))
        if not stream.local_open:
            del self.streams[sid]

    def _window_update(self, sid: int, payload: bytes, events: list[object]) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong length")
        increment = _U32.unpack(payload)[0] & MAX_WINDOW
        if not sid:
            if not increment:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE of zero")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            events.append(WindowUpdated(0, increment))
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.highest_inbound_stream_id:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if not increment:
            self._stream_error(sid, PROTOCOL_ERROR, events)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR, events)
            return
        events.append(WindowUpdated(sid, increment))

    def _settings(self, flags: int, sid: int, payload: bytes, events: list[object]) -> None:
        if sid:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        size = len(payload)
        if flags & ACK:
            if size:
                self._fail(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            return
        if size % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for pos in range(0, size, 6):
            code = (payload[pos] << 8) | payload[pos + 1]
            value = _U32.unpack_from(payload, pos + 2)[0]
            if code == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        self._fail(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif code == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 0xFFFFFF:
                    self._fail(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.max_outbound_frame_size = value
            elif code in (ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL) and value > 1:
                self._fail(PROTOCOL_ERROR, "a boolean setting above 1")
            # HEADER_TABLE_SIZE: our encoder uses no dynamic table; others only bound us
        self._out.append(frame_head(0, SETTINGS, ACK, 0))
        events.append(RemoteSettingsChanged())

    def _rst_stream(self, sid: int, payload: bytes, events: list[object]) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "RST_STREAM of the wrong length")
        if not sid:
            self._fail(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if self.streams.pop(sid, None) is None:
            if sid > self.highest_inbound_stream_id:
                self._fail(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return
        self._forget(sid)
        events.append(StreamReset(sid, _U32.unpack(payload)[0]))

    # -- errors ------------------------------------------------------------------
    def _fail(self, code: int, message: str) -> NoReturn:
        if not self.closed:
            self.closed = True
            self._out.append(goaway(self.highest_inbound_stream_id, code))
        raise ProtocolError(code, message)

    def _stream_error(self, sid: int, code: int, events: list[object]) -> None:
        """Reset the stream; if it was open the codec hears of it as a reset."""
        self._out.append(frame_head(4, RST_STREAM, 0, sid) + _U32.pack(code))
        if self.streams.pop(sid, None) is not None:
            self._forget(sid)
            events.append(StreamReset(sid, code))

    def _forget(self, sid: int) -> None:
        reset = self._reset_ids
        reset[sid] = None
        if len(reset) > _RECENT_RESETS:
            del reset[next(iter(reset))]

    def _credit(self, size: int) -> None:
        """Connection-window credit for ``size`` bytes consumed (or dropped)."""
        if not size:
            return
        acked = self.recv_acked + size
        full = self.connection_window
        if acked >= full // 2 or (self.recv_window == 0 and acked > min(1024, full // 4)):
            self._out.append(window_update(0, acked))
            self.recv_window += acked
            acked = 0
        self.recv_acked = acked

    # -- outbound ------------------------------------------------------------------
    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                     end_stream: bool = False) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open:
            return
        block = self.encoder.encode(headers)
        out = self._out
        flags = END_STREAM if end_stream else 0
        limit = self.max_outbound_frame_size
        if len(block) <= limit:
            out.append(frame_head(len(block), HEADERS, flags | END_HEADERS, stream_id))
            out.append(block)
        else:
            kind = HEADERS
            for pos in range(0, len(block), limit):
                piece = block[pos:pos + limit]
                last = pos + limit >= len(block)
                out.append(frame_head(len(piece), kind,
                                      flags | (END_HEADERS if last else 0), stream_id))
                out.append(piece)
                kind, flags = CONTINUATION, 0
        if end_stream:
            self._local_end(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """``data`` in one frame: the caller keeps within the windows and frame size."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open:
            return
        size = len(data)
        self.send_window -= size
        stream.send_window -= size
        self._out.append(frame_head(size, DATA, END_STREAM if end_stream else 0, stream_id))
        if size:
            self._out.append(data)
        if end_stream:
            self._local_end(stream_id, stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", True)

    def _local_end(self, stream_id: int, stream: _Stream) -> None:
        stream.local_open = False
        if not stream.remote_open:
            del self.streams[stream_id]

    def reset_stream(self, stream_id: int, error_code: int = NO_ERROR) -> None:
        if self.streams.pop(stream_id, None) is None and stream_id in self._reset_ids:
            return
        self._forget(stream_id)
        self._out.append(frame_head(4, RST_STREAM, 0, stream_id) + _U32.pack(error_code))

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """The codec consumed ``acknowledged_size`` bytes: credit, once worth a frame."""
        self._credit(acknowledged_size)
        stream = self.streams.get(stream_id)
        if stream is None or not stream.remote_open:
            return
        acked = stream.acked + acknowledged_size
        full = self.initial_window
        if acked >= full // 2 or (stream.recv_window == 0 and acked > min(1024, full // 4)):
            self._out.append(window_update(stream_id, acked))
            stream.recv_window += acked
            acked = 0
        stream.acked = acked

    def local_flow_control_window(self, stream_id: int) -> int:
        """What may be sent on the stream now: the smaller of its and the connection's."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return 0
        return min(self.send_window, stream.send_window)

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data


def _request_error(fields: list[tuple[bytes, bytes]]) -> str:
    """Why a request head is malformed (RFC 9113 8.2-8.3), or ``""``."""
    regular = False
    seen = 0                               # bits of _PSEUDO_BIT
    method = b""
    authority = b""
    host = b""
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                return "pseudo-header field after a regular one"
            bit = _PSEUDO_BIT.get(name, 0)
            if not bit:
                return "unknown pseudo-header field"
            if seen & bit:
                return "repeated pseudo-header field"
            seen |= bit
            if bit == _METHOD:
                method = value
            elif bit == _AUTHORITY:
                authority = value
            elif bit == _PATH and not value:
                return "empty :path"
        else:
            regular = True
            if _BAD_NAME.search(name) is not None:
                return "invalid field name"
            if name in _CONNECTION_SPECIFIC:
                return "connection-specific field"
            if name == b"te" and value != b"trailers":
                return "te other than trailers"
            if name == b"host":
                host = value
        if _BAD_VALUE.search(value) is not None:
            return "invalid field value"
    if not seen & _METHOD:
        return "no :method"
    if method == b"CONNECT" and not seen & _PROTOCOL:
        if seen & (_SCHEME | _PATH) or not seen & _AUTHORITY:
            return "CONNECT with :scheme or :path, or without :authority"
    elif seen & (_SCHEME | _PATH) != _SCHEME | _PATH:
        return "no :scheme or :path"
    elif seen & _PROTOCOL and method != b"CONNECT":
        return ":protocol outside CONNECT"
    if host and authority and host != authority:
        return ":authority and host disagree"
    return ""
