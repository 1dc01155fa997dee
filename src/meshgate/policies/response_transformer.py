"""response-transformer: add/remove response headers and JSON body fields (EG's policy).

Theory of operation
-------------------
Params and value syntax are described in ``_transform``. The action puts a
``_TransformingResponder`` between the Exchange and its codec
(``ex.responder``); whoever answers next -- the proxy relaying the upstream,
or a local ``respond()`` -- talks to it through the ordinary Responder
methods, and it forwards to the codec:

* header rules rewrite the head on its way (the raw block of an upstream
  response, or the header list of a local one);
* with body rules, a JSON response (by Content-Type, not compressed) is held
  back: its head and up to ``maxBodySize`` bytes are kept, and at the end the
  rewritten body leaves with a corrected Content-Length. A response larger
  than that answers 502 rather than leaving untransformed (a ``remove`` rule
  often exists to keep a field from clients). Other responses stream through.

The proxy and the codec are unaware of the interposition.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from meshgate.policies import POLICIES, BuildContext, PolicySpec
from meshgate.policies._transform import JSON, Rules, TransformerParams, body_kind
from meshgate.protocol.hop import remove_lines as remove_block_lines
from meshgate.protocol.hop import render_block

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers, Responder, ResponseSource

_CONTENT_TYPE = re.compile(rb"(?:^|\n)content-type:[ \t]*([^\r\n]*)", re.I)
_CONTENT_ENCODING = re.compile(rb"(?:^|\n)content-encoding:[ \t]*([^\r\n]*)", re.I)
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class ResponseTransformer:
    def __init__(self, params: TransformerParams, ctx: BuildContext) -> None:
        self.rules = Rules(params)

    def __call__(self, ex: Exchange) -> None:
        ex.responder = _TransformingResponder(ex.responder, self.rules)


def _header(block: bytes, pattern: re.Pattern[bytes]) -> bytes | None:
    m = pattern.search(block)
    return m.group(1) if m else None


class _TransformingResponder:
    """A Responder that rewrites the response, then hands it to ``inner``."""

    __slots__ = ("block", "chunks", "inner", "rules", "size", "status")

    def __init__(self, inner: Responder, rules: Rules) -> None:
        self.inner = inner
        self.rules = rules
        self.chunks: list[bytes] | None = None     # not None: holding the body back
        self.size = 0
        self.status = 0
        self.block = b""

    # -- the head --------------------------------------------------------------
    def start_response(self, ex: Exchange, status: int, headers: Headers,
                       has_body: bool, length: int | None) -> None:
        self.start_response_raw(ex, status, render_block(headers, length), has_body, length)

    def start_response_raw(self, ex: Exchange, status: int, block: bytes,
                           has_body: bool, length: int | None) -> None:
        rules = self.rules
        # The body's type is the upstream's, whatever the header rules do to the head.
        hold = rules.body_rules and has_body and body_kind(
            _header(block, _CONTENT_TYPE), _header(block, _CONTENT_ENCODING), form=False) == JSON
        if rules.header_rules:
            block = remove_block_lines(block, rules.drop_headers) + b"".join(
                [b"%s: %s\r\n" % kv for kv in rules.added_headers(ex)])
        if hold:
            if length is not None and length > rules.max_body:
                self._too_large(ex)
                return
            self.status = status
            self.block = block
            self.chunks = []
            return
        self.inner.start_response_raw(ex, status, block, has_body, length)

    # -- the body --------------------------------------------------------------
    def send_data(self, ex: Exchange, data: bytes) -> None:
        chunks = self.chunks
        if chunks is None:
            self.inner.send_data(ex, data)
            return
        self.size += len(data)
        if self.size > self.rules.max_body:
            self._too_large(ex)
            return
        chunks.append(data)

    def end_response(self, ex: Exchange, trailers: Headers | None) -> None:
        chunks = self.chunks
        if chunks is None:
            self.inner.end_response(ex, trailers)
            return
        self.chunks = None
        body = b"".join(chunks)
        try:
            new = self.rules.transform_body(ex, body, JSON)
        except ValueError:               # not JSON after all: send it as it came
            new = None
        if new is not None:
            body = new
        block = remove_block_lines(self.block, _FRAMING) + b"content-length: %d\r\n" % len(body)
        inner = self.inner
        inner.start_response_raw(ex, self.status, block, True, len(body))
        inner.send_data(ex, body)
        inner.end_response(ex, None)

    def _too_large(self, ex: Exchange) -> None:
        self.chunks = None
        source = ex.source
        if source is not None:
            ex.source = None
            source.abort()
        self.inner.respond(ex, 502, b"Bad Gateway: response too large to transform\n")

    # -- local answers and the rest of the Responder -----------------------------
    def respond(self, ex: Exchange, status: int, body: bytes,
                headers: Headers | None = None) -> None:
        self.chunks = None
        rules = self.rules
        if rules.header_rules:
            drop = rules.drop_headers
            headers = [h for h in headers or () if h[0] not in drop] + rules.added_headers(ex)
        self.inner.respond(ex, status, body, headers)

    def flush(self, ex: Exchange) -> None:
        if self.chunks is None:
            self.inner.flush(ex)

    def abort(self, ex: Exchange) -> None:
        self.chunks = None
        self.inner.abort(ex)

    def pause_body(self, ex: Exchange) -> None:
        self.inner.pause_body(ex)

    def resume_body(self, ex: Exchange) -> None:
        self.inner.resume_body(ex)

    def set_response_source(self, ex: Exchange, source: ResponseSource | None) -> None:
        self.inner.set_response_source(ex, source)


POLICIES.add(PolicySpec("response-transformer", TransformerParams, ResponseTransformer,
                        "Add or remove response headers and JSON body fields"))
