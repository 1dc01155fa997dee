"""A raw gRPC-Web client for tests: framing, base64, trailer frames, by hand.

It knows nothing of meshgate: requests are built from grpc/doc/PROTOCOL-WEB.md
(a frame per message: flag byte, 4-byte big-endian length, payload; -text
bodies in base64) and responses are taken apart the way browser clients do
(base64 decoded 4 characters at a time, so padding may end any group; the
last frame, flag 0x80, holds the trailers as ``name: value`` lines).
HTTP/1.1 goes through ``http.client``, HTTP/2 through ``h2client.H2Client``.
"""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.support.h2client import H2Client

WEB = "application/grpc-web+proto"
TEXT = "application/grpc-web-text+proto"


def frame(payload: bytes, flag: int = 0) -> bytes:
    return bytes((flag,)) + len(payload).to_bytes(4, "big") + payload


def body_of(payload: bytes, text: bool) -> bytes:
    data = frame(payload)
    return base64.b64encode(data) if text else data


def b64_groups(text: bytes) -> bytes:
    """Base64 decoded group by group, as a streaming client decodes it."""
    assert len(text) % 4 == 0, f"base64 of {len(text)} characters"
    return b"".join(base64.b64decode(text[i:i + 4], validate=True)
                    for i in range(0, len(text), 4))


def unpad_b64(value: str) -> bytes:
    """A ``-bin`` metadata value (gRPC may send it unpadded)."""
    return base64.b64decode(value + "=" * (-len(value) % 4))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes                                       # as received
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)
    http_trailers: dict[str, str] = field(default_factory=dict)
    frames_after_trailers: int = 0

    @property
    def grpc_status(self) -> int:
        return int(self.trailers["grpc-status"])


def parse(reply: Reply, text: bool) -> Reply:
    data = b64_groups(reply.body) if text else reply.body
    pos = 0
    seen_trailers = False
    while pos < len(data):
        flag = data[pos]
        size = int.from_bytes(data[pos + 1:pos + 5], "big")
        payload = data[pos + 5:pos + 5 + size]
        assert len(payload) == size, "truncated frame"
        pos += 5 + size
        if seen_trailers:
            reply.frames_after_trailers += 1
        if flag & 0x80:
            seen_trailers = True
            for line in payload.split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b":")
                    assert name == name.lower(), f"trailer name {name!r} not lower-case"
                    reply.trailers[name.decode()] = value.strip().decode()
        else:
            reply.messages.append(payload)
    return reply


def call_h1(port: int, path: str, body: bytes | Iterable[bytes], *, text: bool = False,
            headers: dict[str, str] | None = None, ctype: str | None = None) -> Reply:
    """One call over HTTP/1.1 (an iterable body goes chunked, one chunk per item)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    kind = ctype or (TEXT if text else WEB)
    sent = {"content-type": kind, "accept": kind, "x-grpc-web": "1",
            "x-user-agent": "grpc-web-javascript/0.1", **(headers or {})}
    try:
        if isinstance(body, bytes):
            conn.request("POST", path, body=body, headers=sent)
        else:
            conn.request("POST", path, body=iter(body), headers=sent, encode_chunked=True)
        r = conn.getresponse()
        got = {k.lower(): v for k, v in r.getheaders()}
        data = r.read()
    finally:
        conn.close()
    return parse(Reply(r.status, got, data), text and r.status == 200)


def call_h2(client: H2Client, path: str, chunks: list[bytes], *, text: bool = False,
            headers: dict[str, str] | None = None, authority: str = "gw") -> Reply:
    """One call over HTTP/2, the body in one DATA frame per chunk."""
    kind = TEXT if text else WEB
    sent = {"content-type": kind, "accept": kind, "x-grpc-web": "1", **(headers or {})}
    sid = client.request(path, method="POST", headers=list(sent.items()), end=False,
                         authority=authority)
    for i, chunk in enumerate(chunks):
        client.send_body(sid, chunk, end=i == len(chunks) - 1)
    stream = client.response(sid, timeout=10)
    got = {k.decode(): v.decode() for k, v in stream.headers}
    reply = Reply(stream.status, got, bytes(stream.body),
                  http_trailers={k.decode(): v.decode() for k, v in stream.trailers})
    return parse(reply, text and stream.status == 200)
