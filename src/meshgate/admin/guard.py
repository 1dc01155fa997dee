"""Keep web browsers off the control surfaces (Admin API, registry, sidecar admin).

Theory of operation
-------------------
A browser on the operator's machine can reach ``localhost`` too. Two attacks
follow, and this ASGI middleware closes both before any route runs:

* **Cross-site writes (CSRF).** A page may send a "simple" request -- a
  form post or ``fetch(..., {mode: "no-cors"})`` with ``text/plain``,
  ``application/x-www-form-urlencoded`` or ``multipart/form-data`` -- without
  a CORS preflight. So a write (POST, PUT, PATCH, DELETE) must carry a media
  type no page can send without a preflight: JSON (``application/json``,
  ``application/*+json``; the Admin API also takes YAML) -- else 415. A
  write with no ``Content-Type`` must have no body. A write whose ``Origin``
  is not the server's own (scheme aside: a proxy may terminate TLS), or
  whose ``Sec-Fetch-Site`` is anything but ``same-origin`` / ``none``, is
  403: a page on another port of ``localhost`` is same-site, not same-origin.
* **DNS rebinding.** A page on ``evil.example`` whose name later resolves to
  ``127.0.0.1`` is same-origin with itself and could read the answers. Its
  requests carry ``Host: evil.example``, so every request's Host must be
  one the server answers to, else 421: ``localhost``, a loopback address,
  the address the connection actually arrived at (an IP literal cannot be
  rebound), the configured bind host when it is a name, and the configured
  extra names (``admin.hosts``, ``meshgate registry --allowed-host``; ``*``
  turns the Host check off). A wildcard bind (``0.0.0.0``) therefore
  answers to the machine's addresses and to the names listed, nothing else.
  A request without Host (HTTP/1.0, not a browser) passes.

``open_paths`` (probes and scrapers: ``/ready``, ``/metrics``,
``/v1/health``) skip the Host check for GET and HEAD, as they skip the admin
key. Every answer gets ``X-Content-Type-Options: nosniff``, ``X-Frame-Options:
DENY`` and ``Cache-Control: no-store``; nothing here ever adds CORS headers.
``install_guard`` also lists the refusals in a FastAPI app's OpenAPI document.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Collection, Iterable
from functools import lru_cache
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
SAFE_FETCH_SITES = frozenset({b"same-origin", b"none"})
LOCAL_NAMES = frozenset({"localhost"})
WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})
_DEFAULT_PORT = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HARDENING = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
              (b"cache-control", b"no-store")]


@lru_cache(maxsize=32)
def host_names(names: tuple[str, ...]) -> frozenset[str]:
    """The names (lower case, no trailing dot) a server answers to, besides IPs."""
    out = set(LOCAL_NAMES)
    for name in names:
        name = name.strip().lower().rstrip(".")
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if name and (name == "*" or name not in WILDCARDS):
            out.add(name)
    return frozenset(out)


def split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` / ``[v6]:port`` -> (lower-case host, port); None if malformed."""
    value = value.strip().lower()
    port: str | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    elif ":" in value:
        host = value            # a bare IPv6 literal
    else:
        host = value
    if port is not None and not (port.isdigit() and len(port) <= 5):
        return None
    host = host.rstrip(".")
    return (host, int(port) if port else None) if host else None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def host_allowed(host: str, names: frozenset[str], local_addr: str | None) -> bool:
    """Whether a Host header's name is one the server answers to."""
    if "*" in names or host in names:
        return True
    ip = _ip(host)
    if ip is None:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    if ip.is_loopback or (mapped is not None and mapped.is_loopback):
        return True
    local = _ip(local_addr) if local_addr else None
    return local is not None and (ip == local or ip == getattr(local, "ipv4_mapped", None))


def _media_ok(content_type: bytes, accept: Collection[str]) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
    return media in accept or (media.startswith("application/") and media.endswith("+json"))


def _has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length", b"0").strip()
    return not (length.isdigit() and int(length) == 0)


