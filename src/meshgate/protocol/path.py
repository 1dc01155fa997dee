"""One path, normalised once, before routing.

Theory of operation
-------------------
A request target reaches the router, the conditions, the policies and the
upstream as the same bytes: the codec calls ``normalize`` on the path part
(the query is left as sent) and stores the result in ``Exchange.path``.
What a backend would resolve differently from the router -- ``/public/../admin``,
``/public/%2e%2e/admin`` -- is resolved here first, so the pipeline that
matched is the pipeline of the resource the backend serves.

The steps, as Envoy's ``normalize_path`` and Istio's defaults do them:

1. percent-encoded octets are checked (``%`` must be followed by two hex
   digits, else the request is refused); encoded *unreserved* characters
   (RFC 3986 2.3: letters, digits, ``-._~``) are decoded and every other
   encoding is written with upper-case hex (RFC 3986 6.2.2.1);
2. encoded ``/`` and ``\\`` (``%2F``, ``%5C``), and a raw ``\\``, are refused
   (``reject``, the default), kept as they are (``keep``), or made ``/``
   (``unescape``): a backend that decodes them, or takes ``\\`` for ``/`` as
   Windows servers do, would otherwise see more segments than the router did;
3. dot segments are removed as RFC 3986 5.2.4 says (``..`` never climbs
   above the root);
4. with ``merge_slashes``, runs of ``/`` become one.

A dot segment with path parameters (``..;x``, ``.;``, ``..%3B``) is refused:
servers that strip ``;`` parameters before resolving dots (Tomcat, Jetty)
would read ``/public/..;/admin`` as ``/admin``, which the router never saw.

Most paths need none of this: the codec calls ``normalize`` only for a
target holding a ``%``, a ``\\``, a ``/.`` or a ``//``.
"""

from __future__ import annotations

from typing import Final

REJECT: Final = 0
KEEP: Final = 1
UNESCAPE: Final = 2
SLASH_MODES: Final = {"reject": REJECT, "keep": KEEP, "unescape": UNESCAPE}

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED: Final = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


class BadPath(ValueError):
    """The path cannot be accepted (a bad escape, or an encoded slash refused)."""


def normalize(path: bytes, slashes: int = REJECT, merge_slashes: bool = False) -> bytes:
    """The normalised form of an origin-form path (no query); BadPath if refused."""
    if b"%" in path:
        path = _decode(path, slashes)
    if b"\\" in path:
        if slashes == REJECT:
            raise BadPath("'\\' in the path")
        if slashes == UNESCAPE:
            path = path.replace(b"\\", b"/")
    if merge_slashes and b"//" in path:
        path = _merge(path)
    if b"/." in path:
        path = remove_dot_segments(path)
    return path


def _decode(path: bytes, slashes: int) -> bytes:
    out = bytearray()
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c != 0x25:                          # not '%'
            out.append(c)
            i += 1
            continue
        if i + 2 >= n:
            raise BadPath("incomplete percent-encoding in the path")
        h1 = path[i + 1]
        h2 = path[i + 2]
        if h1 not in _HEX or h2 not in _HEX:
            raise BadPath("invalid percent-encoding in the path")
        value = int(path[i + 1:i + 3], 16)
        if value in _UNRESERVED:
            out.append(value)
        elif value == 0x2F or value == 0x5C:   # '/' or '\\'
            if slashes == REJECT:
                raise BadPath("encoded '/' or '\\' in the path")
            if slashes == UNESCAPE:
                out.append(0x2F)
            else:
                out += b"%%%02X" % value
        else:
            out += b"%%%02X" % value
        i += 3
    return bytes(out)


def _merge(path: bytes) -> bytes:
    while b"//" in path:
        path = path.replace(b"//", b"/")
    return path


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 5.2.4 over an absolute path: ``.`` and ``..`` segments resolved."""
    segments = path.split(b"/")
    out: list[bytes] = []
    last = len(segments) - 1
    for i in range(1, len(segments)):           # segments[0] is b"" (the leading '/')
        seg = segments[i]
        if seg[:1] == b"." and (seg.startswith((b".;", b"..;", b".%3B", b"..%3B"))):
            raise BadPath("a dot segment with ';' parameters in the path")
        if seg == b".":
            if i == last:
                out.append(b"")                 # "/a/." -> "/a/"
        elif seg == b"..":
            if out:
                out.pop()
            if i == last:
                out.append(b"")                 # "/a/b/.." -> "/a/"
        else:
            out.append(seg)
    return b"/" + b"/".join(out)
