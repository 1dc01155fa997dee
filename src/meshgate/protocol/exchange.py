"""The protocol-neutral request/response exchange.

Theory of operation
-------------------
A downstream codec (HTTP/1.1 today, HTTP/2 later) turns bytes into one
``Exchange`` per request and hands it to the router. Everything after that --
conditions, policies, the proxy -- sees only the Exchange, never the codec:

* the request head: ``method``, ``authority`` (host), ``path`` (with query),
  ``headers`` as a list of ``(lower-case name, value)`` byte pairs;
* the request body as a push stream: the codec calls ``sink.body_data()`` /
  ``sink.body_end()`` on whatever consumer attached itself with
  ``attach_body_sink()``; the consumer applies backpressure with
  ``pause_body()`` / ``resume_body()``, which reach the codec's transport;
* the response through ``responder`` (the codec): ``start_response()``,
  ``send_data()``, ``end_response()``, or ``respond()`` for a whole small
  response. The responder applies backpressure on whoever feeds it through
  the ``ResponseSource`` in ``ex.source`` (set directly, or through
  ``set_response_source()`` when the client may already be slow).
* headers a policy wants on the response, whoever produces it (the proxy's
  upstream head, a local ``respond()``): ``add_response_headers()`` collects
  them in ``response_headers_extra`` and the codec merges them into the head
  when it starts the response. ``None`` (the default) costs one test.

Nothing here allocates per request beyond the Exchange itself; headers stay
bytes, as the wire carries them.
"""

from __future__ import annotations

from typing import Any, Protocol

Headers = list[tuple[bytes, bytes]]


class BodySink(Protocol):
    """Consumer of a request body (the upstream connection, a buffering policy)."""

    def body_data(self, data: bytes) -> None: ...

    def body_end(self, trailers: Headers | None) -> None: ...

    def body_abort(self) -> None: ...


class ResponseSource(Protocol):
    """Producer of a response body; paused when the client reads slowly."""

    def pause_producing(self) -> None: ...

    def resume_producing(self) -> None: ...

    def abort(self) -> None: ...


class Responder(Protocol):
    """What a codec offers to send the response of one exchange."""

    def start_response(self, ex: Exchange, status: int, headers: Headers,
                       has_body: bool, length: int | None) -> None: ...

    def start_response_raw(self, ex: Exchange, status: int, block: bytes,
                           has_body: bool, length: int | None) -> None: ...

    def send_data(self, ex: Exchange, data: bytes) -> None: ...

    def end_response(self, ex: Exchange, trailers: Headers | None) -> None: ...

    def respond(self, ex: Exchange, status: int, body: bytes,
                headers: Headers | None = None) -> None: ...

    def flush(self, ex: Exchange) -> None: ...

    def abort(self, ex: Exchange) -> None: ...

    def pause_body(self, ex: Exchange) -> None: ...

    def resume_body(self, ex: Exchange) -> None: ...

    def set_response_source(self, ex: Exchange, source: ResponseSource | None) -> None: ...


