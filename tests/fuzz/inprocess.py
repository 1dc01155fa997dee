"""The downstream HTTP/1.1 codec in-process, for coverage-guided fuzzing.

Theory of operation
-------------------
``run(chunks)`` builds one ``H1Server`` on a real ``WorkerContext`` (its own
event loop, never run forever) with a stub transport that records writes and
honours pause/resume, and a router with one catch-all route whose pipeline
answers ``200 routed K`` for the K-th request it sees -- one loop pass
*later*, as a proxied request would, so bytes that follow a request arrive
while its answer is outstanding. The chunks are fed as reads.

``check(data, outcome)`` returns what went wrong, as sentences:

* every request the codec routed was answered (``routed K`` reached the client);
* what the client got parses as HTTP/1.1 responses, nothing else;
* each routed path is already normalised (a fixed point of ``path.normalize``
  and of an independent RFC 3986 resolver), names no gateway-only header, and
  holds no CR, LF or NUL in a header;
* the K-th routed request, once its body ended, is the K-th request h11 finds
  in the bytes: same method, path and body.

This is the in-process twin of ``tests/test_fuzz_http.py``: no sockets, so
libFuzzer can run it thousands of times a second.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

from meshgate.gateway.router import Route, Router
from meshgate.protocol.exchange import Exchange, Headers
from meshgate.protocol.h1_head import GATEWAY_ONLY
from meshgate.protocol.http1_server import H1Server
from meshgate.protocol.path import BadPath, normalize
from meshgate.server.context import WorkerContext
from meshgate.telemetry.metrics import Metrics
from tests.support.recorder_client import parse_responses
from tests.support.recorder_reference import normalise, reference


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.paused = False
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4000) if name == "peername" else default


@dataclass
class Routed:
    method: bytes
    path: bytes
    headers: Headers
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False


class App:
    """The catch-all pipeline: record, collect the body, answer a loop pass later."""

    name = "fuzz"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.routed: list[Routed] = []
        self.outstanding = 0               # answers scheduled, not yet sent

    def answer(self, ex: Exchange, number: int) -> None:
        self.outstanding -= 1
        ex.responder.respond(ex, 200, b"routed %d" % number)

    def run(self, ex: Exchange) -> None:
        record = Routed(ex.method, ex.path, list(ex.headers))
        self.routed.append(record)
        number = len(self.routed) - 1
        app = self

        class Sink:
            def body_data(self, data: bytes) -> None:
                record.body += data

            def body_end(self, trailers: Headers | None) -> None:
                record.complete = True
                app.outstanding += 1
                app.loop.call_soon(app.answer, ex, number)

            def body_abort(self) -> None:
                pass

        if ex.body_expected:
            ex.attach_body_sink(Sink())
        else:
            Sink().body_end(None)


@dataclass
class Outcome:
    app: App
    transport: Transport


def _pass(loop: asyncio.AbstractEventLoop) -> None:
    loop.call_soon(loop.stop)
    loop.run_forever()


def run(chunks: list[bytes], loop: asyncio.AbstractEventLoop) -> Outcome:
    ctx = WorkerContext(loop, Metrics())
    app = App(loop)
    router = Router([Route(order=0, endpoint="fuzz", pipeline=app, host="*", path="/*",
                           methods=None)])
    ctx.snapshot = type("Snapshot", (), {"router": router})()
    transport = Transport()
    proto = H1Server(ctx)
    proto.connection_made(transport)
    pending = list(chunks)
    for _ in range(4 * len(chunks) + 8):
        while pending and not transport.paused and not transport.closed:
            proto.data_received(pending.pop(0))
        _pass(loop)
        if transport.closed or not (pending or app.outstanding):
            break
    proto.connection_lost(None)
    return Outcome(app, transport)


def check(data: bytes, outcome: Outcome) -> list[str]:
    bad: list[str] = []
    raw = b"".join(outcome.transport.written)
    responses, garbage = parse_responses(raw, True)
    if garbage:
        bad.append(f"not a response: {garbage[:100]!r}")
    answered = {r.body for r in responses if r.status == 200}
    expected, why = reference(data)
    for k, routed in enumerate(outcome.app.routed):
        where = f"{routed.method!r} {routed.path[:80]!r}"
        if routed.complete and b"routed %d" % k not in answered:
            bad.append(f"request {k} ({where}) was routed and its answer never sent")
        path = routed.path.split(b"?", 1)[0]
        try:
            stable = normalize(path) == path
        except BadPath:
            stable = False
        text = path.decode("latin-1")
        if routed.method == b"OPTIONS" and path == b"*":
            pass                           # asterisk-form
        elif not path.startswith(b"/") or not stable or normalise(text) != text:
            bad.append(f"request {k} routed with a path that is not normalised: {where}")
        for name, value in routed.headers:
            if name in GATEWAY_ONLY or name.startswith(b"x-meshgate-"):
                bad.append(f"request {k}: a client's {name!r} header was kept")
            if any(c in name + value for c in b"\r\n\x00"):
                bad.append(f"request {k}: CR, LF or NUL in header {name!r}: {value[:60]!r}")
        if not routed.complete:
            continue                   # its body never ended: the request was not admitted
        if k >= len(expected):
            bad.append(f"request {k} ({where}) routed; a strict parser refuses it: {why}")
            continue
        want = expected[k]
        if (routed.method.decode("latin-1"), normalise(text)) != (want.method, want.path):
            bad.append(f"request {k}: routed {where}, the bytes hold {want.method} {want.path}")
        if hashlib.sha256(routed.body).hexdigest() != want.body_sha256:
            bad.append(f"request {k}: body of {len(routed.body)} bytes differs from the sent one")
    return bad
