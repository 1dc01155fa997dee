"""What every discovery provider shares: the latest set, staleness, backoff.

Theory of operation
-------------------
``SourceProvider`` holds the one piece of state a provider publishes -- the
latest complete endpoint set -- plus a version number. ``_emit(specs)``
replaces the set (sorted by key, so equal sets compare equal) and wakes the
consumer only when it differs; ``updates()`` always hands out the newest set,
so a slow consumer skips intermediate sets instead of queueing them.

A subclass implements ``_run()``: a loop that fetches/watches its source and
calls ``_emit`` on news, ``_ok()`` when the source answers and ``_fail(msg)``
when it does not. ``_fail`` never touches the set; it marks the provider
``stale`` and logs once per outage (recovery is logged once too). ``Backoff``
gives the fully jittered exponential delays between reconnects and is reset
by a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable

from meshgate.discovery import EndpointSpec

log = logging.getLogger("meshgate.discovery")


class Backoff:
    """Delays ``uniform(d/2, d)`` with ``d = min(cap, base * 2**attempt)``."""

    def __init__(self, base: float = 0.2, cap: float = 5.0) -> None:
        self.base = base
        self.cap = max(cap, base)
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class SourceProvider:
    """Base of the providers: latest-set publication, staleness and lifecycle."""

    kind = "source"

    def __init__(self, service: str, on_stale: Callable[[bool], None] | None = None) -> None:
        self.service = service
        self.stale = False
        self.error: str | None = None
        self.errors = 0                  # failed fetches / broken watches
        self.changes = 0                 # sets emitted
        self._on_stale = on_stale
        self._specs: list[EndpointSpec] | None = None
        self._version = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def last(self) -> list[EndpointSpec] | None:
        """The last set emitted (None before the first)."""
        return self._specs

    async def start(self) -> None:
        self._task = asyncio.create_task(self._guarded(), name=f"discovery:{self.service}")

    async def stop(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._close()

    async def updates(self) -> AsyncIterator[list[EndpointSpec]]:
        seen = 0
        while not self._closed:
            if self._version == seen:
                self._wake.clear()
                await self._wake.wait()
                continue
            seen = self._version
            assert self._specs is not None
            yield self._specs

    # -- for subclasses ----------------------------------------------------------

    async def _run(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        """Release connections (called by stop after the loop ended)."""

    def _emit(self, specs: list[EndpointSpec]) -> None:
        ordered = sorted(specs, key=lambda s: (s.key, s.id))
        if ordered == self._specs:
            return
        self._specs = ordered
        self._version += 1
        self.changes += 1
        self._wake.set()

    def _ok(self) -> None:
        if self.stale:
            log.info("discovery %s (%s): source is back", self.service, self.kind)
            self.stale = False
            self.error = None
            if self._on_stale is not None:
                self._on_stale(False)

    def _fail(self, message: str) -> None:
        self.errors += 1
        self.error = message
        if not self.stale:
            self.stale = True
            kept = len(self._specs) if self._specs is not None else 0
            log.warning("discovery %s (%s): %s; keeping the last %d endpoint(s) until it "
                        "answers again", self.service, self.kind, message, kept)
            if self._on_stale is not None:
                self._on_stale(True)

    async def _guarded(self) -> None:
        # A bug in a provider must not kill the task silently: log it and retry.
        backoff = Backoff(1.0, 30.0)
        while not self._closed:
            try:
                await self._run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("discovery %s (%s) failed", self.service, self.kind)
                self._fail(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff.next())
