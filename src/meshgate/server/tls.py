"""TLS termination for the ``https`` section: one context per certificate, SNI picks.

``tls`` maps a domain to ``{key, cert, ca}``. A ClientHello's server name
selects, in order: the exact domain, a wildcard (``*.example.com`` covers one
label), then ``default``. TLS 1.2 is the floor. A ``ca`` list makes the
listener ask for (not require) a client certificate verified against it.

ALPN offers ``h2`` and ``http/1.1`` (``http/1.1`` alone when HTTP/2 is off);
an entry's ``protocols`` narrows that for its certificate. OpenSSL runs the
SNI callback before it chooses the protocol, so the chosen certificate's
list is the one offered. The listener then picks the codec by the result
(``server/codecs.py``).
"""

from __future__ import annotations

import ssl
from typing import Any


def _context(entry: Any, http2: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(entry.cert, entry.key)
    offered = ["h2", "http/1.1"] if http2 else ["http/1.1"]
    wanted = getattr(entry, "protocols", None)
    if wanted:
        offered = [p for p in offered if p in wanted] or ["http/1.1"]
    ctx.set_alpn_protocols(offered)
    cas = list(entry.ca or [])
    if cas:
        for ca in cas:
            ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class SniSelector:
    def __init__(self, tls: dict[str, Any], http2: bool = False) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}
        self.default: ssl.SSLContext | None = None
        for domain, entry in tls.items():
            ctx = _context(entry, http2)
            name = domain.lower()
            if name == "default":
                self.default = ctx
            elif name.startswith("*."):
                self.wildcard[name[2:]] = ctx
            else:
                self.exact[name] = ctx
        if self.default is None:
            first = next(iter([*self.exact.values(), *self.wildcard.values()]), None)
            if first is None:
                raise ValueError("https.tls names no certificate")
            self.default = first

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        if not server_name:
            return None
        name = server_name.lower()
        ctx = self.exact.get(name)
        if ctx is None:
            dot = name.find(".")
            if dot > 0:
                ctx = self.wildcard.get(name[dot + 1:])
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """The context a listener starts with; the callback swaps per handshake."""
        assert self.default is not None
        outer = self.default

        def on_sni(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            chosen = self.select(server_name)
            if chosen is not None and chosen is not outer:
                sock.context = chosen

        outer.sni_callback = on_sni
        return outer
