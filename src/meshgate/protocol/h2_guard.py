"""The HTTP/2 connection object, set up for a gateway, and the abuse budget.

Theory of operation
-------------------
``new_connection`` makes the frame layer of one client connection
(``h2_conn.ServerConnection``) and the bytes that open it (our SETTINGS, a
WINDOW_UPDATE raising the connection window). Every setting is in force
from the first byte: nothing waits for the peer's acknowledgement.
``MAX_CONCURRENT_STREAMS`` is told to the peer differently from what the
frame layer enforces, so that going over it is a stream error, not the end
of the connection: we advertise ``maxConcurrentStreams`` and the codec
refuses a stream beyond it with RST_STREAM REFUSED_STREAM (the peer may
retry it, RFC 9113 5.1.2); the frame layer's hard cap is twice as many,
beyond which a peer is plainly ignoring the setting and the connection ends.

The frame layer bounds a header block in bytes while it arrives and in
decoded size while it is decoded (``maxHeaderListSize``: CONTINUATION
floods and HPACK bombs end in ENHANCE_YOUR_CALM), and a frame by the length
its header announces (FRAME_SIZE_ERROR before its payload is read);
``pending_header_bytes`` lets the sweep time out a block that never ends.

``Budget`` counts what costs us work the peer gets for free -- streams reset
(CVE-2023-44487, rapid reset) and frames we must acknowledge (SETTINGS, PING)
-- per second; over a limit the connection gets GOAWAY ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from meshgate.protocol.h2_conn import (
    ENABLE_CONNECT_PROTOCOL,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    PREFACE,
    ServerConnection,
    goaway,
    settings_frame,
    window_update,
)

if TYPE_CHECKING:
    from meshgate.config.model import Http2Settings

__all__ = ["MAX_UNSENT", "PREFACE", "Budget", "goaway", "new_connection", "pending_header_bytes"]

# Unsent bytes a peer that does not read may leave with us (our acks, mostly);
# beyond this the connection ends. Response data never grows it: it stops at
# the stream buffers while the transport is paused.
MAX_UNSENT: Final = 1 << 20


def new_connection(cfg: Http2Settings, connect_protocol: bool = False,
                   ) -> tuple[ServerConnection, bytes]:
    """(a server-side connection set up from ``cfg``, the bytes to send first).

    ``connect_protocol`` advertises SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441):
    the client may open WebSocket streams with extended CONNECT.
    """
    conn = ServerConnection(cfg.maxFrameSize, cfg.initialWindowSize, cfg.connectionWindowSize,
                            cfg.maxHeaderListSize,
                            min(2 * cfg.maxConcurrentStreams, 2**31 - 1))
    advertised = {
        MAX_CONCURRENT_STREAMS: cfg.maxConcurrentStreams,
        INITIAL_WINDOW_SIZE: cfg.initialWindowSize,
        MAX_FRAME_SIZE: cfg.maxFrameSize,
        MAX_HEADER_LIST_SIZE: cfg.maxHeaderListSize,
    }
    if connect_protocol:
        advertised[ENABLE_CONNECT_PROTOCOL] = 1
    opening = settings_frame(advertised)
    raise_by = cfg.connectionWindowSize - 65535
    if raise_by > 0:
        opening += window_update(0, raise_by)
    return conn, opening


def pending_header_bytes(conn: ServerConnection) -> int:
    """Bytes of a header block whose END_HEADERS has not come yet."""
    return conn.pending_header_bytes


class Budget:
    """Resets and acknowledged frames in the current one-second window."""

    __slots__ = ("acks", "max_acks", "max_resets", "resets")

    def __init__(self, cfg: Http2Settings) -> None:
        self.resets = 0
        self.acks = 0
        self.max_resets = cfg.maxResetsPerSecond
        self.max_acks = cfg.maxControlFramesPerSecond

    def reset(self) -> bool:
        """One more stream reset; False once over the limit."""
        self.resets += 1
        return self.resets <= self.max_resets

    def ack(self) -> bool:
        """One more frame to acknowledge; False once over the limit."""
        self.acks += 1
        return self.acks <= self.max_acks

    def new_window(self) -> None:
        self.resets = 0
        self.acks = 0
