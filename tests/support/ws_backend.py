"""WebSocket origins for tests, on loopback in a thread of the test process.

``WsBackend``: a ``websockets`` server (the library's own handshake and
framing) that echoes every message, records each handshake request (path
and headers) and the close code and reason each client sent; ``reject=N``
answers handshakes N instead. ``RawUpstream``: a socket server that reads
one request head, answers it with ``answer(head)`` and records every byte
it receives until the peer closes -- for answers a correct server would not
give, and for checking what reached the upstream connection.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve


class WsBackend:
    def __init__(self, reject: int = 0) -> None:
        self.reject = reject
        self.handshakes: list[tuple[str, dict[str, list[str]]]] = []
        self.closes: list[tuple[int | None, str | None]] = []
        self.server = serve(self._echo, "127.0.0.1", 0, process_request=self._request,
                            max_size=None)
        self.port = int(self.server.socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _request(self, connection: ServerConnection, request: Request) -> Response | None:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.raw_items():
            headers.setdefault(name.lower(), []).append(value)
        self.handshakes.append((request.path, headers))
        if self.reject:
            return connection.respond(self.reject, "refused by the origin\n")
        return None

    def _echo(self, ws: ServerConnection) -> None:
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosed:
            pass
        self.closes.append((ws.close_code, ws.close_reason))

    def stop(self) -> None:
        self.server.shutdown()


class RawUpstream:
    """One connection at a time: read a head, send ``answer(head)``, record the rest."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.after: list[bytes] = []      # per connection: bytes after the head, to its end
        self.done = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._one(conn)
            self.done.set()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        end = data.index(b"\r\n\r\n") + 4
        self.heads.append(data[:end])
        rest = data[end:]
        conn.sendall(self.answer(data[:end]))
        try:
            while chunk := conn.recv(65536):
                rest += chunk
        except OSError:
            pass
        self.after.append(rest)

    def stop(self) -> None:
        self.sock.close()


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower-case) in a raw head."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def masked_text_frame(text: bytes) -> bytes:
    """A client's final text frame (RFC 6455 5.2), masked with a zero key, under 126 bytes."""
    assert len(text) < 126
    return bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text

