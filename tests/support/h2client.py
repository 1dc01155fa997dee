"""A blocking HTTP/2 client over a plain socket, built on ``h2`` (client side).

Tests use it where curl or httpx would hide the frames: it sends what it is
told (raw frames too, via ``send_raw``) and keeps every event the server
caused, per stream, so a test can assert on resets, GOAWAY codes and
windows.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.exceptions import ProtocolError
from hyperframe.frame import Frame, GoAwayFrame


class Stream:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] = []
        self.ended = False
        self.reset: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers).get(b":status", b"0"))

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    def __init__(self, port: int, *, settings: dict[int, int] | None = None,
                 auto_ack: bool = True, window: int | None = None, answer: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        if window is not None and window > 65535:
            self.conn.increment_flow_control_window(window - 65535)
        self.auto_ack = auto_ack           # hand received data's window back at once
        self.answer = answer               # send h2's replies (acks); off amid raw frames
        self.raw = bytearray()             # every byte the server sent
        self.broken = False                # h2 gave up on what the server sent
        self.streams: dict[int, Stream] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.events: list[Any] = []
        self.flush()

    # -- sending ---------------------------------------------------------------
    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, path: str, method: str = "GET", body: bytes | None = None,
                headers: list[tuple[str, str]] | None = None, end: bool = True,
                authority: str = "gw") -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":path", path.encode()),
                  (b":scheme", b"http"), (b":authority", authority.encode())]
        fields += [(k.encode(), v.encode()) for k, v in headers or []]
        self.streams[sid] = Stream()
        self.conn.send_headers(sid, fields, end_stream=end and body is None)
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def extended_connect(self, path: str, protocol: str = "websocket",
                         headers: list[tuple[str, str]] | None = None,
                         authority: str = "gw") -> int:
        """Open a stream with RFC 8441 extended CONNECT (WebSocket over HTTP/2)."""
        sid = self.conn.get_next_available_stream_id()
        fields = [(b":method", b"CONNECT"), (b":protocol", protocol.encode()),
                  (b":scheme", b"http"), (b":path", path.encode()),
                  (b":authority", authority.encode())]
        fields += [(k.encode(), v.encode()) for k, v in headers or []]
        self.streams[sid] = Stream()
        self.conn.send_headers(sid, fields)
        self.flush()
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True,
                  timeout: float = 10) -> None:
        """Send ``body`` as the windows allow (reading WINDOW_UPDATEs meanwhile)."""
        deadline = time.monotonic() + timeout
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("no window from the server")
                self.receive(0.2)
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    # -- receiving -------------------------------------------------------------
    def receive(self, timeout: float = 1.0) -> bool:
        """One read (up to ``timeout``); False when the connection closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except ConnectionError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.raw += data
        if self.broken:
            return True
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:            # after raw frames h2's view may be off
            self.broken = True
            return True
        for event in events:
            self.events.append(event)
            self._event(event)
        if self.answer:
            self.flush()
        return True

    def server_goaway(self) -> GoAwayFrame | None:
        """The last GOAWAY in what the server sent, read frame by frame."""
        raw = bytes(self.raw)
        pos = 0
        found = None
        while pos + 9 <= len(raw):
            frame, length = Frame.parse_frame_header(memoryview(raw[pos:pos + 9]))
            if pos + 9 + length > len(raw):
                break
            if isinstance(frame, GoAwayFrame):
                frame.parse_body(memoryview(raw[pos + 9:pos + 9 + length]))
                found = frame
            pos += 9 + length
        return found

    def _event(self, event: Any) -> None:
        sid = getattr(event, "stream_id", 0)
        stream = self.streams.get(sid)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            stream.body += event.data
            if self.auto_ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
            stream.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def until(self, predicate: Any, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met")
            if not self.receive(0.2):
                value = predicate()
                if value:
                    return value
                raise ConnectionError("the server closed the connection")

    def response(self, sid: int, timeout: float = 5.0) -> Stream:
        stream = self.streams[sid]
        self.until(lambda: stream.ended or stream.reset is not None, timeout)
        return stream

    def get(self, path: str, **kwargs: Any) -> Stream:
        return self.response(self.request(path, **kwargs))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
