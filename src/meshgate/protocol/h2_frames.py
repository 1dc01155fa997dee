"""GOAWAY frames, cut out of an HTTP/2 connection's inbound bytes.

The ``h2`` library closes its connection state machine at the first GOAWAY
and then refuses the frames of streams the peer still finishes, which
HTTP/2 allows (RFC 9113 6.8: streams up to the last stream id complete). So
the upstream codec follows frame boundaries itself -- nine header bytes
give each frame's length and type -- hands h2 every frame but GOAWAY, and
handles those on its own.
"""

from __future__ import annotations

from typing import Final

_GOAWAY: Final = 0x7
_FRAME_HEAD: Final = 9


class FrameCut:
    """Follows frame boundaries in the inbound bytes and cuts GOAWAY frames out."""

    __slots__ = ("capture", "head", "left")

    def __init__(self) -> None:
        self.head = b""                  # a frame header, while incomplete
        self.left = 0                    # payload bytes of the current frame still to come
        self.capture: bytearray | None = None    # the current frame is a GOAWAY

    def feed(self, data: bytes) -> tuple[bytes, list[bytes]]:
        """(the bytes for h2, the payloads of the GOAWAY frames that were in ``data``)."""
        keep: list[bytes] = []
        goaways: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self.left:
                take = min(self.left, end - pos)
                if self.capture is None:
                    keep.append(data[pos:pos + take])
                else:
                    self.capture += data[pos:pos + take]
                self.left -= take
                pos += take
            else:
                need = _FRAME_HEAD - len(self.head)
                self.head += data[pos:pos + need]
                pos += need
                if len(self.head) < _FRAME_HEAD:
                    break
                self.left = int.from_bytes(self.head[:3], "big")
                if self.head[3] == _GOAWAY:
                    self.capture = bytearray()
                else:
                    keep.append(self.head)
                self.head = b""
            if not self.left and self.capture is not None:
                goaways.append(bytes(self.capture))
                self.capture = None
        if len(keep) == 1:
            return keep[0], goaways
        return b"".join(keep), goaways
