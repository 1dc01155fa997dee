"""The reference side of the differential check: how a strict parser and a backend read bytes.

Theory of operation
-------------------
``reference(data)`` runs h11 as a server over the bytes a client sent and
lists the requests it finds (method, normalised path, body SHA-256) and why
it stopped. Two leniencies RFC 9112 allows a server are granted, since
meshgate may use them too; everything else h11 refuses is a request a
gateway must not admit.

``normalise(target)`` is an independent RFC 3986 resolver of the path a
backend would serve, and ``reaches_admin(target)`` asks whether any common
backend reading (RFC 3986, merged slashes, ``\\`` or encoded slashes taken
for ``/``) resolves the target under ``/admin/``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import h11

_UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


@dataclass
class Expected:
    method: str
    path: str
    body_sha256: str


def reference(data: bytes) -> tuple[list[Expected], str | None]:
    """The requests h11 finds in ``data``, and why it stopped (None: it ran out of bytes).

    Two leniencies RFC 9112 allows a server are granted: empty lines before a request
    line are skipped (2.2), and the request line may be split on any run of whitespace (3)."""
    found: list[Expected] = []
    while True:
        line, nl, rest = data.lstrip(b"\r\n").partition(b"\n")
        cr = line.endswith(b"\r")
        line = b" ".join(line.rstrip(b"\r").split())
        data = line + (b"\r" if cr else b"") + nl + rest
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        try:
            one = _one_request(conn)
        except (h11.RemoteProtocolError, h11.LocalProtocolError) as exc:
            return found, str(exc)
        if one is None:
            return found, None
        found.append(one)
        # a refusal-like answer declines an Upgrade or a CONNECT
        conn.send(h11.Response(status_code=404, headers=[("content-length", "0")]))
        conn.send(h11.EndOfMessage())
        if conn.their_state is not h11.DONE:       # MUST_CLOSE: nothing more is read
            return found, None
        data = bytes(conn.trailing_data[0])


def _one_request(conn: h11.Connection) -> Expected | None:
    body = hashlib.sha256()
    method = target = ""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            method, target = event.method.decode(), event.target.decode()
        elif isinstance(event, h11.Data):
            body.update(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return Expected(method, normalise(target), body.hexdigest())
        else:                                       # NEED_DATA: the request is incomplete
            return None


def normalise(target: str) -> str:
    """A reference for the path a backend resolves: origin-form, escapes of unreserved
    characters decoded, dot segments removed (RFC 3986 5.2.4); the query dropped."""
    scheme_authority = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", target)
    if scheme_authority:                                     # absolute-form
        target = target[scheme_authority.end():] or "/"
    path = target.split("?", 1)[0].split("#", 1)[0]
    raw = path.encode("latin-1")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and i + 2 < len(raw) and re.match(rb"[0-9A-Fa-f]{2}", raw[i + 1:i + 3]):
            value = int(raw[i + 1:i + 3], 16)
            if value in _UNRESERVED:
                out.append(value)
            else:
                out += b"%%%02X" % value
            i += 3
        else:
            out.append(raw[i])
            i += 1
    segments: list[str] = []
    parts = out.decode("latin-1").split("/")
    for i, seg in enumerate(parts[1:], 1):
        last = i == len(parts) - 1
        if seg == ".":
            if last:
                segments.append("")
        elif seg == "..":
            if segments:
                segments.pop()
            if last:
                segments.append("")
        else:
            segments.append(seg)
    return "/" + "/".join(segments)


def reaches_admin(target: str) -> bool:
    """Whether a backend could resolve ``target`` to ``/admin``: by RFC 3986, or
    merging slashes (nginx), or taking ``\\`` and encoded slashes for ``/``."""
    slashed = re.sub(r"%2[fF]|%5[cC]|\\", "/", target)
    for form in (target, slashed):
        for path in (form, re.sub("/{2,}", "/", form)):
            if normalise(path).lower().startswith("/admin/"):
                return True
    return False
