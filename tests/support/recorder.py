"""A recording HTTP/1.1 origin for differential tests, run as its own process.

``python -m tests.support.recorder`` prints ``listening on PORT LOGPORT``.

Theory of operation
-------------------
The question a smuggling test asks is "what did the backend parse?", and the
answer must not come from the parser under test: meshgate parses with
httptools, so this origin parses with h11, a strict pure-Python parser with
its own state machine. Every connection gets an ``h11.Connection``; every
request h11 yields is recorded (method, target, headers, body length and
SHA-256, trailers, whether it ended) with a global sequence number, and
answered ``200`` with the body ``request N METHOD TARGET``. Responses are
written only after everything in a read was parsed, so a request smuggled
in the same bytes as the one before it is recorded before the gateway can
pass the first answer on.

Bytes h11 refuses end the connection: the error and the unparsed bytes are
recorded. Bytes h11 holds without a complete request (half a smuggled head)
are reported as ``pending`` with each connection.

The side channel, on LOGPORT (plain HTTP/1.0 style, one request per connection):

* ``GET /_log?since=SEQ``  JSON ``{"seq", "requests", "errors", "connections"}``:
  records with a sequence number >= SEQ, and every open connection's pending bytes;
* ``GET /_seq``            the next sequence number (a mark for ``since``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

PREVIEW = 2048                     # bytes of unparsed input kept in a record


def _text(data: bytes) -> str:
    return data.decode("latin-1")


class Log:
    """Everything parsed so far, in one global sequence."""

    def __init__(self) -> None:
        self.seq = 0
        self.requests: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.open: dict[int, Conn] = {}
        self.next_conn = 0

    def take(self) -> int:
        self.seq += 1
        return self.seq

    def report(self, since: int) -> dict[str, Any]:
        return {
            "seq": self.seq + 1,
            "requests": [r for r in self.requests if r["seq"] >= since],
            "errors": [e for e in self.errors if e["seq"] >= since],
            "connections": [c.state() for c in self.open.values()],
        }


class Conn(asyncio.Protocol):
    """One upstream connection from the gateway, parsed by h11."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.h11 = h11.Connection(h11.SERVER)
        self.id = log.next_conn
        log.next_conn += 1
        self.transport: asyncio.Transport | None = None
        self.current: dict[str, Any] | None = None
        self.hasher = hashlib.sha256()
        self.received = 0
        self.index = 0                       # requests on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.log.open[self.id] = self

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.open.pop(self.id, None)
        pending = bytes(self.h11.trailing_data[0])
        if pending or self.current is not None:
            self._error("connection closed mid-request", pending)

    def state(self) -> dict[str, Any]:
        pending = bytes(self.h11.trailing_data[0])
        return {"conn": self.id, "received": self.received, "requests": self.index,
                "pending_len": len(pending), "pending": _text(pending[:PREVIEW]),
                "mid_request": self.current is not None}

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.h11.receive_data(data)
        out: list[bytes] = []
        try:
            self._events(out)
        except h11.RemoteProtocolError as exc:
            self._error(f"h11: {exc}", bytes(self.h11.trailing_data[0]))
            out.append(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"
                       b"connection: close\r\n\r\n")
            assert self.transport is not None
            self.transport.write(b"".join(out))
            self.transport.close()
            return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def eof_received(self) -> bool | None:
        self.h11.receive_data(b"")
        return None

    def _events(self, out: list[bytes]) -> None:
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self._begin(event, out)
            elif isinstance(event, h11.Data):
                self.hasher.update(event.data)
                assert self.current is not None
                self.current["body_len"] += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._end(event, out)
            elif isinstance(event, h11.ConnectionClosed):
                return

    def _begin(self, event: h11.Request, out: list[bytes]) -> None:
        self.index += 1
        self.hasher = hashlib.sha256()
        self.current = {
            "seq": self.log.take(), "conn": self.id, "index": self.index,
            "method": _text(event.method), "target": _text(event.target),
            "version": _text(event.http_version),
            "headers": [[_text(k), _text(v)] for k, v in event.headers.raw_items()],
            "body_len": 0, "body_sha256": "", "trailers": [], "complete": False,
        }
        self.log.requests.append(self.current)
        if self.h11.they_are_waiting_for_100_continue:
            out.append(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))

    def _end(self, event: h11.EndOfMessage, out: list[bytes]) -> None:
        record = self.current
        assert record is not None
        self.current = None
        record["complete"] = True
        record["body_sha256"] = self.hasher.hexdigest()
        record["trailers"] = [[_text(k), _text(v)] for k, v in event.headers.raw_items()]
        body = f"request {record['seq']} {record['method']} {record['target']}".encode()
        out.append(self.h11.send(h11.Response(status_code=200, headers=[
            ("content-type", "text/plain"), ("content-length", str(len(body)))])))
        if record["method"] != "HEAD":
            out.append(self.h11.send(h11.Data(data=body)))
        out.append(self.h11.send(h11.EndOfMessage()))
        if self.h11.our_state is h11.MUST_CLOSE and self.transport is not None:
            self.transport.write(b"".join(out))
            out.clear()
            self.transport.close()

    def _error(self, message: str, unparsed: bytes) -> None:
        self.log.errors.append({
            "seq": self.log.take(), "conn": self.id, "error": message,
            "unparsed_len": len(unparsed), "unparsed": _text(unparsed[:PREVIEW]),
            "mid_request": self.current is not None})
        self.current = None


async def _side(log: Log, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1].decode()
        url = urlsplit(target)
        if url.path == "/_log":
            since = int(parse_qs(url.query).get("since", ["0"])[0])
            body = json.dumps(log.report(since)).encode()
        elif url.path == "/_seq":
            body = b"%d" % (log.seq + 1)
        else:
            body = b"unknown"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, log_port: int) -> None:
    log = Log()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(log), "127.0.0.1", port)
    side = await asyncio.start_server(lambda r, w: _side(log, r, w), "127.0.0.1", log_port)
    ports = (server.sockets[0].getsockname()[1], side.sockets[0].getsockname()[1])
    print(f"listening on {ports[0]} {ports[1]}", flush=True)
    async with server, side:
        await asyncio.gather(server.serve_forever(), side.serve_forever())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.log_port))
