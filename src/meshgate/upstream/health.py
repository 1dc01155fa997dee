"""Active health checks of a serviceEndpoint's endpoints (control plane).

Theory of operation
-------------------
A ``HealthChecker`` runs in the master process, on its asyncio loop, beside
the discovery provider of one serviceEndpoint. ``set_targets()`` hands it the
complete endpoint set each time discovery changes it; the checker keeps one
task per endpoint key, so a kept endpoint keeps its state and counters, a
new one gets a fresh task and a removed one has its task cancelled.

Each task loops: check, record, sleep. The outcome of a check moves two
counters, as Envoy's health checker does:

* ``unhealthyThreshold`` failures in a row mark a healthy endpoint unhealthy;
* ``healthyThreshold`` passes in a row mark an unhealthy endpoint healthy.

A new endpoint starts *unhealthy, pending its first check*, and that first
check runs at once (no interval wait). Its first pass alone makes it
healthy (Envoy's startup rule), so traffic never reaches an instance that
is not up yet and a healthy one joins after one round trip. If the first
check fails, the endpoint needs ``healthyThreshold`` passes like any other
unhealthy endpoint. ``is_healthy()`` of a key the checker does not know is
``False``.

Between checks a task waits ``interval`` while the endpoint is healthy and
``unhealthyInterval`` (default: ``interval``) while it is not, plus a random
0..``jitter`` ms so checks of many endpoints spread out. Each check as a
whole (connect, TLS, request, response head) must finish within ``timeout``.

The checks themselves are small on purpose:

* ``tcp``  -- a connect succeeds (plain TCP even for https endpoints);
* ``http`` -- ``GET path`` with ``Host`` (``host`` from config, else the
  endpoint's ``host:port``), ``user-agent: meshgate-health`` and
  ``connection: close``: one fresh connection per check, so a check also
  proves the endpoint still accepts connections and no state leaks between
  checks. Only the response head is read (parsed by httptools); a status in
  ``expectedStatuses`` passes, anything else -- refused connection, timeout,
  malformed or missing response, another status -- fails. ``path`` is sent
  as written: it is not prefixed with the base path of a static url. An
  ``https`` endpoint is checked over TLS without verifying its certificate
  (a health check asks "is it up", not "is it who it claims to be"); SNI is
  the configured ``host`` when set, else the endpoint's host.

On a serviceEndpoint whose ``protocol`` is ``h2`` or ``h2c`` the ``http``
check speaks HTTP/2 instead (``_h2``): the same GET as a single stream on a
fresh connection (TLS with ALPN ``h2`` on https endpoints, prior knowledge
on http ones), passing on the status of its response head. ``_h2_request``
builds the stream's headers.

``grpc`` (``protocol: h2|h2c`` only, which the config enforces) is a unary
``grpc.health.v1.Health/Check`` call for ``service`` on such a fresh
connection (``:authority`` from ``host`` as above, ``grpc-timeout`` the
check's ``timeout``); it passes only on ``:status`` 200, ``grpc-status`` 0
and a ``SERVING`` answer (``grpc_health``). NOT_SERVING, SERVICE_UNKNOWN,
another grpc-status, a reset or a GOAWAY that leaves the stream unprocessed
are failures like any other (one that lets it finish is not). Both speak
through our client frame layer (``h2_client_conn``).

``on_change()`` is called synchronously, on the loop, whenever any
endpoint's ``is_healthy()`` flips; an exception it raises is logged and
does not stop the checks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from meshgate.config.mesh import HealthCheck, parse_status_ranges
from meshgate.discovery import EndpointSpec
from meshgate.protocol import grpc
from meshgate.protocol.h2_client_conn import ClientConnection, ResponseReceived
from meshgate.protocol.h2_conn import (
    ConnectionTerminated,
    DataReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from meshgate.upstream import grpc_health

log = logging.getLogger("meshgate.health")

_MAX_HEAD = 65536          # a response head longer than this fails the check
_READ_SIZE = 4096


@dataclass(eq=False)
class _State:
    """What the checker knows about one endpoint."""

    target: EndpointSpec
    healthy: bool = False
    pending: bool = True               # no check has finished yet
    last_check: float | None = None    # unix time the last check finished
    last_error: str | None = None
    failures: int = 0                  # consecutive
    successes: int = 0                 # consecutive
    task: asyncio.Task[None] | None = None


class _HeadReader:
    """httptools callbacks: only the end of the response head matters."""

    def __init__(self) -> None:
        self.done = False

    def on_headers_complete(self) -> None:
        self.done = True


def _unverified_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class HealthChecker:
    """Active checks of one serviceEndpoint's endpoints (see the module docstring)."""

    def __init__(self, service: str, config: HealthCheck,
                 on_change: Callable[[], None], protocol: str = "http1") -> None:
        self.service = service
        self.http2 = protocol in ("h2", "h2c")
        self.config = config
        self.on_change = on_change
        self._ranges = parse_status_ranges(config.expectedStatuses)
        self._interval = config.interval / 1000
        unhealthy = config.unhealthyInterval
        self._unhealthy_interval = (config.interval if unhealthy is None else unhealthy) / 1000
        self._jitter = config.jitter / 1000
        self._timeout = config.timeout / 1000
        self._states: dict[str, _State] = {}
        self._running = False
        self._tls: ssl.SSLContext | None = None
        self._tls_h2: ssl.SSLContext | None = None
        self._retired: set[asyncio.Task[None]] = set()   # cancelled, not yet finished

    # -- the API used by the discovery manager ------------------------------------

    def set_targets(self, targets: list[EndpointSpec]) -> None:
        """Check exactly these endpoints from now on; kept keys keep their state."""
        wanted = {t.key: t for t in targets}
        for key in [k for k in self._states if k not in wanted]:
            task = self._states.pop(key).task
            if task is not None:
                task.cancel()
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
        for key, target in wanted.items():
            kept = self._states.get(key)
            if kept is not None:
                kept.target = target       # same address; metadata may have changed
                continue
            state = self._states[key] = _State(target)
            if self._running:
                self._launch(key, state)

    def is_healthy(self, key: str) -> bool:
        state = self._states.get(key)
        return state is not None and state.healthy

    def status(self, key: str) -> dict[str, Any]:
        """The state of one endpoint, for ``/clusters`` and logs (KeyError if unknown)."""
        state = self._states[key]
        return {"healthy": state.healthy, "lastCheck": state.last_check,
                "lastError": state.last_error, "consecutiveFailures": state.failures,
                "consecutiveSuccesses": state.successes}

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        for key, state in self._states.items():
            self._launch(key, state)

    async def stop(self) -> None:
        self._running = False
        tasks = [s.task for s in self._states.values() if s.task is not None]
        tasks += self._retired
        for state in self._states.values():
            state.task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one task per endpoint ------------------------------------------------------

    def _launch(self, key: str, state: _State) -> None:
        state.task = asyncio.get_running_loop().create_task(
            self._run(state), name=f"health {self.service} {key}")

    async def _run(self, state: _State) -> None:
        while True:
            error = await self._check(state.target)
            self._record(state, error)
            wait = self._interval if state.healthy else self._unhealthy_interval
            if self._jitter:
                wait += random.random() * self._jitter
            await asyncio.sleep(wait)

    def _record(self, state: _State, error: str | None) -> None:
        state.last_check = time.time()
        state.last_error = error
        was = state.healthy
        if error is None:
            state.successes += 1
            state.failures = 0
            if not was and (state.pending or state.successes >= self.config.healthyThreshold):
                state.healthy = True
        else:
            state.failures += 1
            state.successes = 0
            if was and state.failures >= self.config.unhealthyThreshold:
                state.healthy = False
        state.pending = False
        if state.healthy != was:
            log.info("%s %s is now %s%s", self.service, state.target.key,
                     "healthy" if state.healthy else "unhealthy",
                     f" ({error})" if error else "")
            try:
                self.on_change()
            except Exception:
                log.exception("health on_change callback of %s failed", self.service)

    # -- the checks -------------------------------------------------------------------

    async def _check(self, target: EndpointSpec) -> str | None:
        """Run one check; ``None`` if it passed, else why it failed."""
        try:
            async with asyncio.timeout(self._timeout):
                if self.config.type == "tcp":
                    return await self._tcp(target)
                if self.config.type == "grpc":
                    return await self._grpc(target)
                if self.http2:
                    return await self._h2(target)
                return await self._http(target)
        except TimeoutError:
            return f"timeout after {self.config.timeout} ms"
        except Exception as exc:     # refused, reset, TLS, malformed: all fail the check
            return f"{type(exc).__name__}: {exc}"

    async def _tcp(self, target: EndpointSpec) -> str | None:
        _, writer = await asyncio.open_connection(target.host, target.port)
        writer.close()
        return None

    async def _http(self, target: EndpointSpec) -> str | None:
        tls = None
        server_hostname = None
        if target.scheme == "https":
            if self._tls is None:
                self._tls = _unverified_tls()
            tls = self._tls
            server_hostname = self.config.host or target.host
        reader, writer = await asyncio.open_connection(
            target.host, target.port, ssl=tls, server_hostname=server_hostname)
        try:
            writer.write(self._request(target))
            status = await self._read_status(reader)
        finally:
            writer.close()
        return self._verdict(status)

    def _verdict(self, status: int | None) -> str | None:
        """None when ``status`` is an expected one, else why the check failed."""
        if status is None:
            return "connection closed before a response"
        if any(low <= status <= high for low, high in self._ranges):
            return None
        return f"status {status}"

    async def _h2_open(self, target: EndpointSpec) -> tuple[
            asyncio.StreamReader, asyncio.StreamWriter, ClientConnection]:
        """A fresh HTTP/2 connection (TLS with ALPN ``h2`` on https, else prior knowledge)."""
        tls = None
        server_hostname = None
        if target.scheme == "https":
            if self._tls_h2 is None:
                self._tls_h2 = _unverified_tls()
                self._tls_h2.set_alpn_protocols(["h2"])
            tls = self._tls_h2
            server_hostname = self.config.host or target.host
        reader, writer = await asyncio.open_connection(
            target.host, target.port, ssl=tls, server_hostname=server_hostname)
        conn = ClientConnection()
        conn.initiate_connection()
        return reader, writer, conn

    async def _h2(self, target: EndpointSpec) -> str | None:
        reader, writer, conn = await self._h2_open(target)
        try:
            conn.send_headers(1, self._h2_request(target), end_stream=True)
            writer.write(conn.data_to_send())
            status = await self._h2_status(conn, reader)
        finally:
            writer.close()
        return self._verdict(status)

    async def _grpc(self, target: EndpointSpec) -> str | None:
        """``grpc.health.v1.Health/Check`` for ``service`` (see ``grpc_health``)."""
        reader, writer, conn = await self._h2_open(target)
        try:
            conn.send_headers(1, self._grpc_request(target))
            conn.send_data(1, grpc_health.request_body(self.config.service), end_stream=True)
            writer.write(conn.data_to_send())
            answer = grpc_health.GrpcAnswer()
            error = await self._grpc_read(conn, reader, writer, answer)
        finally:
            writer.close()
        return error if error is not None else answer.verdict()

    def _grpc_request(self, target: EndpointSpec) -> list[tuple[bytes, bytes]]:
        scheme = b"https" if target.scheme == "https" else b"http"
        return [(b":method", b"POST"), (b":scheme", scheme),
                (b":authority", self._host(target).encode("latin-1")),
                (b":path", grpc_health.PATH),
                (b"content-type", grpc.GRPC), (b"te", b"trailers"),
                (b"grpc-timeout", b"%dm" % self.config.timeout),
                (b"user-agent", b"meshgate-health")]

    @staticmethod
    async def _grpc_read(conn: ClientConnection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter,
                         answer: grpc_health.GrpcAnswer) -> str | None:
        """Feed the stream's events to ``answer`` until it ends; a reason if it broke off."""
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                return "connection closed before the answer ended"
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    answer.on_head(event.headers)
                elif isinstance(event, DataReceived):
                    answer.on_data(event.data)
                elif isinstance(event, TrailersReceived):
                    answer.on_trailers(event.headers)
                elif isinstance(event, StreamEnded):
                    return None
                elif isinstance(event, StreamReset):
                    return f"stream reset (error code {event.error_code})"
                elif isinstance(event, ConnectionTerminated) and event.last_stream_id < 1:
                    return f"GOAWAY (error code {event.error_code})"
            pending = conn.data_to_send()      # SETTINGS and PING acks
            if pending:
                writer.write(pending)

    def _h2_request(self, target: EndpointSpec) -> list[tuple[bytes, bytes]]:
        scheme = b"https" if target.scheme == "https" else b"http"
        return [(b":method", b"GET"), (b":scheme", scheme),
                (b":authority", self._host(target).encode("latin-1")),
                (b":path", self.config.path.encode("latin-1")),
                (b"user-agent", b"meshgate-health"), (b"accept", b"*/*")]

    @staticmethod
    async def _h2_status(conn: ClientConnection,
                         reader: asyncio.StreamReader) -> int | None:
        seen = 0
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                return None
            seen += len(data)
            if seen > _MAX_HEAD:
                raise ValueError("response head too long")
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    return int(dict(event.headers)[b":status"])
                if isinstance(event, StreamReset) or (
                        isinstance(event, ConnectionTerminated) and event.last_stream_id < 1):
                    return None

    def _host(self, target: EndpointSpec) -> str:
        host = self.config.host
        if host is None:
            name = f"[{target.host}]" if ":" in target.host else target.host
            host = f"{name}:{target.port}"
        return host

    def _request(self, target: EndpointSpec) -> bytes:
        host = self._host(target)
        return (f"GET {self.config.path} HTTP/1.1\r\nhost: {host}\r\n"
                "user-agent: meshgate-health\r\naccept: */*\r\n"
                "connection: close\r\n\r\n").encode("latin-1")

    @staticmethod
    async def _read_status(reader: asyncio.StreamReader) -> int | None:
        head = _HeadReader()
        parser = httptools.HttpResponseParser(head)
        seen = 0
        while not head.done:
            data = await reader.read(_READ_SIZE)
            if not data:
                return None
            seen += len(data)
            if seen > _MAX_HEAD:
                raise ValueError("response head too long")
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                break
            except httptools.HttpParserError as exc:
                raise ValueError(f"malformed response: {exc}") from None
        return int(parser.get_status_code())
