"""The upstream frame layer (``h2_client_conn``) frame by frame, against ``h2``'s server side.

The codec's behaviour through a real worker (pools, retries of unprocessed
streams, flow control end to end) is in tests/test_h2_upstream.py and the
gRPC tests; here each rule the client layer enforces gets its own frames
and its own answer.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.protocol import h2_client_conn as cc
from meshgate.protocol import h2_conn as c
from meshgate.protocol.h2_client_conn import ClientConnection, NoAvailableStreamIDError
from meshgate.protocol.h2_conn import PREFACE, ProtocolError

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"up"),
           (b":path", b"/x")]
OK = [(b":status", b"200")]


def frames(data: bytes) -> list[Frame]:
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def sent(conn: ClientConnection, kind: type[Frame]) -> list[Any]:
    return [f for f in frames(conn.data_to_send()) if isinstance(f, kind)]


def connected(**kw: Any) -> ClientConnection:
    """A client past the handshake (the server's SETTINGS read) with stream 1 open."""
    conn = ClientConnection(**kw)
    conn.initiate_connection()
    conn.receive_data(SettingsFrame(0).serialize())
    conn.send_headers(conn.get_next_available_stream_id(), REQUEST, end_stream=True)
    conn.data_to_send()
    return conn


def headers_frame(sid: int, fields: list[tuple[bytes, bytes]], *flags: str,
                  encoder: hpack.Encoder | None = None) -> bytes:
    frame = HeadersFrame(sid, bytes((encoder or hpack.Encoder()).encode(fields)))
    for flag in ("END_HEADERS", *flags):
        frame.flags.add(flag)
    return frame.serialize()


def data_frame(sid: int, data: bytes, *flags: str, pad: int = 0) -> bytes:
    frame = DataFrame(sid, data)
    if pad:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    for flag in flags:
        frame.flags.add(flag)
    return frame.serialize()


def raw(kind: int, flags: int, sid: int, body: bytes) -> bytes:
    """A frame hyperframe would refuse to build."""
    return len(body).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + body


def fails_with(conn: ClientConnection, data: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        conn.receive_data(data)
    assert caught.value.error_code == code
    (goaway,) = [f for f in frames(conn.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway.error_code == code and goaway.last_stream_id == 0
    assert conn.receive_data(b"anything") == []            # nothing after the end


def stream_reset(conn: ClientConnection, data: bytes, code: int, sid: int = 1) -> None:
    """``data`` resets stream ``sid`` with ``code``, reported as ``StreamReset``."""
    events = conn.receive_data(data)
    resets = [e for e in events if isinstance(e, c.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(sid, code)]
    (rst,) = sent(conn, RstStreamFrame)
    assert (rst.stream_id, rst.error_code) == (sid, code)
    assert sid not in conn.streams


def server() -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    peer.initiate_connection()
    return peer


# -- whole exchanges with h2's server ------------------------------------------------
def test_request_and_response_round_trip_byte_by_byte() -> None:
    conn = ClientConnection(max_streams=10, initial_window_size=100000,
                            never_indexed=frozenset({b"authorization"}))
    peer = server()
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    assert sid == 1
    big = [*REQUEST, (b"x-big", b"v" * 40000), (b"authorization", b"secret")]
    conn.send_headers(sid, big)                       # HEADERS + CONTINUATIONs
    assert conn.get_next_available_stream_id() == 3
    conn.send_data(sid, b"hello")
    conn.send_headers(sid, [(b"x-trailer", b"t")], end_stream=True)
    got = peer.receive_data(conn.data_to_send())
    remote = next(e for e in got if isinstance(e, h2.events.RemoteSettingsChanged))
    assert remote.changed_settings[h2.settings.SettingCodes.ENABLE_PUSH].new_value == 0
    assert remote.changed_settings[
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE].new_value == 100000
    request = next(e for e in got if isinstance(e, h2.events.RequestReceived))
    assert request.headers == big
    assert isinstance(request.headers[-1], hpack.NeverIndexedHeaderTuple)
    assert [e.data for e in got if isinstance(e, h2.events.DataReceived)] == [b"hello"]
    assert any(isinstance(e, h2.events.TrailersReceived) for e in got)

    peer.send_headers(1, [(b":status", b"100")])
    peer.send_headers(1, [(b":status", b"200"), (b"content-length", b"4")])
    peer.send_data(1, b"body")
    peer.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    events: list[Any] = []
    for byte in peer.data_to_send():                  # every frame split at every boundary
        events += conn.receive_data(bytes([byte]))
    assert kinds(events) == ["RemoteSettingsChanged", "SettingsAcknowledged",
                             "InformationalResponseReceived", "ResponseReceived",
                             "DataReceived", "TrailersReceived", "StreamEnded"]
    assert events[3].headers == [(b":status", b"200"), (b"content-length", b"4")]
    assert events[3].stream_ended is None
    assert events[4].data == b"body" and events[5].headers == [(b"grpc-status", b"0")]
    assert conn.streams == {}                          # both sides ended: forgotten
    assert frames(conn.data_to_send())[0].flags == {"ACK"}   # the server's SETTINGS acked


def test_a_response_ending_with_its_head_carries_stream_ended() -> None:
    conn = connected()
    events = conn.receive_data(headers_frame(1, [(b":status", b"200"),
                                                 (b"grpc-status", b"14")], "END_STREAM"))
    assert kinds(events) == ["ResponseReceived", "StreamEnded"]
    assert events[0].stream_ended is events[1]
    assert conn.streams == {}


def test_the_preface_and_settings_open_the_connection() -> None:
    conn = ClientConnection(max_streams=7, initial_window_size=1 << 20)
    conn.initiate_connection()
    out = conn.data_to_send()
    assert out.startswith(PREFACE)
    (opening,) = frames(out[len(PREFACE):])
    assert isinstance(opening, SettingsFrame)
    assert opening.settings == {2: 0, 3: 7, 4: 1 << 20}


def test_stream_ids_are_odd_increasing_and_run_out() -> None:
    conn = connected()
    assert conn.get_next_available_stream_id() == 3
    conn.send_headers(3, REQUEST)
    conn.send_headers(5, REQUEST)
    assert conn.get_next_available_stream_id() == 7
    conn.next_stream_id = 2**31 - 1
    assert conn.get_next_available_stream_id() == 2**31 - 1
    conn.send_headers(2**31 - 1, REQUEST, end_stream=True)
    with pytest.raises(NoAvailableStreamIDError):
        conn.get_next_available_stream_id()


def test_settings_and_ping_are_acknowledged() -> None:
    conn = connected()
    events = conn.receive_data(SettingsFrame(0, settings={3: 5, 4: 1000, 5: 20000,
                                                          1: 0, 2: 1}).serialize()
                               + PingFrame(0, b"abcdefgh").serialize())
    assert kinds(events) == ["RemoteSettingsChanged"]
    out = frames(conn.data_to_send())
    assert isinstance(out[0], SettingsFrame) and "ACK" in out[0].flags
    assert isinstance(out[1], PingFrame) and "ACK" in out[1].flags
    assert out[1].opaque_data == b"abcdefgh"
    assert (conn.peer_max_streams, conn.peer_initial_window,
            conn.max_outbound_frame_size) == (5, 1000, 20000)
    ack = PingFrame(0, b"12345678")
    ack.flags.add("ACK")
    (pong,) = conn.receive_data(ack.serialize())
    assert isinstance(pong, cc.PingAckReceived) and pong.ping_data == b"12345678"
    assert conn.data_to_send() == b""                  # an ack is not answered


def test_a_new_initial_window_moves_open_streams_windows() -> None:
    conn = ClientConnection()
    conn.initiate_connection()
    conn.receive_data(SettingsFrame(0).serialize())
    conn.send_headers(1, [(b":method", b"POST"), *REQUEST[1:]])
    conn.send_data(1, b"x" * 1000)
    assert conn.local_flow_control_window(1) == 64535
    conn.receive_data(SettingsFrame(0, settings={4: 100}).serialize())
    assert conn.streams[1].send_window == -900          # may go negative (RFC 9113 6.9.2)
    assert conn.local_flow_control_window(1) == -900
    (update,) = conn.receive_data(WindowUpdateFrame(1, window_increment=1000).serialize())
    assert isinstance(update, c.WindowUpdated) and update.delta == 1000
    assert conn.local_flow_control_window(1) == 100
    conn.send_headers(3, REQUEST)                        # new streams start at the new value
    assert conn.streams[3].send_window == 100


def test_large_frames_are_allowed_once_the_server_says_so() -> None:
    conn = connected()
    conn.send_headers(3, REQUEST)
    conn.data_to_send()
    conn.receive_data(SettingsFrame(0, settings={5: 32768}).serialize())
    conn.data_to_send()
    conn.send_headers(3, [(b"x-big", b"v" * 30000)], end_stream=True)   # trailers, one frame
    (trailers,) = sent(conn, HeadersFrame)
    assert {"END_HEADERS", "END_STREAM"} <= trailers.flags


# -- response heads (RFC 9113 8.3.2): malformed ones are stream errors ----------------
@pytest.mark.parametrize("fields", [
    [(b"content-type", b"text/plain")],                             # no :status
    [(b":status", b"200"), (b":status", b"200")],                   # repeated
    [(b":status", b"20")],                                          # not three digits
    [(b":status", b"abc")],
    [(b":status", b"200"), (b":path", b"/")],                       # a request pseudo field
    [(b"x", b"1"), (b":status", b"200")],                           # pseudo after regular
    [(b":status", b"200"), (b"connection", b"close")],              # connection-specific
    [(b":status", b"200"), (b"transfer-encoding", b"chunked")],
    [(b":status", b"200"), (b"te", b"gzip")],
    [(b":status", b"200"), (b"Upper", b"x")],                       # upper-case name
    [(b":status", b"200"), (b"x", b"a\r\nb")],                      # CR LF in a value
    [(b":status", b"200"), (b"x", b" padded")],
    [(b":status", b"101")],                                         # no upgrade in HTTP/2
    [(b":status", b"099")],
    [(b":status", b"200"), (b"content-length", b"x1")],
    [(b":status", b"200"), (b"content-length", b"1"), (b"content-length", b"2")],
])
def test_malformed_response_heads_reset_the_stream(fields: list[tuple[bytes, bytes]]) -> None:
    conn = connected()
    conn.send_headers(3, REQUEST, end_stream=True)
    conn.data_to_send()
    stream_reset(conn, headers_frame(1, fields), c.PROTOCOL_ERROR)
    assert 3 in conn.streams                          # the others go on
    events = conn.receive_data(headers_frame(3, OK, "END_STREAM"))
    assert kinds(events) == ["ResponseReceived", "StreamEnded"]


def test_an_informational_head_ending_the_stream_is_malformed() -> None:
    conn = connected()
    stream_reset(conn, headers_frame(1, [(b":status", b"103")], "END_STREAM"),
                 c.PROTOCOL_ERROR)


def test_data_before_the_final_head_is_malformed() -> None:
    conn = connected()
    conn.receive_data(headers_frame(1, [(b":status", b"100")]))
    stream_reset(conn, data_frame(1, b"early"), c.PROTOCOL_ERROR)


def test_content_length_must_match_the_data() -> None:
    conn = connected()
    conn.receive_data(headers_frame(1, [(b":status", b"200"), (b"content-length", b"3")]))
    stream_reset(conn, data_frame(1, b"four"), c.PROTOCOL_ERROR)     # more than announced
    conn.send_headers(3, REQUEST, end_stream=True)
    conn.receive_data(headers_frame(3, [(b":status", b"200"), (b"content-length", b"3")]))
    conn.data_to_send()
    stream_reset(conn, data_frame(3, b"ab", "END_STREAM"), c.PROTOCOL_ERROR, sid=3)
    conn.send_headers(5, REQUEST, end_stream=True)
    conn.data_to_send()
    stream_reset(conn, headers_frame(5, [(b":status", b"200"), (b"content-length", b"3")],
                                     "END_STREAM"), c.PROTOCOL_ERROR, sid=5)
    conn.send_headers(7, REQUEST, end_stream=True)
    conn.receive_data(headers_frame(7, [(b":status", b"200"), (b"content-length", b"3")]))
    conn.receive_data(data_frame(7, b"ab"))
    conn.data_to_send()
    stream_reset(conn, headers_frame(7, [(b"grpc-status", b"0")], "END_STREAM"),
                 c.PROTOCOL_ERROR, sid=7)


def test_content_length_does_not_bind_head_requests_and_204() -> None:
    conn = connected()
    conn.send_headers(3, [(b":method", b"HEAD"), *REQUEST[1:]], end_stream=True)
    events = conn.receive_data(headers_frame(3, [(b":status", b"200"),
                                                 (b"content-length", b"1000")], "END_STREAM"))
    assert kinds(events) == ["ResponseReceived", "StreamEnded"]
    events = conn.receive_data(headers_frame(1, [(b":status", b"304"),
                                                 (b"content-length", b"10")], "END_STREAM"))
    assert kinds(events) == ["ResponseReceived", "StreamEnded"]


@pytest.mark.parametrize("fields", [
    [(b":status", b"200")], [(b"grpc-status", b"0"), (b"connection", b"x")],
    [(b"Grpc-Status", b"0")],
])
def test_malformed_trailers_reset_the_stream(fields: list[tuple[bytes, bytes]]) -> None:
    conn = connected()
    conn.receive_data(headers_frame(1, OK))
    stream_reset(conn, headers_frame(1, fields, "END_STREAM"), c.PROTOCOL_ERROR)


def test_a_second_head_must_end_the_stream() -> None:
    conn = connected()
    conn.receive_data(headers_frame(1, OK))
    stream_reset(conn, headers_frame(1, [(b"grpc-status", b"0")]), c.PROTOCOL_ERROR)


def test_frames_after_end_stream_reset_the_stream() -> None:
    conn = ClientConnection()
    conn.initiate_connection()
    conn.receive_data(SettingsFrame(0).serialize())
    conn.send_headers(1, REQUEST)                     # our side still open
    conn.receive_data(headers_frame(1, OK, "END_STREAM"))
    conn.data_to_send()
    stream_reset(conn, data_frame(1, b"late"), c.STREAM_CLOSED)


# -- connection errors -----------------------------------------------------------------
def test_the_first_frame_must_be_settings() -> None:
    conn = ClientConnection()
    conn.initiate_connection()
    conn.data_to_send()
    fails_with(conn, PingFrame(0, b"12345678").serialize(), c.PROTOCOL_ERROR)


def test_an_announced_oversized_frame_fails_before_its_payload() -> None:
    conn = connected()
    fails_with(conn, b"\x00\x40\x01\x00\x00\x00\x00\x00\x01", c.FRAME_SIZE_ERROR)


@pytest.mark.parametrize("data", [
    headers_frame(2, OK),                                          # a pushed stream
    headers_frame(3, OK),                                          # a stream we never opened
    data_frame(3, b"x"),
    raw(0, 0, 0, b"x"),
    WindowUpdateFrame(3, window_increment=1).serialize(),
    RstStreamFrame(5).serialize(),
    raw(3, 0, 0, bytes(4)),
    PushPromiseFrame(1, promised_stream_id=2, data=hpack.Encoder().encode(REQUEST),
                     flags=["END_HEADERS"]).serialize(),
    WindowUpdateFrame(0, window_increment=0).serialize(),
    SettingsFrame(0, settings={5: 100}).serialize(),               # MAX_FRAME_SIZE too small
    SettingsFrame(0, settings={2: 2}).serialize(),
    raw(6, 0, 1, b"12345678"),
    raw(7, 0, 1, bytes(8)),
    raw(2, 0, 0, bytes(5)),
    raw(9, 4, 1, b""),                                              # no block open
    raw(1, 4, 0, b"\x88"),
])
def test_frames_no_server_may_send(data: bytes) -> None:
    fails_with(connected(), data, c.PROTOCOL_ERROR)


@pytest.mark.parametrize("data", [
    b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"1234567",          # short PING
    b"\x00\x00\x03\x08\x00\x00\x00\x00\x00" + b"123",              # short WINDOW_UPDATE
    b"\x00\x00\x03\x03\x00\x00\x00\x00\x01" + b"123",              # short RST_STREAM
    b"\x00\x00\x04\x07\x00\x00\x00\x00\x00" + b"1234",             # short GOAWAY
    b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"12345",            # SETTINGS not 6n
    b"\x00\x00\x01\x04\x01\x00\x00\x00\x00" + b"1",                # SETTINGS ack w/ payload
])
def test_frames_of_the_wrong_length(data: bytes) -> None:
    fails_with(connected(), data, c.FRAME_SIZE_ERROR)


def test_flow_control_connection_errors() -> None:
    conn = connected()
    fails_with(conn, SettingsFrame(0, settings={4: 2**31}).serialize(),
               c.FLOW_CONTROL_ERROR)
    conn = connected()
    conn.receive_data(WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535).serialize())
    fails_with(conn, WindowUpdateFrame(0, window_increment=1).serialize(),
               c.FLOW_CONTROL_ERROR)
    conn = connected()
    conn.send_headers(3, REQUEST, end_stream=True)
    conn.send_headers(5, REQUEST, end_stream=True)
    for sid in (1, 3, 5):
        conn.receive_data(headers_frame(sid, OK))
        conn.increment_flow_control_window(30000, sid)
    conn.receive_data(data_frame(1, b"x" * 16384) + data_frame(1, b"x" * 16384))
    fails_with(conn, data_frame(3, b"x" * 16384) + data_frame(5, b"x" * 16384),
               c.FLOW_CONTROL_ERROR)                 # past the connection's 65535


def test_a_frame_inside_a_header_block_is_a_protocol_error() -> None:
    conn = connected()
    frame = HeadersFrame(1, hpack.Encoder().encode(OK))
    fails_with(conn, frame.serialize() + PingFrame(0, b"12345678").serialize(),
               c.PROTOCOL_ERROR)


def test_an_undecodable_block_is_a_compression_error() -> None:
    conn = connected()
    frame = HeadersFrame(1, b"\xff\xff\xff\xff\xff\xff")
    frame.flags.add("END_HEADERS")
    fails_with(conn, frame.serialize(), c.COMPRESSION_ERROR)


def test_a_header_list_over_the_limit_is_calm() -> None:
    conn = connected(max_header_list_size=1000)
    fails_with(conn, headers_frame(1, [*OK, (b"x", b"v" * 2000)]), c.ENHANCE_YOUR_CALM)
    conn = connected(max_header_list_size=1000)
    empty = ContinuationFrame(1, b"").serialize()
    fails_with(conn, HeadersFrame(1, b"").serialize() + empty * 200, c.ENHANCE_YOUR_CALM)


def test_a_block_split_over_continuations_decodes() -> None:
    conn = connected()
    block = hpack.Encoder().encode([*OK, (b"x-long", b"v" * 100)])
    events = conn.receive_data(HeadersFrame(1, block[:10]).serialize()
                               + ContinuationFrame(1, block[10:50]).serialize()
                               + ContinuationFrame(1, block[50:], flags=["END_HEADERS",
                                                                         ]).serialize())
    assert kinds(events) == ["ResponseReceived"]
    assert events[0].headers == [*OK, (b"x-long", b"v" * 100)]


# -- streams we reset, GOAWAY --------------------------------------------------------------
def test_frames_after_our_reset_are_ignored_but_credit_the_connection() -> None:
    conn = connected()
    encoder = hpack.Encoder()
    conn.receive_data(headers_frame(1, [*OK, (b"x-new", b"kept")], encoder=encoder))
    conn.reset_stream(1, c.CANCEL)
    (rst,) = sent(conn, RstStreamFrame)
    assert rst.error_code == c.CANCEL
    conn.reset_stream(1, c.CANCEL)                    # twice: sent once
    assert conn.data_to_send() == b""
    late = (data_frame(1, b"x" * 16384) + data_frame(1, b"x" * 16384)
            + headers_frame(1, [(b"x-new", b"kept")], "END_STREAM", encoder=encoder)
            + WindowUpdateFrame(1, window_increment=5).serialize()
            + RstStreamFrame(1).serialize())
    assert conn.receive_data(late) == []
    updates = sent(conn, WindowUpdateFrame)
    assert {u.stream_id for u in updates} == {0}
    assert sum(u.window_increment for u in updates) == 32768
    assert conn.recv_window == 65535
    conn.send_headers(3, REQUEST, end_stream=True)   # the dynamic table stayed in step
    (head, _) = conn.receive_data(headers_frame(3, [*OK, (b"x-new", b"kept")], "END_STREAM",
                                                encoder=encoder))
    assert head.headers == [*OK, (b"x-new", b"kept")]


def test_rst_stream_from_the_server_is_reported() -> None:
    conn = connected()
    (reset,) = conn.receive_data(RstStreamFrame(1, error_code=c.REFUSED_STREAM).serialize())
    assert isinstance(reset, c.StreamReset)
    assert (reset.stream_id, reset.error_code) == (1, c.REFUSED_STREAM)
    assert conn.streams == {} and conn.data_to_send() == b""


def test_goaway_is_an_event_and_streams_up_to_its_last_id_finish() -> None:
    conn = connected()
    conn.send_headers(3, REQUEST, end_stream=True)
    conn.data_to_send()
    (gone,) = conn.receive_data(GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())
    assert isinstance(gone, c.ConnectionTerminated)
    assert (gone.last_stream_id, gone.error_code) == (1, 0)
    events = conn.receive_data(headers_frame(1, OK) + data_frame(1, b"done", "END_STREAM"))
    assert kinds(events) == ["ResponseReceived", "DataReceived", "StreamEnded"]
    (again,) = conn.receive_data(GoAwayFrame(0, last_stream_id=1, error_code=2).serialize())
    assert again.error_code == 2


def test_our_goaway_leaves_streams_in_flight_running() -> None:
    conn = connected()
    conn.close_connection()
    (goaway,) = sent(conn, GoAwayFrame)
    assert (goaway.last_stream_id, goaway.error_code) == (0, 0)
    events = conn.receive_data(headers_frame(1, OK, "END_STREAM"))
    assert kinds(events) == ["ResponseReceived", "StreamEnded"]


def test_stream_errors_on_open_streams() -> None:
    conn = connected()
    stream_reset(conn, WindowUpdateFrame(1, window_increment=0).serialize(), c.PROTOCOL_ERROR)
    conn = connected()
    stream_reset(conn, WindowUpdateFrame(1, window_increment=2**31 - 1).serialize(),
                 c.FLOW_CONTROL_ERROR)
    conn = connected()
    stream_reset(conn, b"\x00\x00\x04\x02\x00\x00\x00\x00\x01" + b"1234",
                 c.FRAME_SIZE_ERROR)                  # PRIORITY of the wrong length
    conn = connected(initial_window_size=65535)
    conn.receive_data(headers_frame(1, OK))
    conn.receive_data(SettingsFrame(0, settings={}, flags=["ACK"]).serialize())
    conn.receive_data(data_frame(1, b"x" * 16384) * 3 + data_frame(1, b"x" * 16383))
    conn.increment_flow_control_window(65535)         # the connection has room, the stream not
    conn.data_to_send()
    stream_reset(conn, data_frame(1, b"xx"), c.FLOW_CONTROL_ERROR)


def test_credit_goes_out_as_window_updates() -> None:
    conn = connected()
    conn.receive_data(headers_frame(1, OK))
    conn.data_to_send()
    conn.increment_flow_control_window(1000, 1)
    conn.increment_flow_control_window(2000)
    conn.increment_flow_control_window(5, 99)        # no such stream: nothing
    updates = sent(conn, WindowUpdateFrame)
    assert [(u.stream_id, u.window_increment) for u in updates] == [(1, 1000), (0, 2000)]
    assert conn.recv_window == 65535 + 2000


def test_padding_is_stripped_and_counted_in_the_windows() -> None:
    conn = connected()
    conn.receive_data(headers_frame(1, OK))
    (data,) = conn.receive_data(data_frame(1, b"abc", pad=10))
    assert data.data == b"abc" and data.flow_controlled_length == 14
    assert conn.recv_window == 65535 - 14


def test_priority_and_unknown_frames_are_ignored() -> None:
    conn = connected()
    assert conn.receive_data(PriorityFrame(1, depends_on=0, stream_weight=5).serialize()
                             + b"\x00\x00\x02\xfa\x00\x00\x00\x00\x00ab") == []
    assert conn.data_to_send() == b""


def test_sending_on_a_gone_stream_sends_nothing() -> None:
    conn = connected()
    conn.receive_data(RstStreamFrame(1, error_code=c.CANCEL).serialize())
    conn.send_data(1, b"x")
    conn.send_headers(1, [(b"x", b"y")], end_stream=True)
    assert conn.data_to_send() == b""
    assert conn.local_flow_control_window(1) == 0


# -- any bytes ---------------------------------------------------------------------------
frame_bytes = st.builds(
    lambda kind, flags, sid, body: (len(body).to_bytes(3, "big") + bytes([kind, flags])
                                    + sid.to_bytes(4, "big") + body),
    st.integers(0, 10), st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]),
    st.binary(max_size=40))
good_frames = st.sampled_from([
    headers_frame(1, OK), headers_frame(3, [(b":status", b"100")]),
    headers_frame(3, [*OK, (b"content-length", b"2")]), data_frame(1, b"ab"),
    data_frame(3, b"ab", "END_STREAM"), headers_frame(1, [(b"grpc-status", b"0")], "END_STREAM"),
    WindowUpdateFrame(1, window_increment=10).serialize(),
    SettingsFrame(0, settings={4: 10, 3: 1}).serialize(),
    GoAwayFrame(0, last_stream_id=1).serialize(), RstStreamFrame(3).serialize(),
])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(frame_bytes, good_frames, st.binary(max_size=20)), max_size=12),
       st.integers(1, 64))