class BrowserGuard:
    """Host check on every request; media type and origin checks on writes."""

    def __init__(self, app: ASGIApp, hosts: Callable[[], Iterable[str]],
                 accept: Collection[str] = JSON_TYPES, open_paths: Collection[str] = (),
                 error_key: str = "error", hint: str = "") -> None:
        self.app = app
        self.hosts = hosts
        self.accept = frozenset(accept)
        self.open_paths = frozenset(open_paths)
        self.error_key = error_key
        self.hint = hint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is not None:
            await self._refuse(send, *refusal)
            return

        async def hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *_HARDENING]
            await send(message)

        await self.app(scope, receive, hardened)

    def check(self, scope: Scope) -> tuple[int, str] | None:
        """(status, reason) to refuse with, or None to serve the request."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name.lower(), value)
        method = scope.get("method", "GET")
        raw_host = headers.get(b"host")
        host = split_host(raw_host.decode("latin-1")) if raw_host is not None else None
        if raw_host is not None and host is None:
            return 400, "malformed Host header"
        probe = method in ("GET", "HEAD") and scope.get("path") in self.open_paths
        if host is not None and not probe:
            server = scope.get("server")
            local = str(server[0]) if server else None
            names = host_names(tuple(self.hosts()))
            if not host_allowed(host[0], names, local):
                return 421, (f"this server does not answer to the host {host[0]!r}"
                             + (f"; {self.hint}" if self.hint else ""))
        if method not in WRITES:
            return None
        site = headers.get(b"sec-fetch-site")
        if site is not None and site.strip().lower() not in SAFE_FETCH_SITES:
            return 403, f"cross-origin write refused (Sec-Fetch-Site: {site.decode('latin-1')})"
        origin = headers.get(b"origin")
        if origin is not None and not _same_origin(origin.decode("latin-1"), host):
            return 403, f"cross-origin write refused (Origin: {origin.decode('latin-1')})"
        content_type = headers.get(b"content-type")
        if content_type is None:
            if _has_body(headers):
                return 415, "a request body needs Content-Type: application/json"
        elif not _media_ok(content_type, self.accept):
            return 415, ("writes take Content-Type: " + ", ".join(sorted(self.accept))
                         + f", not {content_type.decode('latin-1')}")
        return None

    async def _refuse(self, send: Send, status: int, reason: str) -> None:
        body = json.dumps({self.error_key: reason}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *_HARDENING]})
        await send({"type": "http.response.body", "body": body})


def _same_origin(origin: str, host: tuple[str, int | None] | None) -> bool:
    """Whether ``Origin`` names the host:port the request was sent to."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or host is None or scheme not in _DEFAULT_PORT or "/" in rest:
        return False            # "null", opaque or malformed origins are never ours
    parsed = split_host(rest)
    if parsed is None:
        return False
    default = _DEFAULT_PORT[scheme]
    return parsed[0] == host[0] and (parsed[1] or default) == (host[1] or default)


_REFUSALS = {421: "The Host is not one this server answers to (DNS rebinding)",
             403: "A cross-origin write (Origin, Sec-Fetch-Site)",
             415: "A write whose body is not JSON"}


def document_refusals(schema: dict[str, Any], error_key: str = "error") -> dict[str, Any]:
    """Add the guard's answers to an OpenAPI document: 421 everywhere, 403 / 415 on writes."""
    error = {"application/json": {"schema": {
        "type": "object", "properties": {error_key: {"type": "string"}},
        "required": [error_key]}}}
    for item in schema.get("paths", {}).values():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            statuses = (421, 403, 415) if method.upper() in WRITES else (421,)
            for status in statuses:
                operation["responses"].setdefault(
                    str(status), {"description": _REFUSALS[status], "content": error})
    return schema


def install_guard(app: Any, hosts: Callable[[], Iterable[str]],
                  **options: Any) -> None:
    """Wrap ``app`` (FastAPI / Starlette, before it starts) in a ``BrowserGuard``; a
    FastAPI app's ``/openapi.json`` then lists the guard's answers too."""
    app.add_middleware(BrowserGuard, hosts=hosts, **options)
    build = getattr(app, "openapi", None)
    if build is None:
        return
    key = str(options.get("error_key", "error"))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_refusals(build(), key)
        return app.openapi_schema

    app.openapi = openapi

