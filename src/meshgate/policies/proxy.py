"""proxy: forward the exchange to a serviceEndpoint (Express Gateway's proxy policy).

Parameters follow Express Gateway (which passed them to node-http-proxy):
``serviceEndpoint``, ``changeOrigin`` (Host becomes the target's), ``stripPath``
(drop the apiEndpoint path up to its first ``:`` or ``*``), ``prependPath``
(put the target url's path in front, default on), ``ignorePath`` (send only the
target url's path), ``xfwd`` (add X-Forwarded-For/-Proto/-Host; meshgate
defaults it on, as gateways are expected to), ``strategy`` (round-robin),
``timeout`` / ``proxyTimeout`` (response timeout in ms, overriding the
serviceEndpoint's), ``headers`` (constant headers to add). As in Express
Gateway, the serviceEndpoint's ``proxyOptions`` override the action's values,
and the action's own (deprecated) ``proxyOptions`` override both.

The request head for the upstream is built in one pass over the client's
headers: hop-by-hop headers and those named in ``Connection`` are dropped,
``Expect`` is answered by us, an ``eg-request-id`` is added.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from meshgate.policies import POLICIES, BuildContext, PolicySpec
from meshgate.protocol.hop import HOP_BY_HOP

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange
    from meshgate.upstream.cluster import Endpoint


class ProxyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serviceEndpoint: str = Field(description="Name of the serviceEndpoint to forward to")
    changeOrigin: bool | None = Field(None, description="Rewrite Host to the target's")
    stripPath: bool | None = Field(None, description="Strip the apiEndpoint path prefix")
    prependPath: bool | None = Field(None, description="Prepend the target url's path")
    ignorePath: bool | None = Field(None, description="Send only the target url's path")
    xfwd: bool | None = Field(None, description="Add X-Forwarded-For/-Proto/-Host")
    secure: bool | None = Field(None, description="Verify upstream TLS certificates")
    strategy: str = Field("round-robin", description="How to choose among `urls`")
    timeout: int | None = Field(None, ge=0, description="Response timeout in ms")
    proxyTimeout: int | None = Field(None, ge=0, description="Alias of timeout")
    headers: dict[str, str] = Field(default_factory=dict, description="Headers to add")
    proxyOptions: dict[str, Any] = Field(default_factory=dict,
                                         description="Deprecated in EG: overrides the above")


# Client headers we never copy verbatim: hop-by-hop, and the ones we rewrite.
_SPECIAL = HOP_BY_HOP | {b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
                         b"x-forwarded-host", b"eg-request-id"}
_ids = itertools.count(1)
_ID_PREFIX = b"%x" % (os.getpid() ^ int.from_bytes(os.urandom(4), "big"))


def _merged_options(action: ProxyParams, endpoint_options: dict[str, Any]) -> dict[str, Any]:
    """Express Gateway's precedence: action < serviceEndpoint < action.proxyOptions."""
    merged = {k: v for k, v in action.model_dump().items() if v is not None}
    merged.update(endpoint_options)
    merged.update(action.proxyOptions)
    return merged


class Proxy:
    def __init__(self, params: ProxyParams, ctx: BuildContext) -> None:
        cluster = ctx.clusters[params.serviceEndpoint]
        options = _merged_options(params, cluster.proxy_options)
        self.cluster = cluster
        self.name = params.serviceEndpoint
        self.change_origin = bool(options.get("changeOrigin", False))
        self.strip_path = bool(options.get("stripPath", False))
        self.prepend_path = bool(options.get("prependPath", True))
        self.ignore_path = bool(options.get("ignorePath", False))
        self.xfwd = bool(options.get("xfwd", True))
        timeout = options.get("timeout", options.get("proxyTimeout"))
        self.timeout = float(timeout) / 1000.0 if timeout is not None else None
        extra = options.get("headers") or {}
        self.extra_headers = b"".join(b"%s: %s\r\n" % (str(k).lower().encode(),
                                                          str(v).encode("latin-1"))
                                      for k, v in extra.items())
        # The request id line ends every head; its counter is the only variable part.
        self.extra_headers += b"eg-request-id: " + _ID_PREFIX + b"-"
        self.rewrites_path = self.strip_path or self.ignore_path or (
            self.prepend_path and any(ep.base_path for ep in cluster.endpoints))

    def __call__(self, ex: Exchange) -> bool:
        cluster = self.cluster
        ep = cluster.single or cluster.pick()
        ex.cluster_name = self.name
        path = ex.path
        if self.rewrites_path:
            path = self._rewrite(ex, ep, path)
        lines = [b"%s %s HTTP/1.1\r\n" % (ex.method, path)]
        append = lines.append
        host = xff = tokens = None
        chunked = False
        special = _SPECIAL
        for item in ex.headers:
            name = item[0]
            if name not in special:
                append(b"%s: %s\r\n" % item)
            elif name == b"host":
                host = item[1]
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":     # several Connection headers: all count
                tokens = item[1] if tokens is None else tokens + b"," + item[1]
            elif name == b"x-forwarded-for":
                xff = item[1] if xff is None else xff + b", " + item[1]
            elif not self.xfwd and name.startswith(b"x-forwarded-"):
                append(b"%s: %s\r\n" % item)
        if tokens is not None:
            lines = _drop_connection_listed(lines, tokens)
            append = lines.append
        host_line = ep.authority if self.change_origin or host is None else host
        if self.xfwd:
            client = ex.client_addr
            append(_XFWD % (host_line, client if xff is None else xff + b", " + client,
                            ex.scheme, host or ep.authority))
        else:
            append(b"host: %s\r\n" % host_line)
            if xff is not None:
                append(b"x-forwarded-for: %s\r\n" % xff)
        if chunked:
            append(b"transfer-encoding: chunked\r\n")
        append(self.extra_headers)          # ... and "eg-request-id: <prefix>-"
        append(b"%x\r\n\r\n" % next(_ids))
        pool = ep.pool
        timeout = self.timeout
        pool.send(ex, b"".join(lines), chunked,
                  pool.response_timeout if timeout is None else timeout)
        return True

    def _rewrite(self, ex: Exchange, ep: Endpoint, path: bytes) -> bytes:
        if self.strip_path:
            path = _strip(ex.route.strip_pos, path)
        if self.ignore_path:
            return ep.base_path or b"/"
        if self.prepend_path and ep.base_path:
            return ep.base_path + (b"" if path == b"/" else path)
        return path


_XFWD = (b"host: %s\r\nx-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n"
         b"x-forwarded-host: %s\r\n")


def _strip(pos: int | None, path: bytes) -> bytes:
    """EG's stripPath: cut the url at the route path's first ':' or '*'."""
    if pos is None or pos == 0:
        return path
    if pos < 0:
        q = path.find(b"?")
        return b"/" if q < 0 else b"/" + path[q:]
    rest = path[pos:]
    return rest if rest[:1] == b"/" else b"/" + rest


def _drop_connection_listed(lines: list[bytes], value: bytes) -> list[bytes]:
    names = {t.strip().lower() for t in value.split(b",")} - {b"close", b"keep-alive", b""}
    if not names:
        return lines
    return [lines[0]] + [ln for ln in lines[1:] if ln.split(b":", 1)[0] not in names]


POLICIES.add(PolicySpec(
    name="proxy",
    params=ProxyParams,
    build=Proxy,
    description="Forward the request to a serviceEndpoint",
))
