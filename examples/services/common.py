"""A tiny JSON-over-HTTP/1.1 toolkit for the example services (standard library only).

A service is an ``App`` with a few routes; each route is a plain function that
takes a ``Request`` and returns ``(status, json_payload)``. Requests run in
threads (``ThreadingHTTPServer``), so a handler may itself make blocking HTTP
calls, e.g. to another service through a meshgate sidecar.

Every app answers ``GET /health`` (for health checks) and knows its replica
name (``--name``, default the service name), so a service run as several
replicas can say which one answered.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Response = tuple[int, Any]


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)  # from "{name}" in the route
    query: dict[str, list[str]] = field(default_factory=dict)
    body: Any = None  # the decoded JSON body, if any


Route = Callable[[Request], Response]


def error(status: int, message: str) -> Response:
    return status, {"error": message}


class App:
    def __init__(self, name: str) -> None:
        self.name = name
        self.replica = name  # set by --name: which replica of the service this is
        self.routes: list[tuple[str, re.Pattern[str], Route]] = []
        self.route("GET", "/health")(lambda req: (200, {"status": "ok", "replica": self.replica}))

    def route(self, method: str, pattern: str) -> Callable[[Route], Route]:
        """Register a handler; ``pattern`` looks like ``/users/{id}``."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        def register(fn: Route) -> Route:
            self.routes.append((method, regex, fn))
            return fn

        return register

    def dispatch(self, method: str, target: str, body: Any) -> Response:
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        allowed = False
        for route_method, regex, fn in self.routes:
            match = regex.match(path)
            if match and route_method == method:
                return fn(Request(method, path, match.groupdict(), parse_qs(url.query), body))
            allowed = allowed or bool(match)
        return error(405, f"method {method} not allowed") if allowed else error(404, "not found")

    def serve(self, argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(description=f"the {self.name} example service")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
        parser.add_argument("--name", default=self.name, help="replica name (default: %(default)s)")
        args = parser.parse_args(argv)
        self.replica = args.name

        handler = type("Handler", (JsonHandler,), {"app": self})
        server = ThreadingHTTPServer((args.host, args.port), handler)
        server.daemon_threads = True
        print(f"listening on http://{args.host}:{server.server_port}", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: stop like Ctrl-C
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


class JsonHandler(BaseHTTPRequestHandler):
    app: App
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says otherwise

    def version_string(self) -> str:  # the Server header
        return f"{self.app.name}-example"

    def handle_any(self) -> None:
        try:
            raw = self.read_body()
        except ValueError:
            self.close_connection = True  # the framing is broken; do not reuse the connection
            self.send_json(*error(400, "malformed request body"))
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self.send_json(*error(400, "request body is not valid JSON"))
            return
        self.send_json(*self.app.dispatch(self.command, self.path, body))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length)

    def send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.app.name}: {format % args}\n")
