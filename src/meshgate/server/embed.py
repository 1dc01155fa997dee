"""HTTP apps the master runs in its own loop (Admin API, embedded registry).

uvicorn normally owns the process: it installs signal handlers and binds its
own socket. Inside the master (or any host loop) the host owns the signals,
so ``EmbeddedServer`` leaves them alone, and ``bind()`` opens the socket
first so that "port in use" is an error the host reports at start.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the host's loop; the host owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (SO_REUSEADDR), ready for uvicorn."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError:
        sock.close()
        raise
    return sock
