"""The control channel between the master and one worker: JSON lines on a socketpair.

Master to worker: ``{"op": "config", "config": C}`` (first, once),
``{"op": "metrics", "id": N}``, ``{"op": "reload", "config": C}``.
Worker to master: ``{"op": "ready"}``, ``{"op": "metrics", "id": N, "data": ...}``,
``{"op": "reloaded", "ok": bool, "error": str}``. Never on the request path.

``C`` is the LoadedConfig the master validated (``encode_config``): a worker
never reads the config files itself, so one started while the file on disk
is broken serves the running config, and a reload applies exactly the
version the master checked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshgate.config.loader import LoadedConfig


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


def encode_config(config: LoadedConfig) -> str:
    # pickle between two processes of this program over a private socketpair
    return base64.b64encode(pickle.dumps(config)).decode("ascii")


def decode_config(data: str) -> LoadedConfig:
    config: LoadedConfig = pickle.loads(base64.b64decode(data))
    return config
