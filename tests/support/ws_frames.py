"""WebSocket frames (RFC 6455 5.2) by hand, for clients that carry them themselves.

``encode`` makes one frame (masked, as a client must send it, unless told
otherwise); ``Reader`` takes bytes as they come and yields whole frames as
``(opcode, payload)``, unmasking masked ones. Enough for tests that move
WebSocket bytes over transports the ``websockets`` library does not speak
(an HTTP/2 extended CONNECT stream).
"""

from __future__ import annotations

import os
import struct

TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big")


def encode(opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True) -> bytes:
    """One frame; masked with a random key unless ``mask`` is false."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head = struct.pack("!BB", first, bit | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, bit | 127, size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class Reader:
    """Whole frames out of a byte stream."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        frames = []
        while True:
            frame = self._one()
            if frame is None:
                return frames
            frames.append(frame)

    def _one(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        opcode, second = buf[0] & 0x0F, buf[1]
        size, pos = second & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            size, pos = struct.unpack("!H", buf[2:4])[0], 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, pos = struct.unpack("!Q", buf[2:10])[0], 10
        key = b""
        if second & 0x80:
            if len(buf) < pos + 4:
                return None
            key, pos = bytes(buf[pos:pos + 4]), pos + 4
        if len(buf) < pos + size:
            return None
        payload = bytes(buf[pos:pos + size])
        del buf[:pos + size]
        return opcode, _mask(payload, key) if key else payload
