"""The HTTP/2 connection object, set up for a gateway, and the abuse budget.

Theory of operation
-------------------
``new_connection`` makes the ``h2`` state machine of one client connection
and the bytes that open it (our SETTINGS, a WINDOW_UPDATE raising the
connection window). Two settings are told to the peer differently from what
``h2`` enforces, so that going over them is a stream error, not the end of
the connection:

* ``MAX_CONCURRENT_STREAMS``: we advertise ``maxConcurrentStreams`` and
  refuse a stream beyond it with RST_STREAM REFUSED_STREAM ourselves (the
  peer may retry it, RFC 9113 5.1.2); ``h2`` itself is given a hard cap of
  twice as many, beyond which a peer is plainly ignoring the setting and the
  connection ends.
* every other setting is in force from the first byte (``h2`` would apply
  them only once acknowledged, and until then enforce its defaults).

``h2`` bounds a header block in frames (64 CONTINUATIONs) and, while
decoding, in size (``MAX_HEADER_LIST_SIZE``, so an HPACK bomb stops at the
limit); ``pending_header_bytes`` lets the codec bound the undecoded block in
bytes too, which 64 frames of up to ``maxFrameSize`` each would not, and
``oversized_frame`` the frame being read, whose length ``h2`` checks only
once it is whole.

``Budget`` counts what costs us work the peer gets for free -- streams reset
(CVE-2023-44487, rapid reset) and frames we must acknowledge (SETTINGS, PING)
-- per second; over a limit the connection gets GOAWAY ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame, SettingsFrame

if TYPE_CHECKING:
    from meshgate.config.model import Http2Settings

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Unsent bytes a peer that does not read may leave with us (our acks, mostly);
# beyond this the connection ends. Response data never grows it: it stops at
# the stream buffers while the transport is paused.
MAX_UNSENT: Final = 1 << 20


def new_connection(cfg: Http2Settings, connect_protocol: bool = False,
                   ) -> tuple[H2Connection, bytes]:
    """(a server-side connection set up from ``cfg``, the bytes to send first).

    ``connect_protocol`` advertises SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441):
    the client may open WebSocket streams with extended CONNECT.
    """
    config = H2Configuration(client_side=False, header_encoding=None,
                             validate_outbound_headers=False,
                             normalize_outbound_headers=False)
    conn = H2Connection(config)
    advertised = {
        SettingCodes.MAX_CONCURRENT_STREAMS: cfg.maxConcurrentStreams,
        SettingCodes.INITIAL_WINDOW_SIZE: cfg.initialWindowSize,
        SettingCodes.MAX_FRAME_SIZE: cfg.maxFrameSize,
        SettingCodes.MAX_HEADER_LIST_SIZE: cfg.maxHeaderListSize,
    }
    if connect_protocol:
        advertised[SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
    enforced = dict(advertised)
    enforced[SettingCodes.MAX_CONCURRENT_STREAMS] = min(2 * cfg.maxConcurrentStreams, 2**31 - 1)
    conn.local_settings = Settings(client=False, initial_values=enforced)
    conn.decoder.max_header_list_size = cfg.maxHeaderListSize
    conn.max_inbound_frame_size = cfg.maxFrameSize
    conn.initiate_connection()
    conn.data_to_send()                  # h2's SETTINGS carry the cap: ours go instead
    frame = SettingsFrame(0)
    for code, value in advertised.items():
        frame.settings[code] = value
    opening = frame.serialize()
    raise_by = cfg.connectionWindowSize - 65535
    if raise_by > 0:
        conn.increment_flow_control_window(raise_by)
        opening += conn.data_to_send()
    return conn, opening


def pending_header_bytes(conn: H2Connection) -> int:
    """Bytes of a header block whose END_HEADERS has not come yet."""
    # h2 keeps the frames of an unfinished block in its frame buffer; it offers
    # no public view of them.
    frames = getattr(conn.incoming_buffer, "_headers_buffer", None)
    return sum(len(f.data) for f in frames) if frames else 0


def oversized_frame(conn: H2Connection, max_frame_size: int) -> bool:
    """Whether the frame being read announces more than ``max_frame_size``.

    h2 checks a frame's length only once the whole frame is in: a peer
    announcing 16 MiB could make it buffer that much first.
    """
    data = getattr(conn.incoming_buffer, "_data", b"")    # no public view either
    return len(data) >= 3 and int.from_bytes(data[:3], "big") > max_frame_size


def goaway(last_stream_id: int, error_code: int = 0) -> bytes:
    """A GOAWAY frame, written by us: ``h2`` refuses to send anything after its own."""
    frame = GoAwayFrame(0)
    frame.last_stream_id = last_stream_id
    frame.error_code = error_code
    return frame.serialize()


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
