"""The client side of an HTTP/2 connection (RFC 9113): requests out, response events in.

Theory of operation
-------------------
``ClientConnection`` is the frame layer under the upstream codec
(``h2_client``) and the HTTP/2 health checks: the client half of what
``h2_conn.ServerConnection`` is for the downstream codec, sharing its
frame constants, events, and HPACK (``h2_hpack``). It is the subset of
``h2``'s client ``H2Connection`` those callers use, with the same names and
events, in plain typed Python that mypyc compiles.

It sends the preface and our SETTINGS (``initiate_connection``), allocates
odd stream ids (``get_next_available_stream_id``; a stream opens with its
``send_headers``), keeps both directions' windows, applies the server's
SETTINGS (MAX_CONCURRENT_STREAMS as ``peer_max_streams``, INITIAL_WINDOW_SIZE
moving open streams' send windows, MAX_FRAME_SIZE; HEADER_TABLE_SIZE needs
nothing: our encoder keeps no dynamic table), and acknowledges SETTINGS and
PING by itself. The caller credits the windows it consumed
(``increment_flow_control_window``): the upstream codec holds a stream's
credit back while its client reads slowly.

A response is checked as RFC 9113 8.3.2 and 8.1.1 ask: one ``:status`` of
three digits and no other pseudo-header field, no connection-specific
field, valid names and values, a numeric ``content-length`` that the DATA
then matches (for a response that has a body: not to HEAD, not 204/304);
1xx heads come as ``InformationalResponseReceived``, a second final head
must be trailers ending the stream. A malformed response is a stream error:
RST_STREAM PROTOCOL_ERROR and ``StreamReset`` -- the codec answers its
client 502, the connection's other streams go on.

GOAWAY does not end the state here: it comes as ``ConnectionTerminated``
and the streams up to its last stream id finish (RFC 9113 6.8); which of
ours it left unprocessed is the codec's to decide (it sends them again
elsewhere). A connection error (a frame no server may send, a header block
that does not decode, DATA past our window) queues our GOAWAY and raises
``ProtocolError``. Frames for a stream that is gone (we reset it, or it
ended) are ignored, DATA on it giving its connection credit straight back.
"""

from __future__ import annotations

from typing import Final, NoReturn

from meshgate.protocol.h2_conn import (
    _BAD_NAME,
    _BAD_VALUE,
    _CONNECTION_SPECIFIC,
    _U32,
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME_SIZE,
    DEFAULT_WINDOW,
    ENABLE_CONNECT_PROTOCOL,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    ConnectionTerminated,
    DataReceived,
    ProtocolError,
    RemoteSettingsChanged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
    frame_head,
    goaway,
    settings_frame,
    window_update,
)
from meshgate.protocol.h2_hpack import Decoder, Encoder, HeaderListTooLarge, HpackError

_FRAME_HEAD: Final = 9
_LAST_STREAM_ID: Final = MAX_WINDOW     # 2^31-1, the highest stream id
_UNLIMITED: Final = 1 << 31             # MAX_CONCURRENT_STREAMS until the server names one
_RECENT_RESETS: Final = 256
_NO_LENGTH: Final = -1


class NoAvailableStreamIDError(Exception):
    """Every client stream id of this connection was used: open a new one."""


# -- events the server side has no use for (named as h2 names them) -------------------
class ResponseReceived:
    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                 stream_ended: StreamEnded | None) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class InformationalResponseReceived:
    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers


class SettingsAcknowledged:
    pass


class PingAckReceived:
    def __init__(self, ping_data: bytes) -> None:
        self.ping_data = ping_data


class _Stream:
    def __init__(self, send_window: int, recv_window: int, head_request: bool) -> None:
        self.send_window = send_window     # what we may still send
        self.recv_window = recv_window     # what the peer may still send
        self.remote_open = True            # the peer has not ended its side
        self.local_open = True             # we have not ended ours
        self.head_request = head_request   # a response to HEAD has no body
        self.status = 0                    # the final response's, once in
        self.expected = _NO_LENGTH         # content-length bytes still due


