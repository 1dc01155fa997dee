"""gRPC-Web: browsers' gRPC calls, sent on to HTTP/2 upstreams as gRPC.

A gRPC-Web call (grpc/doc/PROTOCOL-WEB.md) is a POST whose content-type is
``application/grpc-web`` (binary) or ``application/grpc-web-text`` (the
same bytes in base64), each optionally ``+proto`` / ``+json``, over
HTTP/1.1 or HTTP/2. The body is gRPC's framing (flag byte, 4-byte length,
message); the response ends with the trailers as one more frame in the body
(flag 0x80, then ``name: value\\r\\n`` lines), which is what lets it work
without HTTP trailers, hence over HTTP/1.1 and through browsers' fetch.
Envoy's ``envoy.filters.http.grpc_web`` does this translation; meshgate's
proxy does it for serviceEndpoints that speak HTTP/2 (``GrpcWebForward``).

Theory of operation
-------------------
Nothing here runs unless a request is gRPC-Web: the proxy of such a route
calls ``translate`` once, before the request is sent, and the Exchange then
carries what the rest of the path needs:

* **request head**: ``content-type: application/grpc[+codec]``,
  ``te: trailers`` (which also makes the HTTP/2 upstream codec hand the
  response trailers on, and frame an HTTP/1.1 client's response chunked),
  ``grpc-accept-encoding: identity`` unless the client named encodings
  (browser clients cannot inflate). The head itself is built by the proxy
  as for any request, so retries, path rewrites and X-Forwarded-* apply.
* **request body**: binary bodies pass untouched. A -text body is decoded
  by ``_TextBody`` as it streams, 4 characters at a time (a group split
  across reads waits for its rest); it sits in ``ex.body_tee``, the place
  the Exchange routes every body sink through, so whatever consumes the body
  (an HTTP/2 stream, a retrying ``Call``) sees gRPC bytes. Malformed base64
  ends the call with INTERNAL (HTTP 400 in gRPC's mapping) and cancels the
  upstream stream.
* **response**: ``WebResponder`` wraps the codec's responder. A gRPC
  response head gets the client's content-type back and loses
  ``content-length`` (the body changes); DATA passes on (base64-encoded for
  -text, incrementally, with padding only where a gRPC frame ends, as Envoy
  encodes frame by frame); the trailers become the final trailer frame. A
  trailers-only response (grpc-status in the head) keeps its head and gets
  the same frame. Any other upstream answer (not 200, not gRPC) becomes a
  gRPC-Web error, as do meshgate's own answers (``answer``).

Own answers (no route, a policy's refusal, an upstream that fails) to a
gRPC-Web request are HTTP 200 with ``grpc-status`` / ``grpc-message`` in
the head and the trailer frame as the body. Their fields are those a gRPC
call gets (``grpc.local_answer``: one table of codes, one message
encoding); an upstream's non-gRPC answer is read as a gRPC client reads an
HTTP status (``grpc.status_from_http``).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, Final

from meshgate.protocol import grpc
from meshgate.protocol.hop import parse_block, render_block

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers, Responder, ResponseSource

_TEXT: Final = b"application/grpc-web-text"
TRAILER_FLAG: Final = 0x80
_STATUS_FIELDS: Final = (b"grpc-status", b"grpc-message", b"grpc-status-details-bin")


class Variant:
    """What a gRPC-Web client sent and reads back: base64 or not, the codec suffix."""

    __slots__ = ("response_type", "suffix", "text_in", "text_out")

    def __init__(self, text_in: bool, text_out: bool, suffix: bytes) -> None:
        self.text_in = text_in
        self.text_out = text_out
        self.suffix = suffix             # b"", b"+proto", b"+json", ...
        self.response_type = (_TEXT if text_out else grpc.GRPC_WEB) + suffix


def variant(ex: Exchange) -> Variant | None:
    """The request's gRPC-Web variant; None when it is not gRPC-Web."""
    ctype = grpc.content_type(ex.headers)
    if ctype is None or not ctype.startswith(grpc.GRPC_WEB):
        return None
    text_in = ctype.startswith(_TEXT)
    rest = ctype[len(_TEXT if text_in else grpc.GRPC_WEB):]
    suffix = b""
    if rest[:1] == b"+":
        suffix = rest.split(b";", 1)[0].strip()
    elif rest and rest[:1] != b";":
        return None                      # application/grpc-webfoo
    # Envoy answers in base64 when ``accept`` asks for it; a -text request is
    # answered in kind, which is what every gRPC-Web client expects.
    accept = ex.header(b"accept")
    text_out = text_in or (accept is not None and _TEXT in accept.lower())
    return Variant(text_in, text_out, suffix)


