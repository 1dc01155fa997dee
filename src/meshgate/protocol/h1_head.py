"""Checks on an HTTP/1.x request head that the parser leaves to us.

httptools validates syntax; these decide what a syntactically valid head
means for a gateway: an absolute-form target's authority replaces Host (RFC
9112 3.2.2), the Host used for routing loses its port, the path is
normalised once (``path.normalize``), and a head that is valid HTTP but
unacceptable here (no or several Host headers in HTTP/1.1, a bad target or
path, a fragment, HTTP/0.9, CONNECT, Upgrade with a body) is answered 400 by a
``Refusal`` standing in for a pipeline.

Header names a client may not send (``GATEWAY_ONLY``, and every
``x-meshgate-*``) are dropped as the head is parsed: only the gateway says
who the consumer is. Names a ``Connection`` header nominates are removed
before any policy sees the head (``drop_nominated``), except the ones that
frame or route the request, which are the gateway's to set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import httptools

from meshgate.protocol.path import REJECT, BadPath, normalize

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers

VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0", "0.9": b"0.9"}

# Sent upstream by the gateway alone; a client's copy is dropped at parse time.
# (H1Server.on_header tests for this one name by its length: keep them in step.)
GATEWAY_ONLY: Final = frozenset({b"eg-consumer-id"})

# The refusal of a head with more than server.maxHeaders fields.
TOO_MANY_HEADERS: Final = b"Request Header Fields Too Large: too many header fields\n"

# Fields that may not come in a trailer (RFC 9110 6.5.1): framing, routing,
# request modifiers, authentication, and what the gateway itself sets.
FORBIDDEN_TRAILERS: Final = frozenset({
    b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"trailer", b"upgrade", b"expect", b"range", b"if-match",
    b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range",
    b"max-forwards", b"cache-control", b"authorization", b"proxy-authorization", b"cookie",
    b"set-cookie", b"www-authenticate", b"content-encoding", b"content-type",
    b"content-range", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
    b"forwarded", b"eg-consumer-id", b"eg-request-id", b"age", b"date", b"location",
    b"retry-after", b"vary", b"warning",
})

# Connection may nominate hop-by-hop headers, but never these: the gateway
# frames and routes what it sends, and adds its own headers after policies.
_NOT_NOMINABLE: Final = frozenset({
    b"host", b"content-length", b"transfer-encoding", b"close", b"keep-alive", b"upgrade",
    b"",
})

# (normalise, encoded-slash mode, merge slashes): path.normalize's options.
PathRules = tuple[bool, int, bool]
DEFAULT_PATH_RULES: Final[PathRules] = (True, REJECT, False)


def drop_nominated(headers: Headers, tokens: bytes) -> Headers:
    """``headers`` without those ``tokens`` (comma-separated, lower-case) name."""
    names = {t.strip() for t in tokens.split(b",")} - _NOT_NOMINABLE
    if not names:
        return headers
    return [h for h in headers if h[0] not in names]


def te_refusal(value: bytes, count: int) -> bytes:
    """Why a Transfer-Encoding other than one ``chunked`` is refused (b"" if it is not).

    The gateway de-chunks and re-frames every body, so it forwards no transfer
    coding; one it does not implement is 501 (RFC 9112 6.1), and ``chunked``
    twice, in a list or in two headers, is 400.
    """
    codings = [c.strip() for c in value.lower().split(b",")]
    if any(c != b"chunked" for c in codings):
        return b"Not Implemented: transfer coding other than chunked\n"
    if count > 1 or len(codings) > 1:
        return b"Bad Request: chunked applied more than once\n"
    return b""


def resolve(url: bytes, host: bytes, headers: Headers, version: bytes, method: bytes,
            bad: bytes, rules: PathRules = DEFAULT_PATH_RULES, host_sent: bool = True,
            ) -> tuple[bytes, bytes, Headers, bytes]:
    """(target, Host, headers, why refused or b"") of a parsed head.

    An absolute-form target becomes origin-form and its authority the Host
    (replacing the header); its path is normalised by ``rules``; HTTP/0.9,
    HTTP/1.1 without a Host header (``host_sent``) or with an empty one and no
    authority in the target, a target that is neither origin-form, absolute
    ``http(s)://`` form nor ``OPTIONS *``, a bad path, a fragment and CONNECT
    are refused. ``bad`` is a refusal the parser callbacks found.
    """
    if version == b"0.9":
        return b"/", host, headers, b"Bad Request: HTTP/0.9 is not supported\n"
    if b"#" in url and not bad:
        bad = b"Bad Request: a fragment in the request target\n"
    if not host_sent and version == b"1.1" and not bad:
        bad = b"Bad Request: missing Host header\n"     # RFC 9112 3.2, whatever the target
    if url[:1] != b"/":
        if url == b"*":
            if method != b"OPTIONS" and not bad:
                bad = b"Bad Request: '*' is a target for OPTIONS only\n"
        else:
            try:
                url, target_host = absolute_form(url, host)
            except httptools.HttpParserInvalidURLError:
                url, target_host, bad = b"/", host, b"Bad Request: invalid request target\n"
            if target_host != host:    # RFC 9112 3.2.2: the target's authority wins over Host
                headers = [h for h in headers if h[0] != b"host"]
                headers.append((b"host", target_host))
                host = target_host
    if not host and version == b"1.1" and not bad:
        bad = b"Bad Request: missing Host header\n"
    if rules[0] and url[:1] == b"/" and not bad:
        url, bad = normalized(url, rules)
    if method == b"CONNECT":
        bad = b"Bad Request: CONNECT is not supported\n"
    return url, host, headers, bad


def normalized(url: bytes, rules: PathRules) -> tuple[bytes, bytes]:
    """(target with its path normalised, why refused or b"")."""
    q = url.find(b"?")
    path = url if q < 0 else url[:q]
    try:
        path = normalize(path, rules[1], rules[2])
    except BadPath as exc:
        return b"/", b"Bad Request: %s\n" % str(exc).encode()
    return (path if q < 0 else path + url[q:]), b""


def absolute_form(url: bytes, host: bytes) -> tuple[bytes, bytes]:
    """(origin-form target, authority) of ``http(s)://host/path?q``.

    InvalidURLError for anything else: a target that is not origin-form must
    be a URL with an http or https scheme and a host (``*/../admin``,
    ``admin/x`` or ``//evil/x`` are not, and would reach no normaliser).
    """
    # Any: httptools' stubs type these fields as bytes, but absent parts are
    # None, and compiled code would enforce the stubs' word.
    parsed: Any = httptools.parse_url(url)
    schema = (parsed.schema or b"").lower()
    if (schema != b"http" and schema != b"https") or not parsed.host or parsed.userinfo:
        raise httptools.HttpParserInvalidURLError("not an absolute http(s) URL")
    path = parsed.path or b"/"
    if path[:1] != b"/":
        raise httptools.HttpParserInvalidURLError("no path")
    if parsed.query:
        path += b"?" + parsed.query
    name = parsed.host
    if b":" in name:                   # an IPv6 literal: parse_url drops its brackets
        name = b"[" + name + b"]"
    return path, name + (b":%d" % parsed.port if parsed.port else b"")


def host_only(host: bytes) -> bytes:
    """The host of a Host value, lower-case, without its port (IPv6 kept in brackets)."""
    if host[:1] == b"[":
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    colon = host.find(b":")
    return (host if colon < 0 else host[:colon]).lower()


class Refusal:
    """Stands in for a pipeline when the request head itself is unacceptable."""

    name = ""

    def __init__(self, body: bytes, status: int = 0) -> None:
        self.body = body
        # A transfer coding we do not implement (RFC 9112 6.1) is 501, too many
        # header fields 431, the rest 400.
        self.status = status or (501 if body.startswith(b"Not Implemented") else
                                 431 if body.startswith(b"Request Header Fields") else 400)

    def run(self, ex: Exchange) -> None:
        ex.respond(self.status, self.body)
