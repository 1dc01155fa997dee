"""Refuse to start on a port something else already serves.

Theory of operation
-------------------
Workers bind the listening ports with ``SO_REUSEPORT`` so the kernel spreads
connections over them. The same option would let a second meshgate (same
user) bind the same port and silently take half the traffic. So before any
worker starts, the master:

1. takes a **start lock** per port: an abstract-namespace unix socket
   ``meshgate-port-<port>`` (Linux; per network namespace, like the port,
   and gone with the process). A second meshgate starting at the same time
   waits for the lock, so it cannot slip between the check below and the
   first one's workers binding;
2. **probe-binds** every address the workers will bind, *without*
   ``SO_REUSEPORT``: the kernel refuses that while any socket -- another
   meshgate's workers, or any other program -- listens there. The probe
   sockets are closed at once; the master's own workers then bind with
   ``SO_REUSEPORT`` among themselves.

The locks are released once the workers listen (``release``): from then on
the workers' sockets themselves make the probe-bind of a later meshgate
fail. Two meshgates on different addresses with the same port number still
both start, one after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Iterable
from typing import Any

LOCK_WAIT = 60.0     # seconds to wait for another meshgate's start on the same port


class PortBusy(Exception):
    """A port this process must listen on is taken; the message names it."""


def probe_bind(host: str | None, port: int) -> None:
    """Bind (and close) every address a listener on ``host:port`` would use.

    ``host`` None or "" means every interface, as ``loop.create_server`` does.
    ``PortBusy`` when one is taken."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortBusy(f"cannot resolve {host!r} to listen on port {port}: {exc}") from None
    for family, kind, proto, _, address in {(i[0], i[1], i[2], i[3], i[4]) for i in infos}:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT is fine
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as exc:
            where = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
            raise PortBusy(f"port {port} is already in use ({where}:{port}: "
                           f"{exc.strerror or exc}); is another meshgate serving it?"
                           ) from None
        finally:
            sock.close()


class PortClaims:
    """Start locks and probe-binds for the ports one master's workers will bind."""

    def __init__(self) -> None:
        self.locks: dict[int, socket.socket] = {}

    async def claim(self, listeners: Iterable[tuple[str | None, int]]) -> None:
        """Lock then probe-bind each ``(host, port)``; ``PortBusy`` when one is taken."""
        # In port order, so two masters claiming the same ports cannot deadlock.
        for host, port in sorted(listeners, key=lambda hp: (hp[1], hp[0] or "")):
            if port == 0:
                continue        # the kernel picks a free port: nothing to collide with
            await self._lock(port)
            probe_bind(host, port)

    async def _lock(self, port: int) -> None:
        if port in self.locks or not sys.platform.startswith("linux"):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(f"\0meshgate-port-{port}")
            except OSError:
                sock.close()
                if loop.time() > deadline:
                    raise PortBusy(f"port {port}: another meshgate has been starting on it "
                                   f"for {LOCK_WAIT:g}s") from None
                await asyncio.sleep(0.05)
                continue
            self.locks[port] = sock
            return

    def release(self) -> None:
        for sock in self.locks.values():
            with contextlib.suppress(OSError):
                sock.close()
        self.locks.clear()


def worker_listeners(gateway: Any) -> list[tuple[str | None, int]]:
    """The (host, port) pairs a worker binds for this gateway config."""
    out: list[tuple[str | None, int]] = []
    if gateway.http is not None:
        out.append((gateway.http.hostname or None, gateway.http.port))
    if gateway.https is not None:
        out.append((gateway.https.hostname or None, gateway.https.port))
    if gateway.sidecar is not None:
        out.append((gateway.sidecar.bind, gateway.sidecar.outboundPort))
    return out