def translate(ex: Exchange, web: Variant) -> None:
    """Make ``ex`` a gRPC request for the upstream, and its response gRPC-Web again."""
    headers = [h for h in ex.headers if h[0] != b"content-type" and h[0] != b"te"]
    headers.append((b"content-type", grpc.GRPC + web.suffix))
    headers.append((b"te", b"trailers"))
    if not any(h[0] == b"grpc-accept-encoding" for h in headers):
        headers.append((b"grpc-accept-encoding", b"identity"))
    ex.headers = headers
    if web.text_in and ex.body_expected:
        ex.body_length = -1              # decoded, the body is shorter: HTTP/2 frames it
        ex.body_tee = _TextBody(ex, ex.body_tee)
    ex.responder = WebResponder(ex.responder, web)


# -- own answers -----------------------------------------------------------------
def answer(ex: Exchange, status: int, body: bytes, headers: Headers | None) -> bool:
    """Answer a gRPC-Web request as a gRPC-Web error; False when ``ex`` is not one
    (or its response has started, which only the codec can end)."""
    if ex.done or ex.status:
        return False
    web = variant(ex)
    if web is None:
        return False
    send_error(ex.responder, ex, web, status,
               grpc.local_answer(status, body, headers, web.response_type))
    return True


def send_error(responder: Responder, ex: Exchange, web: Variant, status: int,
               fields: Headers) -> None:
    """HTTP 200, the fields of a gRPC failure in the head, and its trailer frame.

    ``fields`` are a Trailers-Only answer's (``grpc.local_answer``: the same
    codes and messages gRPC calls get). Sent through the codec's response
    calls, not its ``respond``: the request may look like gRPC by now, and a
    gRPC answer has no body. Metrics count ``status``, what the answer means.
    """
    head: Headers = [(b"content-type", web.response_type)]
    status_fields: Headers = []
    for item in fields:
        name = item[0]
        if name in _STATUS_FIELDS:
            status_fields.append(item)
        if name != b"content-type" and name != b"content-length":
            head.append(item)
    frame = trailer_frame(status_fields)
    if web.text_out:
        frame = base64.b64encode(frame)
    responder.start_response(ex, 200, head, True, len(frame))
    ex.status = status
    responder.send_data(ex, frame)
    responder.end_response(ex, None)


def trailer_frame(fields: Headers) -> bytes:
    """The gRPC-Web trailer frame: flag 0x80, length, ``name: value\\r\\n`` lines."""
    payload = b"".join([b"%s: %s\r\n" % (name.lower(), value) for name, value in fields])
    return bytes((TRAILER_FLAG,)) + len(payload).to_bytes(4, "big") + payload