class Exchange:
    """One request and, in time, its response."""

    __slots__ = (
        "authority",
        "body_buffer",
        "body_done",
        "body_expected",
        "body_length",
        "body_sink",
        "body_tee",
        "client_addr",
        "cluster_name",
        "done",
        "expect_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "on_done",
        "path",
        "pipeline",
        "responder",
        "response_headers_extra",
        "retry",
        "route",
        "scheme",
        "source",
        "started",
        "status",
        "trailers",
        "upgrade",
        "vars",
    )
    # Declared here too: modules in an import cycle with this one (and mypyc,
    # which type-checks the compiled modules on their own) see the types at once.
    responder: Responder
    method: bytes
    path: bytes
    headers: Headers
    authority: bytes
    scheme: bytes
    client_addr: bytes
    http_version: bytes
    body_expected: bool
    body_length: int
    started: float

    def __init__(self, responder: Responder, method: bytes, path: bytes,
                 headers: Headers, authority: bytes, scheme: bytes,
                 client_addr: bytes, http_version: bytes, body_expected: bool,
                 started: float) -> None:
        self.responder = responder
        self.method = method
        self.path = path                    # raw target: path and query, as sent
        self.headers = headers              # [(lower-case name, value)]
        self.authority = authority          # Host without port, lower-case
        self.scheme = scheme                # b"http" | b"https"
        self.client_addr = client_addr
        self.http_version = http_version    # b"1.1", b"1.0", b"2"
        self.body_expected = body_expected  # a body follows the head
        self.body_length = -1               # its Content-Length; -1: none or chunked
        self.expect_continue = False
        self.body_sink: BodySink | None = None
        self.body_tee: Any = None           # a copy of the body also goes there (mirroring)
        self.body_buffer: list[bytes] | None = None   # data seen before a sink attached
        self.body_done = not body_expected
        self.trailers: Headers | None = None
        self.route: Any = None              # the matched CompiledEndpoint
        self.pipeline: Any = None           # the CompiledPipeline
        self.cluster_name = ""              # serviceEndpoint name once proxied
        self.status = 0                     # response status once started
        self.started = started              # loop.time() when the head arrived
        self.vars: dict[str, Any] | None = None  # policy scratch space, made on demand
        self.done = False
        self.on_done: Any = None            # callback(ex) once the exchange ended, however
        self.retry: Any = None              # the upstream Call when retries/limits apply
        self.keep_alive = True
        # A WebSocket handshake (GET, Upgrade: websocket, Connection: upgrade, no
        # body): the codec set the bytes after it aside, for a tunnel or for nothing.
        self.upgrade = False
        self.source: ResponseSource | None = None   # who produces the response body
        # Set by policies (cors, rate-limit); merged into the head by the codec.
        self.response_headers_extra: Headers | None = None

    # -- request head helpers (not on the proxy fast path) -----------------
    def header(self, name: bytes) -> bytes | None:
        """First value of a header; ``name`` must be lower-case."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def path_only(self) -> bytes:
        q = self.path.find(b"?")
        return self.path if q < 0 else self.path[:q]

    def scratch(self) -> dict[str, Any]:
        if self.vars is None:
            self.vars = {}
        return self.vars

    # -- request body ------------------------------------------------------
    def attach_body_sink(self, sink: BodySink) -> None:
        """Route the request body (buffered part first) to ``sink``."""
        tee = self.body_tee
        if tee is not None:                 # a mirror wants a copy: it passes the body on
            tee.primary = sink
            sink = tee
        self.body_sink = sink
        buffered = self.body_buffer
        if buffered is not None:
            self.body_buffer = None
            for chunk in buffered:
                sink.body_data(chunk)
        self.responder.resume_body(self)     # also sends 100 Continue when asked
        if self.body_done and self.body_expected:
            sink.body_end(self.trailers)

    # -- response shortcuts ------------------------------------------------
    def add_response_headers(self, headers: Headers) -> None:
        """Put ``headers`` (lower-case names) on the response, however it is produced.

        A header of the same name from the upstream is replaced, except ``vary``,
        which is a list and is added to.
        """
        extra = self.response_headers_extra
        if extra is None:
            self.response_headers_extra = list(headers)
        else:
            extra.extend(headers)

    def respond(self, status: int, body: bytes, headers: Headers | None = None) -> None:
        if self.body_expected and _grpc_web_answer(self, status, body, headers):
            return
        self.responder.respond(self, status, body, headers)


def _grpc_web_answer(ex: Exchange, status: int, body: bytes, headers: Headers | None) -> bool:
    """A gRPC-Web request's local answer as a gRPC-Web error (one always has a body,
    so requests without one never look)."""
    from meshgate.protocol.grpc_web import answer
    return answer(ex, status, body, headers)


def dispatch(ex: Exchange, router: Any) -> None:
    """Route ``ex`` and run its pipeline: what every codec does with a request head.

    ``router`` is the Snapshot's router, or a sidecar's outbound one (both
    have ``match(authority, path, method)``). A pipeline set already is a
    refusal the codec decided from the head.
    """
    if ex.pipeline is not None:
        ex.pipeline.run(ex)
        return
    route = router.match(ex.authority, ex.path, ex.method)
    if route is None:
        if not (ex.body_expected and _grpc_web_answer(ex, 404, b"Not Found\n", None)):
            ex.responder.respond(ex, 404, b"Not Found\n")
        return
    ex.route = route
    ex.pipeline = route.pipeline
    route.pipeline.run(ex)