class ClientConnection:
    """One upstream connection's HTTP/2 state, client side."""

    def __init__(self, max_streams: int = 100, initial_window_size: int = DEFAULT_WINDOW,
                 max_header_list_size: int = 65536,
                 max_frame_size: int = DEFAULT_FRAME_SIZE,
                 never_indexed: frozenset[bytes] = frozenset()) -> None:
        self.local_max_streams = max_streams
        self.initial_window = initial_window_size
        self.max_frame_size = max_frame_size
        self.max_header_list_size = max_header_list_size
        self.decoder = Decoder(max_header_list_size)
        self.encoder = Encoder(never_indexed)
        self.streams: dict[int, _Stream] = {}
        self.next_stream_id = 1
        self.highest_outbound_stream_id = 0
        self.peer_max_streams = _UNLIMITED
        self.max_outbound_frame_size = DEFAULT_FRAME_SIZE
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW       # the connection's outbound window
        self.recv_window = DEFAULT_WINDOW       # inbound, raised by our WINDOW_UPDATEs
        self.recv_acked = 0                     # credit owed for DATA nobody consumes
        self.closed = False
        self._acked = False                     # the server acknowledged our SETTINGS
        self._out: list[bytes] = []
        self._parts: list[bytes] = []           # bytes of an incomplete frame
        self._have = 0
        self._need = 0
        self._settled = False                   # the server's first frame (SETTINGS) was read
        self._block: list[bytes] = []
        self._block_sid = 0
        self._block_flags = 0
        self.pending_header_bytes = 0
        self._reset_ids: dict[int, None] = {}

    def initiate_connection(self) -> None:
        self._out.append(PREFACE)
        self._out.append(settings_frame({
            ENABLE_PUSH: 0, MAX_CONCURRENT_STREAMS: self.local_max_streams,
            INITIAL_WINDOW_SIZE: self.initial_window,
        }))

    # -- inbound -----------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[object]:
        if self.closed:
            return []
        events: list[object] = []
        parts = self._parts
        if parts:
            parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return events
            buf = b"".join(parts)
            parts.clear()
        else:
            buf = data
        pos = 0
        end = len(buf)
        max_frame = self.max_frame_size
        need = 3
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
            self._parts.append(buf[pos:])
            self._have = end - pos
            self._need = need
        return events

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes,
               events: list[object]) -> None:
        if self._block_sid and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "a frame inside a header block")
        if not self._settled:
            if kind != SETTINGS or flags & ACK:
                self._fail(PROTOCOL_ERROR, "the server's first frame is not SETTINGS")
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
            if flags & ACK:
                events.append(PingAckReceived(payload))
            else:
                self._out.append(frame_head(8, PING, ACK, 0) + payload)
        elif kind == RST_STREAM:
            self._rst_stream(sid, payload, events)
        elif kind == GOAWAY:
            if sid:
                self._fail(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                self._fail(FRAME_SIZE_ERROR, "GOAWAY too short")
            last = _U32.unpack_from(payload, 0)[0] & MAX_WINDOW
            events.append(ConnectionTerminated(_U32.unpack_from(payload, 4)[0], last))
        elif kind == PRIORITY:
            if not sid:
                self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._stream_error(sid, FRAME_SIZE_ERROR, events)
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "PUSH_PROMISE, push being disabled")
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
        if stream is None or not stream.remote_open or size > stream.recv_window \
                or not stream.status:
            if stream is None:
                if not sid & 1 or sid > self.highest_outbound_stream_id:
                    self._fail(PROTOCOL_ERROR, "DATA on an idle stream")
            elif not stream.remote_open:
                self._stream_error(sid, STREAM_CLOSED, events)
            elif not stream.status:       # before the final response head: malformed
                self._stream_error(sid, PROTOCOL_ERROR, events)
            else:
                self._stream_error(sid, FLOW_CONTROL_ERROR, events)
            self._credit(size)            # nobody will consume it
            return
        stream.recv_window -= size
        if stream.expected != _NO_LENGTH:
            stream.expected -= len(data)
            if stream.expected < 0 or (flags & END_STREAM and stream.expected):
                self._stream_error(sid, PROTOCOL_ERROR, events)
                self._credit(size)
                return
        events.append(DataReceived(sid, data, size))
        if flags & END_STREAM:
            self._remote_end(sid, stream, events)

    def _remote_end(self, sid: int, stream: _Stream, events: list[object]) -> None:
        stream.remote_open = False
        events.append(StreamEnded(sid))
        if not stream.local_open:
            del self.streams[sid]

    def _headers(self, flags: int, sid: int, payload: bytes, events: list[object]) -> None:
        if not sid:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
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
        self._grow(_FRAME_HEAD + len(payload))
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
            fields = self.decoder.decode(block)   # always: the table must stay in step
        except HeaderListTooLarge:
            self._fail(ENHANCE_YOUR_CALM, "header list over the limit")
        except HpackError:
            self._fail(COMPRESSION_ERROR, "header block does not decode")
        stream = self.streams.get(sid)
        if stream is None:
            if not sid & 1 or sid > self.highest_outbound_stream_id:
                self._fail(PROTOCOL_ERROR, "HEADERS on a stream we did not open")
            return                                # one we reset, or ended
        if not stream.remote_open:
            self._stream_error(sid, STREAM_CLOSED, events)
            return
        ended = flags & END_STREAM
        if stream.status:                         # after the final head: trailers
            if not ended or _trailers_error(fields):
                self._stream_error(sid, PROTOCOL_ERROR, events)
                return
            if stream.expected > 0:
                self._stream_error(sid, PROTOCOL_ERROR, events)
                return
            events.append(TrailersReceived(sid, fields))
            self._remote_end(sid, stream, events)
            return
        status = _response_status(fields)
        if status < 200:
            if status < 100 or status == 101 or ended:
                self._stream_error(sid, PROTOCOL_ERROR, events)
                return
            events.append(InformationalResponseReceived(sid, fields))
            return
        expected = _NO_LENGTH
        if not stream.head_request and status != 204 and status != 304:
            for name, value in fields:
                if name == b"content-length":
                    if not value.isdigit() or len(value) > 18 \
                            or (expected != _NO_LENGTH and int(value) != expected):
                        self._stream_error(sid, PROTOCOL_ERROR, events)
                        return
                    expected = int(value)
            if ended and expected > 0:
                self._stream_error(sid, PROTOCOL_ERROR, events)
                return
        stream.status = status
        stream.expected = expected
        if ended:
            done = StreamEnded(sid)
            events.append(ResponseReceived(sid, fields, done))
            stream.remote_open = False
            events.append(done)
            if not stream.local_open:
                del self.streams[sid]
        else:
            events.append(ResponseReceived(sid, fields, None))

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
            if not sid & 1 or sid > self.highest_outbound_stream_id:
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
            if not self._acked:
                self._acked = True
                events.append(SettingsAcknowledged())
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
            elif code == MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif code in (ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL) and value > 1:
                # ENABLE_PUSH 1 from a server is an RFC 7540 habit (h2, older
                # servers): tolerated, push being off by our own setting
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
            if not sid & 1 or sid > self.highest_outbound_stream_id:
                self._fail(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return
        self._forget(sid)
        events.append(StreamReset(sid, _U32.unpack(payload)[0]))

    # -- errors ------------------------------------------------------------------
    def _fail(self, code: int, message: str) -> NoReturn:
        if not self.closed:
            self.closed = True
            self._out.append(goaway(0, code))   # we accept no streams: none processed
        raise ProtocolError(code, message)

    def _stream_error(self, sid: int, code: int, events: list[object]) -> None:
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
        """Connection credit for DATA dropped here, once worth a frame."""
        if not size:
            return
        acked = self.recv_acked + size
        if acked >= DEFAULT_WINDOW // 4 or self.recv_window < DEFAULT_WINDOW // 4:
            self.increment_flow_control_window(acked)
            acked = 0
        self.recv_acked = acked

    # -- outbound ------------------------------------------------------------------
    def get_next_available_stream_id(self) -> int:
        if self.next_stream_id > _LAST_STREAM_ID:
            raise NoAvailableStreamIDError("stream ids used up")
        return self.next_stream_id

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                     end_stream: bool = False) -> None:
        """Open stream ``stream_id`` with a request head, or send a request's trailers."""
        if self.closed:
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id < self.next_stream_id or not stream_id & 1:
                if stream_id > _LAST_STREAM_ID:
                    raise NoAvailableStreamIDError("stream ids used up")
                return                               # a stream already gone
            if stream_id > _LAST_STREAM_ID:
                raise NoAvailableStreamIDError("stream ids used up")
            head = False
            for name, value in headers:
                if name == b":method":
                    head = value == b"HEAD"
                    break
            recv = self.initial_window if self._acked \
                else max(self.initial_window, DEFAULT_WINDOW)
            stream = _Stream(self.peer_initial_window, recv, head)
            self.streams[stream_id] = stream
            self.next_stream_id = stream_id + 2
            self.highest_outbound_stream_id = stream_id
        elif not stream.local_open:
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
        if stream is None or not stream.local_open or self.closed:
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
        if self.closed or (self.streams.pop(stream_id, None) is None
                           and stream_id in self._reset_ids):
            return
        self._forget(stream_id)
        self._out.append(frame_head(4, RST_STREAM, 0, stream_id) + _U32.pack(error_code))

    def increment_flow_control_window(self, increment: int, stream_id: int = 0) -> None:
        """Credit ``increment`` bytes to the connection (``stream_id`` 0) or an open stream."""
        if self.closed or increment <= 0:
            return
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is None or not stream.remote_open:
                return
            stream.recv_window += increment
        else:
            self.recv_window += increment
        self._out.append(window_update(stream_id, increment))

    def close_connection(self, error_code: int = NO_ERROR) -> None:
        """GOAWAY (its last stream id 0: we accept no streams); ours in flight finish."""
        if not self.closed:
            self._out.append(goaway(0, error_code))

    def local_flow_control_window(self, stream_id: int) -> int:
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


def _response_status(fields: list[tuple[bytes, bytes]]) -> int:
    """The :status of a well-formed response head (RFC 9113 8.3.2, 8.2), else 0."""
    status = 0
    regular = False
    for name, value in fields:
        if name[:1] == b":":
            if regular or name != b":status" or status or len(value) != 3 \
                    or not value.isdigit():
                return 0
            status = int(value)
        else:
            regular = True
            if _BAD_NAME.search(name) is not None or name in _CONNECTION_SPECIFIC \
                    or (name == b"te" and value != b"trailers"):
                return 0
        if _BAD_VALUE.search(value) is not None:
            return 0
    return status


def _trailers_error(fields: list[tuple[bytes, bytes]]) -> bool:
    for name, value in fields:
        if name[:1] == b":" or _BAD_NAME.search(name) is not None \
                or name in _CONNECTION_SPECIFIC or _BAD_VALUE.search(value) is not None:
            return True
    return False
