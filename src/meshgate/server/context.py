"""Per-worker state shared by every connection: the live Snapshot and limits.

The Snapshot is swapped by assignment (atomic for the event loop): an
exchange keeps the route and pipeline it matched, so requests in flight finish
on the config they started with.
"""

from __future__ import annotations

import asyncio
import email.utils
from typing import TYPE_CHECKING, Any

from meshgate.config.model import Http2Settings
from meshgate.policies import Services
from meshgate.protocol.batch import WriteBatch
from meshgate.protocol.h1_head import DEFAULT_PATH_RULES, PathRules
from meshgate.protocol.path import SLASH_MODES

if TYPE_CHECKING:
    from meshgate.config.snapshot import Snapshot
    from meshgate.telemetry.metrics import Metrics


class WorkerContext:
    snapshot: Snapshot

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: Metrics) -> None:
        self.loop = loop
        self.metrics = metrics
        self.services = Services()               # resources shared by policies
        self.batch = WriteBatch(loop)            # writes sent after each pass over ready sockets
        self.connections: set[Any] = set()       # H1Server and H2Server protocols
        self.upstream_conns: set[Any] = set()    # every open upstream connection
        self.timed_calls: set[Any] = set()       # Calls with an overall deadline (requestTimeout)
        self.endpoint_sets: dict[str, list[Any]] = {}   # control plane's, per cluster
        self.outbound: Any = None                # sidecar mode: the OutboundRouter
        self.draining = False
        self.now = loop.time()                   # coarse clock, updated every tick
        self.date = b""
        self.max_header_bytes = 65536
        self.max_headers = 100
        self.head_timeout = 10.0
        self.idle_timeout = 75.0
        self.body_timeout = 30.0                 # s without request-body bytes; 0 = none
        self.buffer_body = 65536                 # request bodies read whole before proxying
        self.path_rules: PathRules = DEFAULT_PATH_RULES
        self.merge_slashes = False               # path_rules[2], read per request
        self.http2 = Http2Settings()             # read by each HTTP/2 connection as it opens
        self.refresh_date()

    def install(self, snapshot: Snapshot) -> None:
        """The first Snapshot; later ones come through ``swap``."""
        self.snapshot = snapshot
        self.apply_limits(snapshot)

    def apply_limits(self, snapshot: Snapshot) -> None:
        server = snapshot.server
        self.max_header_bytes = server.maxHeaderBytes
        self.max_headers = server.maxHeaders
        self.head_timeout = server.headersTimeout / 1000.0
        self.idle_timeout = server.keepAliveTimeout / 1000.0
        self.body_timeout = server.bodyTimeout / 1000.0
        self.buffer_body = server.bufferRequestBody
        self.http2 = server.http2
        paths = server.pathNormalization
        self.path_rules = (paths.normalize, SLASH_MODES[paths.encodedSlashes],
                           paths.mergeSlashes)
        self.merge_slashes = paths.normalize and paths.mergeSlashes

    def swap(self, snapshot: Snapshot) -> None:
        old = self.snapshot
        self.snapshot = snapshot
        self.apply_limits(snapshot)
        old.retire(snapshot)

    def refresh_date(self) -> None:
        self.date = email.utils.formatdate(usegmt=True).encode()
