"""A scriptable HTTP/2 origin on loopback, in a thread of the test process.

``H2Origin(max_streams=..., tls=...)`` serves h2c by prior knowledge (or h2
over TLS with ALPN) with the ``h2`` library and records what it saw:
connections opened, the most streams open at once on one connection, the
request headers and trailers of every stream, how often a response waited
for window credit, the response body bytes it wrote. The path chooses the answer:

* ``/echo``: 200 with the request body; the request's ``te`` and
  ``:authority`` in ``x-te`` / ``x-authority``;
* ``/big/<n>``: ``n`` bytes (flow control honoured);
* ``/trailers``: a body, then the trailers ``grpc-status: 0`` and ``x-sum: 42``;
* ``/wait/<ms>``: 200 after ``ms`` milliseconds, with the request body if any;
* ``/hang``: no answer; ``/reset``: RST_STREAM (INTERNAL_ERROR);
* ``/status/<code>``: that status;
* ``/malformed``: a response head with a connection-specific field
  (``connection: close``), which RFC 9113 8.2.2 makes malformed;
* ``/early``: 200 with ``early`` as soon as the request head is in, before
  the request body ends, without resetting the request's side.

``window=(first, then)``: streams start with ``first`` as their window
(``SETTINGS_INITIAL_WINDOW_SIZE``); the first request head makes the origin
send ``then`` as the new initial window, which moves open streams' windows.

``goaway_after=N``: the first connection, once N streams arrived, sends
GOAWAY naming the first stream as the last it processes, answers that one
only, and closes.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hyperframe.frame


@dataclass
class Seen:
    connections: int = 0
    peak_streams: int = 0                 # on one connection
    requests: list[dict[bytes, bytes]] = field(default_factory=list)
    paths: list[bytes] = field(default_factory=list)
    trailers: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    blocked: int = 0                      # times a response waited for window credit
    sent: int = 0                         # response body bytes written
    received: int = 0                     # request body bytes read
    ended_early: int = 0                  # request sides ended after an early answer


class _Conn:
    def __init__(self, origin: H2Origin, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, first: bool) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.windows: dict[int, asyncio.Event] = {}
        self.goaway = origin.goaway_after if first else 0
        self.window_raised = False
        self.last = 0

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.writer.write(data)

    async def run(self) -> None:
        values = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.origin.max_streams}
        if self.origin.window is not None:
            values[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = self.origin.window[0]
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=values)
        self.h2.initiate_connection()
        self.flush()
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                for event in self.h2.receive_data(data):
                    self.event(event)
                self.flush()
        except (ConnectionError, h2.exceptions.ProtocolError):
            return
        finally:
            self.writer.close()

    def event(self, event: object) -> None:
        seen = self.origin.seen
        if isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            self.heads[sid] = dict(event.headers)
            self.bodies[sid] = bytearray()
            seen.requests.append(self.heads[sid])
            seen.paths.append(self.heads[sid][b":path"])
            seen.peak_streams = max(seen.peak_streams, len(self.heads))
            window = self.origin.window
            if window is not None and not self.window_raised:
                self.window_raised = True
                self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window[1]})
            if self.heads[sid][b":path"] in (b"/malformed", b"/early"):
                self.early(sid)
                return
            if self.goaway and len(seen.requests) >= self.goaway and not self.last:
                # A graceful GOAWAY: h2 would refuse to answer the last stream after
                # its own close_connection(), so the frame is written by hand.
                self.last = min(self.heads)
                self.flush()
                self.writer.write(hyperframe.frame.GoAwayFrame(
                    0, last_stream_id=self.last, error_code=0).serialize())
        elif isinstance(event, h2.events.DataReceived):
            seen.received += len(event.data)
            if event.stream_id in self.bodies:
                self.bodies[event.stream_id] += event.data
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            seen.trailers.append(list(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            sid = event.stream_id
            if sid not in self.bodies:
                seen.ended_early += 1            # the request's side of an early answer
            elif not self.last or sid <= self.last:
                asyncio.get_running_loop().create_task(self.answer(sid))
        elif isinstance(event, h2.events.WindowUpdated):
            for sid, ready in self.windows.items():
                if event.stream_id in (0, sid):
                    ready.set()

    def early(self, sid: int) -> None:
        """Answer before the request ends (``/early``), or malformed (``/malformed``)."""
        self.bodies.pop(sid, None)
        if self.heads.pop(sid)[b":path"] == b"/malformed":
            # h2 refuses to send such a head: encoded with its own encoder (its
            # table stays in step with the peer's) and framed by hand.
            block = self.h2.encoder.encode([(b":status", b"200"), (b"connection", b"close")])
            self.flush()
            self.writer.write(hyperframe.frame.HeadersFrame(
                sid, block, flags=["END_HEADERS"]).serialize())
            return
        self.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"5")])
        self.h2.send_data(sid, b"early", end_stream=True)

    async def answer(self, sid: int) -> None:
        head = self.heads[sid]
        path = head[b":path"].decode()
        body = bytes(self.bodies.pop(sid))
        status, extra, trailers = 200, [], None
        if path == "/echo":
            extra = [(b"x-te", head.get(b"te", b"")),
                     (b"x-authority", head.get(b":authority", b""))]
        elif path.startswith("/big/"):
            body = bytes(i % 251 for i in range(int(path[5:])))
        elif path == "/trailers":
            body, trailers = b"with trailers", [(b"grpc-status", b"0"), (b"x-sum", b"42")]
        elif path.startswith("/wait/"):
            await asyncio.sleep(int(path[6:]) / 1000)
            body = body or b"waited"
        elif path == "/hang":
            return
        elif path == "/reset":
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
            self.done(sid)
            return
        elif path.startswith("/status/"):
            status, body = int(path[8:]), b"status"
        else:
            body = b"hello from h2"
        self.h2.send_headers(sid, [(b":status", b"%d" % status),
                                   (b"content-length", b"%d" % len(body)), *extra])
        await self.send_body(sid, body, trailers is None)
        if trailers is not None:
            self.h2.send_headers(sid, trailers, end_stream=True)
        self.flush()
        self.done(sid)

    async def send_body(self, sid: int, body: bytes, end: bool) -> None:
        view = memoryview(body)
        while True:
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if room <= 0 and view:
                ready = self.windows[sid] = asyncio.Event()
                self.origin.seen.blocked += 1
                self.flush()
                await ready.wait()
                continue
            piece, view = view[:room], view[room:]
            self.origin.seen.sent += len(piece)
            self.h2.send_data(sid, bytes(piece), end_stream=end and not view)
            if not view:
                self.windows.pop(sid, None)
                return

    def done(self, sid: int) -> None:
        self.heads.pop(sid, None)
        if self.last and not any(s <= self.last for s in self.heads):
            self.writer.close()


class H2Origin:
    def __init__(self, max_streams: int = 100, tls: ssl.SSLContext | None = None,
                 goaway_after: int = 0, window: tuple[int, int] | None = None) -> None:
        self.max_streams = max_streams
        self.window = window
        self.tls = tls
        self.goaway_after = goaway_after
        self.seen = Seen()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(5)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self.tls))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen.connections += 1
        await _Conn(self, reader, writer, self.seen.connections == 1).run()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
