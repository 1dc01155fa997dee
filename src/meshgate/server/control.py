"""The control channel between the master and one worker: JSON lines on a socketpair.

Master to worker: ``{"op": "metrics", "id": N}``, ``{"op": "reload"}``.
Worker to master: ``{"op": "ready"}``, ``{"op": "metrics", "id": N, "data": ...}``,
``{"op": "reloaded", "ok": bool, "error": str}``. Never on the request path.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024 * 1024)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def receive(self) -> dict[str, Any] | None:
        line = await self.reader.readline()
        if not line:
            return None
        message: dict[str, Any] = json.loads(line)
        return message

    def close(self) -> None:
        self.writer.close()