def test_any_server_bytes_give_events_or_a_protocol_error(pieces: list[bytes],
                                                          chunk: int) -> None:
    conn = ClientConnection()
    conn.initiate_connection()
    conn.send_headers(1, REQUEST)
    conn.send_headers(3, REQUEST, end_stream=True)
    conn.data_to_send()
    data = SettingsFrame(0).serialize() + b"".join(pieces)
    try:
        for pos in range(0, len(data), chunk):
            events = conn.receive_data(data[pos:pos + chunk])
            for event in events:                 # the codec's replies must not break it
                if isinstance(event, c.DataReceived):
                    conn.increment_flow_control_window(event.flow_controlled_length)
                    conn.increment_flow_control_window(event.flow_controlled_length,
                                                       event.stream_id)
                elif isinstance(event, c.WindowUpdated | c.RemoteSettingsChanged):
                    for sid in list(conn.streams):
                        room = min(conn.local_flow_control_window(sid), 5)
                        if room > 0:
                            conn.send_data(sid, b"x" * room, end_stream=True)
                else:
                    assert isinstance(event, cc.ResponseReceived | cc.InformationalResponseReceived
                                      | c.TrailersReceived | c.StreamEnded | c.StreamReset
                                      | c.ConnectionTerminated | cc.SettingsAcknowledged
                                      | cc.PingAckReceived)
    except ProtocolError as exc:
        (goaway,) = [f for f in frames(conn.data_to_send()) if isinstance(f, GoAwayFrame)]
        assert goaway.error_code == exc.error_code
        return
    frames(conn.data_to_send())                  # what we send parses
