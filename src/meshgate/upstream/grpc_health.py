"""The gRPC health checking protocol (``grpc.health.v1.Health/Check``), by hand.

Theory of operation
-------------------
``healthCheck.type: grpc`` asks an endpoint the standard question every gRPC
server can answer (grpc/doc/health-checking.md), as Envoy's
``grpc_health_check`` does: one unary call on a fresh HTTP/2 connection.
Both messages are one field each, so they are encoded and decoded here
rather than through generated code (no protobuf runtime on the control
plane):

* ``HealthCheckRequest { string service = 1; }`` -- ``request_body`` frames
  it as a gRPC message (flag 0, 4-byte big-endian length, payload); an
  empty service name (the server as a whole) is the empty message;
* ``HealthCheckResponse { ServingStatus status = 1; }`` with ``SERVING = 1``,
  ``NOT_SERVING = 2``, ``SERVICE_UNKNOWN = 3`` -- ``GrpcAnswer`` collects the
  stream's head, DATA and trailers and ``verdict()`` passes it only when all
  of these hold: ``:status`` 200, ``grpc-status`` 0 (in the trailers, or in
  the head of a trailers-only answer), exactly one uncompressed message, and
  that message's ``status`` is ``SERVING``. Anything else is the reason the
  check failed, in words (it shows in ``/clusters`` as ``lastError``).

A server that does not implement the service answers ``grpc-status`` 12
(UNIMPLEMENTED) and fails the check, as it does with Envoy: a gRPC check is
for servers that register the health service.
"""

from __future__ import annotations

from typing import Final

from meshgate.protocol import grpc

PATH: Final = b"/grpc.health.v1.Health/Check"
SERVING: Final = 1
STATUS_NAMES: Final = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
MAX_BODY: Final = 16384          # a health answer is a few bytes; more is not one
_CODE_NAMES: Final = {code: name for name, code in grpc.NAMES.items()}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def request_body(service: str) -> bytes:
    """The framed ``HealthCheckRequest`` naming ``service`` ("" = the whole server)."""
    name = service.encode()
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def serving_status(message: bytes) -> int:
    """``status`` of a ``HealthCheckResponse`` (0 when absent, as proto3 says)."""
    status = 0
    pos = 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(message, pos)
            if field == 1:
                status = value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            size, pos = _read_varint(message, pos)
            pos += size
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        if pos > len(message):
            raise ValueError("truncated field")
    return status


class GrpcAnswer:
    """What came back on the check's stream, and whether that is a pass."""

    def __init__(self) -> None:
        self.head: dict[bytes, bytes] | None = None
        self.trailers: dict[bytes, bytes] | None = None
        self.body = bytearray()
        self.ended = False

    def on_head(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.head = dict(headers)

    def on_data(self, data: bytes) -> None:
        if len(self.body) + len(data) > MAX_BODY:
            raise ValueError("health answer too long")
        self.body += data

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = dict(headers)

    def verdict(self) -> str | None:
        """None when the endpoint is SERVING, else why the check failed."""
        head = self.head
        if head is None:
            return "stream ended before a response"
        status = head.get(b":status", b"")
        if status != b"200":
            return f"status {status.decode('latin-1')}"
        if not grpc.is_grpc_type(head.get(b"content-type")):
            return "not a gRPC response (content-type)"
        # A trailers-only answer carries grpc-status in its only header block.
        trailers = self.trailers if self.trailers is not None else head
        code = trailers.get(b"grpc-status")
        if code is None:
            return "no grpc-status"
        if code != b"0":
            name = _CODE_NAMES.get(int(code), "") if code.isdigit() else ""
            message = trailers.get(b"grpc-message", b"").decode("latin-1")
            return (f"grpc-status {code.decode('latin-1')}"
                    f"{' ' + name if name else ''}{': ' + message if message else ''}")
        return self._message_verdict(bytes(self.body))

    @staticmethod
    def _message_verdict(body: bytes) -> str | None:
        if len(body) < 5:
            return "no response message"
        if body[0] != 0:
            return "compressed response message"
        size = int.from_bytes(body[1:5], "big")
        if len(body) != 5 + size:
            return "not exactly one response message"
        status = serving_status(body[5:])
        if status != SERVING:
            return STATUS_NAMES.get(status, f"serving status {status}")
        return None
