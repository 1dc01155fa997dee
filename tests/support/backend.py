"""A scriptable HTTP/1.1 backend for tests, run as its own process.

``python -m tests.support.backend`` prints ``listening on PORT`` and serves:

* ``/echo``         JSON of method, path, headers and body length (reads the body);
* ``/status/N``     status N with a short body (204/304 without one);
* ``/slow/MS``      answers after MS milliseconds;
* ``/chunked``      a chunked response of 3 chunks;
* ``/bytes/N``      N bytes (Content-Length), streamed in 64 KiB writes;
* ``/upload``       reads the body, answers its length and a running checksum;
* ``/reset``        closes the connection without answering;
* ``/close``        answers with Connection: close;
* ``/name``         the server's --name (for round-robin tests);
* ``/conn``         JSON of the client's port: one value per upstream connection;
* ``/hop``          a response carrying hop-by-hop headers (and ``x-kept``);
* ``/mirror[/...]`` like ``/echo``, for any path under ``/mirror``;
* ``/eof``          a close-delimited response (no length, no chunking);
* ``/truncate``     a response that ends early: content-length 1000, 10 bytes, close;
* ``/truncate-chunked``  the same with one chunk and no last chunk;
* ``/hold/KEY``     reads the body, then waits up to 30 s for the client to go
                    away; ``/held/KEY`` tells ``waiting``, ``gone`` or ``answered``;
* anything else     200 "ok <name>".

Faults for resilience tests, for every request but ``/_ctl/*``: ``--fail
STATUS`` answers STATUS (or ``reset`` closes the connection unanswered),
``--delay MS`` answers MS later; ``/_ctl/fail/STATUS``, ``/_ctl/fail/off``
and ``/_ctl/delay/MS`` change them while the backend runs; ``/_ctl/count`` tells
how many requests it has seen, ``/_ctl/bytes`` how many body bytes it read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import zlib

Head = tuple[str, str, dict[str, str], list[tuple[str, str]]]


async def _read_head(reader: asyncio.StreamReader) -> Head | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    pairs = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:] if ln]
    headers = {k.lower(): v for k, v in pairs}
    return method, target, headers, pairs  # type: ignore[return-value]


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> tuple[int, int]:
    """Read the request body; returns (length, crc32)."""
    total, crc = 0, 0
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                SERVED[1] += total
                return total, crc
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            total += size
            crc = zlib.crc32(data, crc)
    remaining = int(headers.get("content-length", "0"))
    while remaining:
        data = await reader.read(min(remaining, 1 << 20))
        if not data:
            break
        remaining -= len(data)
        total += len(data)
        crc = zlib.crc32(data, crc)
    SERVED[1] += total
    return total, crc


def _response(status: int, body: bytes, extra: str = "", ctype: str = "text/plain") -> bytes:
    head = f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\n{extra}"
    if status not in (204, 304):
        head += f"content-length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (b"" if status in (204, 304) else body)


FAULTS: dict[str, str | int | None] = {"fail": None, "delay": 0}
SERVED = [0, 0]    # requests seen (but /_ctl/*), body bytes read: /_ctl/count, /_ctl/bytes


async def _fault(path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 headers: dict[str, str]) -> bool | None:
    """Control paths and injected faults; True: answered, False: connection gone."""
    if path in ("/_ctl/count", "/_ctl/bytes"):
        await _read_body(reader, headers)
        writer.write(_response(200, b"%d" % SERVED[0 if path == "/_ctl/count" else 1]))
        return True
    if path.startswith("/_ctl/"):
        _, _, what, value = path.split("/", 3)
        FAULTS[what] = None if value == "off" else (int(value) if value.isdigit() else value)
        await _read_body(reader, headers)
        writer.write(_response(200, b"ok\n"))
        return True
    delay = FAULTS["delay"]
    if delay:
        await asyncio.sleep(int(delay) / 1000)
    fail = FAULTS["fail"]
    if fail is None:
        return None
    if fail == "reset":
        writer.transport.abort()
        return False
    await _read_body(reader, headers)
    writer.write(_response(int(fail), b"injected failure\n"))
    return True


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
    try:
        while True:
            head = await _read_head(reader)
            if head is None:
                return
            method, target, headers, pairs = head
            path = target.split("?", 1)[0]
            if not path.startswith("/_ctl/"):
                SERVED[0] += 1
            if FAULTS["fail"] is not None or FAULTS["delay"] or path.startswith("/_ctl/"):
                answered = await _fault(path, reader, writer, headers)
                if answered is False:
                    return
                if answered:
                    await writer.drain()
                    continue
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if path == "/reset":
                writer.transport.abort()
                return
            if path.startswith("/hold/"):
                if not await _hold(reader, writer, path, headers):
                    return
                continue
            length, crc = await _read_body(reader, headers)
            if path.startswith("/slow/"):
                await asyncio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            if path == "/echo" or path.startswith("/slow/"):
                body = json.dumps({"method": method, "path": target, "headers": pairs,
                                   "length": length, "crc": crc, "name": name}).encode()
                writer.write(_response(200, body, ctype="application/json"))
            elif path.startswith("/status/"):
                writer.write(_response(int(path.rsplit("/", 1)[1]), b"status\n"))
            elif path == "/chunked":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
            elif path.startswith("/bytes/"):
                n = int(path.rsplit("/", 1)[1])
                writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n".encode())
                if method != "HEAD":
                    block = b"x" * 65536
                    while n > 0:
                        writer.write(block[: min(n, len(block))])
                        n -= len(block)
                        await writer.drain()
            elif path == "/upload":
                writer.write(_response(200, json.dumps({"length": length, "crc": crc}).encode()))
            elif path == "/close":
                writer.write(_response(200, b"bye\n", extra="connection: close\r\n"))
                await writer.drain()
                writer.close()
                return
            elif path == "/name":
                writer.write(_response(200, name.encode()))
            elif path == "/conn":
                port = writer.get_extra_info("peername")[1]
                writer.write(_response(200, json.dumps({"port": port}).encode(),
                                       ctype="application/json"))
            elif path == "/hop":
                writer.write(_response(200, b"hop\n", extra=(
                    "connection: keep-alive, x-secret\r\nkeep-alive: timeout=5\r\n"
                    "x-secret: 1\r\nproxy-connection: keep-alive\r\nupgrade: foo/1\r\n"
                    "te: trailers\r\nx-kept: yes\r\n")))
            elif path == "/mirror" or path.startswith("/mirror/"):
                body = json.dumps({"method": method, "path": target, "headers": pairs,
                                   "length": length, "crc": crc, "name": name}).encode()
                writer.write(_response(200, body, ctype="application/json"))
            elif path == "/eof":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n"
                             b"until the end")
                await writer.drain()
                writer.close()
                return
            elif path.startswith("/held/"):
                writer.write(_response(200, _HELD.get(path[6:], "none").encode()))
            elif path in ("/truncate", "/truncate-chunked"):
                if path == "/truncate":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                 b"a\r\nxxxxxxxxxx\r\n")
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(_response(200, f"ok {name}\n".encode()))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


_HELD: dict[str, str] = {}


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
                headers: dict[str, str]) -> bool:
    """``/hold/KEY``: record whether the client goes away. True if it answered."""
    key = path[6:]
    _HELD[key] = "waiting"
    try:
        length, _ = await _read_body(reader, headers)
    except (ValueError, asyncio.IncompleteReadError, ConnectionError):
        _HELD[key] = "gone"
        return False
    if length < int(headers.get("content-length", "0")):
        _HELD[key] = "gone"           # the body ended early: the client went away
        return False
    try:
        data = await asyncio.wait_for(reader.read(1), 30)
    except TimeoutError:
        data = None
    except ConnectionError:
        data = b""
    if data == b"":
        _HELD[key] = "gone"
        return False
    _HELD[key] = "answered"
    writer.write(_response(200, b"held\n"))
    await writer.drain()
    return True


async def main(port: int, name: str) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, name), "127.0.0.1", port)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--fail", default=None, help="answer every request with STATUS|reset")
    parser.add_argument("--delay", type=int, default=0, help="answer every request MS later")
    args = parser.parse_args()
    FAULTS["fail"] = int(args.fail) if args.fail and args.fail.isdigit() else args.fail
    FAULTS["delay"] = args.delay
    asyncio.run(main(args.port, args.name))