# -- request body: -text decoding -------------------------------------------------
def decode(text: bytes) -> bytes | None:
    """Base64 whose length is a multiple of 4, padding allowed at the end of any
    group (clients may encode message by message); None if malformed."""
    try:
        if b"=" not in text:
            return base64.b64decode(text, validate=True)
        out = []
        start = 0
        while start < len(text):
            pad = text.find(b"=", start)
            end = len(text) if pad < 0 else (pad // 4 + 1) * 4
            out.append(base64.b64decode(text[start:end], validate=True))
            start = end
        return b"".join(out)
    except (binascii.Error, ValueError):
        return None


class _TextBody:
    """The body tee of a -text request: base64 in, gRPC frames out to ``primary``.

    ``primary`` is set by ``Exchange.attach_body_sink`` for every sink that
    attaches (the Exchange's buffered chunks are replayed through it), so
    each consumer gets decoded bytes. A mirror's tee, installed earlier, still
    receives the client's bytes: its copy is a gRPC-Web request of its own.
    """

    __slots__ = ("carry", "ex", "failed", "mirror", "primary")

    def __init__(self, ex: Exchange, mirror: Any) -> None:
        self.ex = ex
        self.primary: Any = None
        self.mirror = mirror
        if mirror is not None:
            mirror.primary = _NOWHERE    # the mirror only copies; we feed the primary
        self.carry = b""
        self.failed = False

    def body_data(self, data: bytes) -> None:
        if self.failed:
            return
        if self.mirror is not None:
            self.mirror.body_data(data)
        if self.carry:
            data = self.carry + data
        whole = len(data) & ~3
        self.carry = data[whole:]
        if whole:
            decoded = decode(data[:whole])
            if decoded is None:
                self._fail(b"invalid base64")
            elif decoded:
                self.primary.body_data(decoded)

    def body_end(self, trailers: Headers | None) -> None:
        if self.failed:
            return
        if self.mirror is not None:
            self.mirror.body_end(trailers)
        if self.carry:
            self._fail(b"base64 length not a multiple of 4")
            return
        self.primary.body_end(trailers)

    def body_abort(self) -> None:
        if self.mirror is not None:
            self.mirror.body_abort()
        if self.primary is not None and not self.failed:
            self.primary.body_abort()

    def _fail(self, why: bytes) -> None:
        self.failed = True
        ex = self.ex
        if self.primary is not None:
            self.primary.body_abort()    # cancels the upstream stream
        ex.responder.respond(ex, 400, b"Bad Request: gRPC-Web text body: " + why + b"\n")


class _Nowhere:
    def body_data(self, data: bytes) -> None:
        pass

    def body_end(self, trailers: Headers | None) -> None:
        pass

    def body_abort(self) -> None:
        pass


_NOWHERE: Final = _Nowhere()


# -- response ----------------------------------------------------------------------
class _TextOut:
    """Base64 of a response body as it streams.

    Whole 3-byte groups go out at once; the 0-2 bytes left over wait for the
    next read, except at the end of a gRPC frame, where the encoding is padded
    so that each message can be decoded as soon as it has arrived.
    """

    __slots__ = ("header", "left", "pending")

    def __init__(self) -> None:
        self.pending = b""               # bytes not encoded yet (under 3, or a frame's end)
        self.header = bytearray()        # the current frame's header bytes seen so far
        self.left = 0                    # payload bytes of the current frame still to come

    def encode(self, data: bytes) -> bytes:
        ends: list[int] = []             # positions in ``data`` where a frame ends
        pos = 0
        size = len(data)
        header = self.header
        while pos < size:
            if self.left:
                take = min(self.left, size - pos)
                pos += take
                self.left -= take
                if not self.left:
                    ends.append(pos)
            else:
                take = min(5 - len(header), size - pos)
                header += data[pos:pos + take]
                pos += take
                if len(header) == 5:
                    self.left = int.from_bytes(header[1:5], "big")
                    header.clear()
                    if not self.left:
                        ends.append(pos)
        offset = len(self.pending)
        buf = self.pending + data if offset else data
        out = []
        start = 0
        for end in ends:
            out.append(base64.b64encode(buf[start:offset + end]))
            start = offset + end
        rest = buf[start:]
        whole = len(rest) - len(rest) % 3
        if whole:
            out.append(base64.b64encode(rest[:whole]))
        self.pending = rest[whole:]
        return b"".join(out)

    def finish(self, frame: bytes) -> bytes:
        """What is left (padded), then ``frame`` (the trailer frame), in base64."""
        rest = base64.b64encode(self.pending) if self.pending else b""
        self.pending = b""
        return rest + base64.b64encode(frame)


_IDLE: Final = 0         # no response head yet
_STREAM: Final = 1       # a gRPC response is being relayed
_FOREIGN: Final = 2      # the upstream answered something else: becomes an error at its end
_DONE: Final = 3


class WebResponder:
    """The Responder of a translated request: the codec's, behind the translation."""

    __slots__ = ("collected", "foreign", "head_status", "inner", "state", "text", "web")

    def __init__(self, inner: Responder, web: Variant) -> None:
        self.inner = inner
        self.web = web
        self.state = _IDLE
        self.text: _TextOut | None = None
        self.head_status: Headers | None = None   # grpc-status & co. of a trailers-only head
        self.foreign: tuple[int, Headers] | None = None
        self.collected = b""

    def start_response(self, ex: Exchange, status: int, headers: Headers,
                       has_body: bool, length: int | None) -> None:
        self.start_response_raw(ex, status, render_block(headers, length), has_body, length)

    def start_response_raw(self, ex: Exchange, status: int, block: bytes,
                           has_body: bool, length: int | None) -> None:
        fields = parse_block(block)
        ctype = next((v for n, v in fields if n == b"content-type"), None)
        if status != 200 or not grpc.is_grpc_type(None if ctype is None else ctype.lower()):
            self.state = _FOREIGN
            self.foreign = (status, fields)
            return
        self.state = _STREAM
        status_fields = [(n, v) for n, v in fields if n in _STATUS_FIELDS]
        if status_fields:                # trailers-only: the head is the whole answer
            self.head_status = status_fields
        kept = [(n, v) for n, v in fields if n != b"content-type" and n != b"content-length"]
        kept.append((b"content-type", self.web.response_type))
        if self.web.text_out:
            self.text = _TextOut()
        self.inner.start_response_raw(ex, 200, render_block(kept, None), True, None)

    def send_data(self, ex: Exchange, data: bytes) -> None:
        state = self.state
        if state == _STREAM:
            text = self.text
            if text is not None:
                data = text.encode(data)
                if not data:
                    return
            self.inner.send_data(ex, data)
        elif state == _FOREIGN:
            room = grpc.MAX_MESSAGE - len(self.collected)
            if room > 0:
                self.collected += data[:room]

    def end_response(self, ex: Exchange, trailers: Headers | None) -> None:
        state = self.state
        if state == _STREAM:
            fields = trailers or self.head_status or [
                (b"grpc-status", b"%d" % grpc.INTERNAL),
                (b"grpc-message", b"upstream ended the call without a status")]
            self._end(ex, fields)
        elif state == _FOREIGN:
            self._foreign_error(ex)
        elif state == _IDLE:
            self.inner.end_response(ex, trailers)

    def _end(self, ex: Exchange, fields: Headers) -> None:
        """The trailer frame, and the end of the HTTP response (no HTTP trailers)."""
        self.state = _DONE
        frame = trailer_frame(fields)
        text = self.text
        self.inner.send_data(ex, text.finish(frame) if text is not None else frame)
        self.inner.end_response(ex, None)

    def _foreign_error(self, ex: Exchange) -> None:
        assert self.foreign is not None
        status, fields = self.foreign
        self.state = _DONE
        given = [(n, v) for n, v in fields if n in _STATUS_FIELDS]
        if not any(n == b"grpc-status" for n, _ in given):
            # As a gRPC client reads an HTTP status (gRPC's table), with the body's text.
            text = self.collected.strip() or b"upstream answered HTTP %d" % status
            given = grpc.trailers_only(grpc.status_from_http(status), text)
        send_error(self.inner, ex, self.web, status, given)

    def respond(self, ex: Exchange, status: int, body: bytes,
                headers: Headers | None = None) -> None:
        if ex.done:
            return
        state = self.state
        if state == _STREAM:             # mid-stream (a deadline): end the call, not the connection
            self._end(ex, [(n, v) for n, v in grpc.local_answer(status, body, headers)
                           if n in _STATUS_FIELDS])
            return
        if state == _DONE or ex.status:
            self.inner.respond(ex, status, body, headers)
            return
        self.state = _DONE
        send_error(self.inner, ex, self.web, status,
                   grpc.local_answer(status, body, headers, self.web.response_type))

    def abort(self, ex: Exchange) -> None:
        if self.state == _FOREIGN and not ex.status:
            self._foreign_error(ex)      # nothing was sent: the error can still be told
            return
        self.inner.abort(ex)

    def flush(self, ex: Exchange) -> None:
        self.inner.flush(ex)

    def pause_body(self, ex: Exchange) -> None:
        self.inner.pause_body(ex)

    def resume_body(self, ex: Exchange) -> None:
        self.inner.resume_body(ex)

    def set_response_source(self, ex: Exchange, source: ResponseSource | None) -> None:
        self.inner.set_response_source(ex, source)
