"""Which codec serves a new connection.

Plaintext listeners start every connection as HTTP/1.1: ``H1Server`` hands
it to ``H2Server`` when the first read is HTTP/2's connection preface (h2c
with prior knowledge), so both share one port and HTTP/1.1 pays nothing. An
HTTP/1.1 ``Upgrade: h2c`` request is served as HTTP/1.1 (Upgrade is
hop-by-hop); the upgrade dance is not implemented.

TLS listeners choose by ALPN once the handshake is done: ``h2`` gets
``H2Server``, anything else (``http/1.1``, no ALPN) ``H1Server``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshgate.protocol.h2_server import H2Server
from meshgate.protocol.http1_server import H1Server

if TYPE_CHECKING:
    from meshgate.server.context import WorkerContext


def plaintext(ctx: WorkerContext, outbound: bool = False) -> Callable[[], asyncio.Protocol]:
    return lambda: H1Server(ctx, b"http", outbound=outbound)


def tls(ctx: WorkerContext, http2: bool) -> Callable[[], asyncio.Protocol]:
    if not http2:
        return lambda: H1Server(ctx, b"https")
    return lambda: AlpnChoice(ctx)


class AlpnChoice(asyncio.Protocol):
    """Stands in until the handshake ends, then gives the transport to its codec."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        codec: asyncio.Protocol = (H2Server(self.ctx, b"https") if chosen == "h2"
                                   else H1Server(self.ctx, b"https"))
        transport.set_protocol(codec)
        codec.connection_made(transport)
