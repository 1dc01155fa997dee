"""The downstream frame layer (``h2_conn``) frame by frame, against ``h2``'s client side.

The gateway-level behaviour (floods, resets, windows through a real worker)
is in tests/test_http2.py and tests/test_http2_abuse.py; here each RFC 9113
rule the layer enforces gets its own frames and its own answer.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
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
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.protocol import h2_conn as c
from meshgate.protocol.h2_conn import PREFACE, ProtocolError, ServerConnection

REQUEST = [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"http"),
           (b":authority", b"gw")]


def server(**kw: int) -> ServerConnection:
    args = {"max_frame_size": 16384, "initial_window_size": 65535,
            "connection_window": 65535, "max_header_list_size": 65536, "max_streams": 200}
    args.update(kw)
    conn = ServerConnection(**args)
    conn.receive_data(PREFACE + SettingsFrame(0).serialize())
    conn.data_to_send()
    return conn


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    conn.initiate_connection()
    return conn


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


def headers_frame(sid: int, fields: list[tuple[bytes, bytes]], *flags: str,
                  encoder: hpack.Encoder | None = None) -> bytes:
    frame = HeadersFrame(sid, bytes((encoder or hpack.Encoder()).encode(fields)))
    for flag in ("END_HEADERS", *flags):
        frame.flags.add(flag)
    return frame.serialize()


def fails_with(conn: ServerConnection, data: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        conn.receive_data(data)
    assert caught.value.error_code == code
    (goaway,) = [f for f in frames(conn.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway.error_code == code
    assert conn.receive_data(b"anything") == []            # nothing after the end


def sent(conn: ServerConnection, kind: type[Frame]) -> list[Any]:
    return [f for f in frames(conn.data_to_send()) if isinstance(f, kind)]


# -- a whole exchange with h2's client ------------------------------------------------
def test_request_and_response_round_trip_byte_by_byte() -> None:
    conn = ServerConnection(16384, 65535, 65535, 65536, 200)
    peer = client()
    peer.send_headers(1, [*REQUEST, (b"content-length", b"5")])
    peer.send_data(1, b"hello", end_stream=True)
    events: list[Any] = []
    for byte in peer.data_to_send():           # every frame split at every boundary
        events += conn.receive_data(bytes([byte]))
    assert kinds(events) == ["RemoteSettingsChanged", "RequestReceived", "DataReceived",
                             "StreamEnded"]
    assert events[1].headers == [*REQUEST, (b"content-length", b"5")]
    assert events[1].stream_ended is None and events[2].data == b"hello"
    big = [(b":status", b"200"), (b"x-big", b"v" * 40000)]    # HEADERS + CONTINUATIONs
    conn.send_headers(1, big)
    conn.send_data(1, b"body")
    conn.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    got = peer.receive_data(conn.data_to_send())
    response = next(e for e in got if isinstance(e, h2.events.ResponseReceived))
    assert response.headers == big
    assert [e.data for e in got if isinstance(e, h2.events.DataReceived)] == [b"body"]
    assert any(isinstance(e, h2.events.TrailersReceived) for e in got)
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)
    assert conn.streams == {}                  # both sides ended: forgotten


def test_settings_and_ping_are_acknowledged() -> None:
    conn = server()
    events = conn.receive_data(SettingsFrame(0, settings={4: 1000, 5: 20000}).serialize()
                               + PingFrame(0, b"abcdefgh").serialize())
    assert kinds(events) == ["RemoteSettingsChanged", "PingReceived"]
    out = frames(conn.data_to_send())
    assert isinstance(out[0], SettingsFrame) and "ACK" in out[0].flags
    assert isinstance(out[1], PingFrame) and "ACK" in out[1].flags
    assert out[1].opaque_data == b"abcdefgh"
    assert conn.max_outbound_frame_size == 20000 and conn.peer_initial_window == 1000


def test_a_new_initial_window_moves_open_streams_windows() -> None:
    conn = server()
    conn.receive_data(headers_frame(1, REQUEST, "END_STREAM"))
    conn.send_data(1, b"x" * 1000)
    assert conn.local_flow_control_window(1) == 64535
    conn.receive_data(SettingsFrame(0, settings={4: 100}).serialize())
    assert conn.streams[1].send_window == -900          # may go negative (RFC 9113 6.9.2)
    assert conn.local_flow_control_window(1) == -900
    conn.receive_data(WindowUpdateFrame(1, window_increment=1000).serialize())
    assert conn.local_flow_control_window(1) == 100


# -- connection errors -----------------------------------------------------------------
@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n\r\n" + b"x" * 20, b"PRI * HTTP/1.1"])
def test_a_wrong_preface_is_a_protocol_error(data: bytes) -> None:
    fails_with(ServerConnection(16384, 65535, 65535, 65536, 200), data, c.PROTOCOL_ERROR)


def test_the_first_frame_must_be_settings() -> None:
    conn = ServerConnection(16384, 65535, 65535, 65536, 200)
    fails_with(conn, PREFACE + PingFrame(0, b"12345678").serialize(), c.PROTOCOL_ERROR)


def test_an_announced_oversized_frame_fails_before_its_payload() -> None:
    fails_with(server(), b"\x00\x40\x01\x00\x00", c.FRAME_SIZE_ERROR)   # 16385, 2 bytes sent


def test_a_frame_inside_a_header_block_is_a_protocol_error() -> None:
    conn = server()
    conn.receive_data(HeadersFrame(1, bytes(hpack.Encoder().encode(REQUEST))).serialize())
    assert conn.pending_header_bytes > 0
    fails_with(conn, PingFrame(0, b"12345678").serialize(), c.PROTOCOL_ERROR)


def test_continuation_on_another_stream_is_a_protocol_error() -> None:
    conn = server()
    conn.receive_data(HeadersFrame(1, bytes(hpack.Encoder().encode(REQUEST))).serialize())
    fails_with(conn, ContinuationFrame(3, b"").serialize(), c.PROTOCOL_ERROR)


def test_a_header_block_over_the_list_limit_while_it_arrives_is_calm() -> None:
    conn = server(max_header_list_size=2000)
    conn.receive_data(HeadersFrame(1, bytes(hpack.Encoder().encode(REQUEST))).serialize())
    fails_with(conn, ContinuationFrame(1, b"\x00" * 2000).serialize(), c.ENHANCE_YOUR_CALM)


def test_empty_continuations_count_against_the_block() -> None:
    conn = server(max_header_list_size=2000)
    conn.receive_data(HeadersFrame(1, b"\x82").serialize())
    fails_with(conn, ContinuationFrame(1, b"").serialize() * 250, c.ENHANCE_YOUR_CALM)


def test_an_undecodable_block_is_a_compression_error() -> None:
    frame = HeadersFrame(1, b"\xbf")          # index 63: the dynamic table is empty
    frame.flags.add("END_HEADERS")
    fails_with(server(), frame.serialize(), c.COMPRESSION_ERROR)


def test_headers_on_stream_zero_or_an_even_stream() -> None:
    fails_with(server(), b"\x00\x00\x01\x01\x05\x00\x00\x00\x00\x82", c.PROTOCOL_ERROR)
    fails_with(server(), headers_frame(2, REQUEST), c.PROTOCOL_ERROR)


def test_a_stream_id_going_back_is_refused() -> None:
    conn = server()
    encoder = hpack.Encoder()
    conn.receive_data(headers_frame(5, REQUEST, "END_STREAM", encoder=encoder))
    fails_with(conn, headers_frame(3, REQUEST, encoder=encoder), c.STREAM_CLOSED)


@pytest.mark.parametrize("fields", [
    [*REQUEST, (b"Upper", b"1")],
    [*REQUEST, (b"connection", b"close")],
    [*REQUEST, (b"te", b"gzip")],
    [*REQUEST, (b"x", b"a\r\nb")],
    [*REQUEST, (b"x", b" padded")],
    [*REQUEST, (b":path", b"/again")],
    [(b"x", b"1"), *REQUEST],
    [f for f in REQUEST if f[0] != b":scheme"],
    [(b":method", b"GET"), (b":path", b""), (b":scheme", b"http")],
    [*REQUEST, (b":status", b"200")],
    [*REQUEST, (b"host", b"other")],
    [(b":method", b"CONNECT"), (b":path", b"/"), (b":authority", b"gw")],
    [*REQUEST, (b":protocol", b"websocket")],
])
def test_malformed_request_heads_are_protocol_errors(fields: list[tuple[bytes, bytes]],
                                                     ) -> None:
    fails_with(server(), headers_frame(1, fields), c.PROTOCOL_ERROR)


def test_connect_and_extended_connect_heads_pass() -> None:
    conn = server()
    encoder = hpack.Encoder()
    events = conn.receive_data(headers_frame(1, [(b":method", b"CONNECT"),
                                                 (b":authority", b"gw:443")], encoder=encoder)
                               + headers_frame(3, [(b":method", b"CONNECT"),
                                                   (b":protocol", b"websocket"),
                                                   *REQUEST[1:]], encoder=encoder))
    assert kinds(events) == ["RequestReceived", "RequestReceived"]


def test_trailers_must_end_the_stream_and_carry_no_pseudo_fields() -> None:
    conn = server()
    encoder = hpack.Encoder()
    conn.receive_data(headers_frame(1, REQUEST, encoder=encoder))
    fails_with(conn, headers_frame(1, [(b"x-t", b"1")], encoder=encoder), c.PROTOCOL_ERROR)
    conn = server()
    encoder = hpack.Encoder()
    conn.receive_data(headers_frame(1, REQUEST, encoder=encoder))
    fails_with(conn, headers_frame(1, [(b":path", b"/")], "END_STREAM", encoder=encoder),
               c.PROTOCOL_ERROR)


def test_data_on_an_idle_stream_or_stream_zero() -> None:
    fails_with(server(), DataFrame(1, b"x").serialize(), c.PROTOCOL_ERROR)
    fails_with(server(), b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x", c.PROTOCOL_ERROR)


def test_data_past_the_connection_window_is_a_flow_control_error() -> None:
    conn = server(initial_window_size=100000, connection_window=65535)
    conn.receive_data(headers_frame(1, REQUEST))
    conn.receive_data(DataFrame(1, b"x" * 16384).serialize() * 3)
    fails_with(conn, DataFrame(1, b"x" * 16384).serialize(), c.FLOW_CONTROL_ERROR)


def test_window_update_overflow_and_zero() -> None:
    fails_with(server(), WindowUpdateFrame(0, window_increment=2**31 - 65535).serialize(),
               c.FLOW_CONTROL_ERROR)
    fails_with(server(), WindowUpdateFrame(0, window_increment=0).serialize(),
               c.PROTOCOL_ERROR)


@pytest.mark.parametrize("frame", [
    SettingsFrame(0, settings={4: 2**31}),
], ids=["window"])
def test_settings_out_of_range_flow(frame: Frame) -> None:
    fails_with(server(), frame.serialize(), c.FLOW_CONTROL_ERROR)


@pytest.mark.parametrize("data", [
    SettingsFrame(0, settings={5: 1000}).serialize(),
    SettingsFrame(0, settings={2: 2}).serialize(),
    b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"12345678",      # PING on stream 1
    b"\x00\x00\x04\x03\x00\x00\x00\x00\x00" + b"\x00" * 4,      # RST_STREAM on 0
    RstStreamFrame(7).serialize(),                      # an idle stream
    b"\x00\x00\x05\x02\x00\x00\x00\x00\x00" + b"\x00" * 5,      # PRIORITY on 0
    b"\x00\x00\x00\x05\x00\x00\x00\x00\x01",           # PUSH_PROMISE
], ids=["frame-size", "push", "ping-stream", "rst-0", "rst-idle", "priority-0", "push-promise"])
def test_other_protocol_errors(data: bytes) -> None:
    fails_with(server(), data, c.PROTOCOL_ERROR)


@pytest.mark.parametrize("data", [
    b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"1234567",      # PING of 7
    b"\x00\x00\x03\x03\x00\x00\x00\x00\x01" + b"123",          # RST_STREAM of 3
    b"\x00\x00\x05\x08\x00\x00\x00\x00\x00" + b"12345",        # WINDOW_UPDATE of 5
    b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"12345",        # SETTINGS of 5
    b"\x00\x00\x01\x04\x01\x00\x00\x00\x00" + b"1",            # SETTINGS ack with a payload
])
def test_frames_of_the_wrong_length(data: bytes) -> None:
    fails_with(server(), data, c.FRAME_SIZE_ERROR)


# -- stream errors and what is ignored ---------------------------------------------
def test_data_after_end_stream_resets_the_stream() -> None:
    conn = server()
    conn.receive_data(headers_frame(1, REQUEST, "END_STREAM"))
    events = conn.receive_data(DataFrame(1, b"late").serialize())
    assert kinds(events) == ["StreamReset"]
    (rst,) = sent(conn, RstStreamFrame)
    assert rst.error_code == c.STREAM_CLOSED


def test_data_past_a_stream_window_resets_only_that_stream() -> None:
    conn = server(initial_window_size=65535, connection_window=1 << 20)
    conn.receive_data(headers_frame(1, REQUEST))
    events = conn.receive_data(DataFrame(1, b"x" * 16384).serialize() * 4
                               + DataFrame(1, b"x").serialize())
    assert kinds(events)[-1] == "StreamReset" and conn.streams == {}
    (rst,) = sent(conn, RstStreamFrame)
    assert rst.error_code == c.FLOW_CONTROL_ERROR


def test_frames_after_our_reset_are_ignored_but_credit_the_connection() -> None:
    conn = server(connection_window=65535)
    encoder = hpack.Encoder()
    conn.receive_data(headers_frame(1, REQUEST, encoder=encoder))
    conn.reset_stream(1, c.CANCEL)
    conn.data_to_send()
    events = conn.receive_data(DataFrame(1, b"x" * 16384).serialize() * 2
                               + headers_frame(1, [(b"x-t", b"1")], "END_STREAM",
                                               encoder=encoder)
                               + WindowUpdateFrame(1, window_increment=5).serialize()
                               + RstStreamFrame(1).serialize())
    assert events == []
    (update,) = sent(conn, WindowUpdateFrame)
    assert update.stream_id == 0 and update.window_increment == 32768


def test_padding_is_stripped_and_counted_in_the_windows() -> None:
    conn = server()
    headers = HeadersFrame(1, bytes(hpack.Encoder().encode(REQUEST)), pad_length=10)
    for flag in ("END_HEADERS", "PADDED", "PRIORITY"):
        headers.flags.add(flag)
    headers.depends_on = 0
    data = DataFrame(1, b"abc", pad_length=20)
    data.flags.add("PADDED")
    data.flags.add("END_STREAM")
    events = conn.receive_data(headers.serialize() + data.serialize())
    assert kinds(events) == ["RequestReceived", "DataReceived", "StreamEnded"]
    assert events[0].headers == REQUEST
    assert (events[1].data, events[1].flow_controlled_length) == (b"abc", 24)


def test_padding_longer_than_the_frame_is_a_protocol_error() -> None:
    conn = server()
    conn.receive_data(headers_frame(1, REQUEST))
    fails_with(conn, b"\x00\x00\x02\x00\x08\x00\x00\x00\x01\x05x", c.PROTOCOL_ERROR)


def test_priority_and_unknown_frames_are_ignored() -> None:
    conn = server()
    events = conn.receive_data(PriorityFrame(9, depends_on=1).serialize()
                               + b"\x00\x00\x08\xee\x00\x00\x00\x00\x00whatever")
    assert events == []
    assert kinds(conn.receive_data(headers_frame(3, REQUEST))) == ["RequestReceived"]


def test_a_zero_window_update_on_a_stream_resets_it() -> None:
    conn = server()
    conn.receive_data(headers_frame(1, REQUEST))
    assert kinds(conn.receive_data(WindowUpdateFrame(1).serialize())) == ["StreamReset"]
    (rst,) = sent(conn, RstStreamFrame)
    assert rst.error_code == c.PROTOCOL_ERROR


def test_streams_over_the_hard_cap_end_the_connection() -> None:
    conn = server(max_streams=2)
    encoder = hpack.Encoder()
    conn.receive_data(headers_frame(1, REQUEST, encoder=encoder)
                      + headers_frame(3, REQUEST, encoder=encoder))
    fails_with(conn, headers_frame(5, REQUEST, encoder=encoder), c.PROTOCOL_ERROR)


def test_received_data_is_credited_once_half_a_window_is_consumed() -> None:
    conn = server(initial_window_size=65535, connection_window=65535)
    conn.receive_data(headers_frame(1, REQUEST))
    conn.receive_data(DataFrame(1, b"x" * 16384).serialize() * 2)
    conn.acknowledge_received_data(16384, 1)
    assert sent(conn, WindowUpdateFrame) == []
    conn.acknowledge_received_data(16384, 1)
    updates = sorted((f.stream_id, f.window_increment) for f in sent(conn, WindowUpdateFrame))
    assert updates == [(0, 32768), (1, 32768)]


def test_peer_goaway_and_reset_are_reported() -> None:
    conn = server()
    conn.receive_data(headers_frame(1, REQUEST))
    events = conn.receive_data(RstStreamFrame(1, error_code=8).serialize()
                               + GoAwayFrame(0, last_stream_id=1).serialize())
    assert kinds(events) == ["StreamReset", "ConnectionTerminated"]
    assert events[0].error_code == 8


# -- anything a peer may send ------------------------------------------------------
frame_bytes = st.builds(
    lambda kind, flags, sid, body: (len(body).to_bytes(3, "big") + bytes([kind, flags])
                                    + sid.to_bytes(4, "big") + body),
    st.integers(0, 10), st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]),
    st.binary(max_size=40))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(frame_bytes, st.binary(max_size=20)), max_size=12),
       st.integers(1, 64))
def test_any_bytes_give_events_or_a_protocol_error(pieces: list[bytes], chunk: int) -> None:
    conn = server(max_streams=4)
    data = b"".join(pieces)
    try:
        for pos in range(0, len(data), chunk):
            events = conn.receive_data(data[pos:pos + chunk])
            for event in events:                 # the codec's replies must not break it
                if isinstance(event, c.RequestReceived):
                    conn.send_headers(event.stream_id, [(b":status", b"200")])
                    conn.send_data(event.stream_id, b"x", end_stream=True)
                elif isinstance(event, c.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
    except ProtocolError as exc:
        (goaway,) = [f for f in frames(conn.data_to_send()) if isinstance(f, GoAwayFrame)]
        assert goaway.error_code == exc.error_code
        return
    frames(conn.data_to_send())                  # what we send parses
    assert len(conn.streams) <= 4


def test_the_opening_settings_say_what_is_configured() -> None:
    from meshgate.config.model import Http2Settings
    from meshgate.protocol.h2_guard import new_connection

    cfg = Http2Settings(maxConcurrentStreams=7, connectionWindowSize=1 << 20)
    conn, opening = new_connection(cfg, connect_protocol=True)
    settings_sent, update = frames(opening)
    assert settings_sent.settings == {3: 7, 4: 65535, 5: 16384, 6: 65536, 8: 1}
    assert (update.stream_id, update.window_increment) == (0, (1 << 20) - 65535)
    assert conn.max_streams == 14 and conn.recv_window == 1 << 20


def test_empty_data_frames_in_a_row_are_calm() -> None:
    conn = server()
    conn.receive_data(headers_frame(1, REQUEST))
    events = conn.receive_data(DataFrame(1, b"").serialize() + DataFrame(1, b"x").serialize()
                               + DataFrame(1, b"").serialize())
    assert kinds(events) == ["DataReceived"] * 3          # one at a time is fine
    fails_with(conn, DataFrame(1, b"").serialize(), c.ENHANCE_YOUR_CALM)


def test_a_priority_flood_is_calm() -> None:
    conn = server()
    conn.receive_data(headers_frame(1, REQUEST) + PriorityFrame(1).serialize() * 150)
    fails_with(conn, PriorityFrame(3).serialize() * 60, c.ENHANCE_YOUR_CALM)


def test_a_large_frame_arriving_in_small_reads_is_joined_once() -> None:
    conn = server(max_frame_size=1 << 20, initial_window_size=1 << 21,
                  connection_window=1 << 21)
    conn.receive_data(headers_frame(1, REQUEST))
    data = DataFrame(1, b"y" * (1 << 20)).serialize()
    events: list[Any] = []
    for pos in range(0, len(data), 1000):
        events += conn.receive_data(data[pos:pos + 1000])
        if pos + 1000 < len(data):
            assert len(conn._parts) == pos // 1000 + 1 and not events    # kept, not joined
    assert [len(e.data) for e in events] == [1 << 20]
