"""The two small interfaces between the proxy and the upstream codecs.

An ``Endpoint`` holds one ``EndpointPool``: the HTTP/1.1 keep-alive pool
(``pool.Pool``) or the multiplexed HTTP/2 pool (``h2_pool.H2Pool``). The
proxy and a ``Call`` only ever ``send`` an Exchange with the HTTP/1.1 head
``Forward.head`` built for it (the HTTP/2 pool turns that head into a header
list), so the resilience layer is the same whatever the endpoints speak.

An ``Attempt`` is one request in flight on an upstream -- an HTTP/1.1
connection or an HTTP/2 stream: what a ``Call`` feeds the request body to,
and aborts when it discards a response for a retry.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers


class Attempt(Protocol):
    def body_data(self, data: bytes) -> None: ...

    def body_end(self, trailers: Headers | None) -> None: ...

    def body_abort(self) -> None: ...

    def abort(self) -> None: ...


class EndpointPool(Protocol):
    """``open - len(idle) + len(waiting)`` is the endpoint's requests in flight
    or waiting (least-request balancing reads it inline)."""

    responses: int          # response heads received
    errors: int             # ... with a 5xx status

    @property
    def open(self) -> int: ...

    @property
    def idle(self) -> Sized: ...

    @property
    def waiting(self) -> Sized: ...

    def send(self, ex: Exchange, head: bytes, chunked_body: bool, timeout: float) -> None: ...

    def retry(self, ex: Exchange, head: bytes, chunked_body: bool, timeout: float) -> None: ...

    def sweep(self, now: float) -> None: ...

    def close(self, removed: bool = False) -> None: ...
