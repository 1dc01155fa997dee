"""Credential checks under abuse: a bounded, fair hash queue and failed-attempt limits.

Theory of operation
-------------------
A secret never seen before with its stored hash costs one scrypt run (about
60 ms of a core, on purpose). ``Guard.check`` is the only way the store runs
one for a presented secret, so nobody can make a worker queue unbounded
work:

* ``FailureLimits`` -- failed checks are counted per client (its address; an
  IPv6 client by its /64) and per key id / username over a sliding window
  (``failureWindow``). A client with ``maxFailures`` failures in the window
  is answered 429 with ``Retry-After`` before any hash runs. A key id with
  ``maxFailuresPerId`` failures accepts attempts only from clients that have
  none in the window (so a flood from many addresses cannot lock its owner
  out, and each address gets one guess). Answers from the verification
  cache never reach here: a key already proven is served as before.
* ``HashQueue`` -- ``hashWorkers`` threads run hashes; at most
  ``maxWaiting`` checks wait for one (503 + ``Retry-After`` beyond) and at
  most ``maxWaitingPerClient`` of them from one client (429 + ``Retry-After``).
  Waiting checks are served client by client: clients with no recent
  failure first, then those with the fewest waiting, round robin among
  equals; so a client flooding wrong secrets waits behind
  its own attempts, not in front of everybody else's. When the queue is
  full, a newcomer takes the place of the newest waiter of the client that
  deserves it least -- one with failures, else one with more waiting than
  the newcomer would have -- and that waiter gets the 503: a flood from
  many addresses cannot keep a valid key's first use out.

``Refused`` carries the status and the seconds to wait; the auth policies
turn it into the answer. Everything here runs on the worker's event loop;
only the hash itself runs in a thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_TRACKED = 10000                     # clients / ids remembered per map; oldest go first


@dataclass(frozen=True)
class Limits:
    """The knobs (system.config.yml ``credentialChecks``), with their defaults."""

    hash_workers: int = 2
    max_waiting: int = 32
    max_waiting_per_client: int = 4
    max_failures: int = 10
    max_failures_per_id: int = 20
    failure_window: float = 60.0     # seconds

    @classmethod
    def from_config(cls, section: Any) -> Limits:
        if section is None:
            return cls()
        return cls(section.hashWorkers, section.maxWaiting, section.maxWaitingPerClient,
                   section.maxFailures, section.maxFailuresPerId,
                   section.failureWindow / 1000.0)


class Refused(Exception):
    """A check not run: 429 (this client or key id) or 503 (the worker is saturated)."""

    def __init__(self, status: int, retry_after: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = max(1, retry_after)


def client_key(address: str) -> str:
    """Whose failures these are: the address; IPv6 addresses by their /64."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address)


class _Window:
    """The times of the last failures of each key, within the window."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = max(1, limit)
        self.window = window
        self.seen: dict[Any, deque[float]] = {}

    def count(self, key: Any, now: float) -> int:
        times = self.seen.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.seen[key]
            return 0
        return len(times)

    def full(self, key: Any, now: float) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        if self.count(key, now) < self.limit:
            return 0.0
        return self.seen[key][0] + self.window - now

    def add(self, key: Any, now: float) -> None:
        times = self.seen.pop(key, None)
        if times is None:
            times = deque(maxlen=self.limit)
        times.append(now)
        self.seen[key] = times          # re-inserted: the most recently failing is newest
        while len(self.seen) > _TRACKED:
            del self.seen[next(iter(self.seen))]


class FailureLimits:
    def __init__(self, limits: Limits) -> None:
        self.clients = _Window(limits.max_failures, limits.failure_window)
        self.ids = _Window(limits.max_failures_per_id, limits.failure_window)

    def admit(self, client: str, ident: tuple[str, str]) -> None:
        """Raise ``Refused`` (429) if ``client`` or ``ident`` may not try now."""
        now = time.monotonic()
        wait = self.clients.full(client, now)
        if wait:
            raise Refused(429, math.ceil(wait), "too many failed credential checks")
        wait = self.ids.full(ident, now)
        if wait and self.clients.count(client, now):
            raise Refused(429, math.ceil(wait), "too many failed checks of this key id")

    def failed(self, client: str, ident: tuple[str, str]) -> None:
        now = time.monotonic()
        self.clients.add(client, now)
        self.ids.add(ident, now)

    def clean(self, client: str) -> bool:
        """Whether ``client`` has no failure in the window."""
        return not self.clients.count(client, time.monotonic())


class HashQueue:
    """Runs slow hashes in ``workers`` threads; bounded, fair waiting for a thread."""

    def __init__(self, limits: Limits, prefer: Callable[[str], bool]) -> None:
        self.workers = max(1, limits.hash_workers)
        self.max_waiting = max(0, limits.max_waiting)
        self.per_client = max(1, limits.max_waiting_per_client)
        self.prefer = prefer             # clients served first (no recent failure)
        self.busy = 0
        self.waiting = 0
        self.waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self.seconds = 0.06              # a hash's duration, smoothed (for Retry-After)
        self._pool: ThreadPoolExecutor | None = None

    def retry_after(self) -> int:
        return math.ceil(self.seconds * (self.waiting + self.busy + 1) / self.workers)

    async def run(self, client: str, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        if self.busy < self.workers and not self.waiting:
            self.busy += 1
        else:
            await self._wait(loop, client)   # on return the slot is ours
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="meshgate-hash")
            start = time.monotonic()
            result = await loop.run_in_executor(self._pool, fn, *args)
            self.seconds += (time.monotonic() - start - self.seconds) * 0.2
            return result
        finally:
            self._release()

    def room(self, client: str) -> None:
        """Raise ``Refused`` if a check of ``client`` would be refused now (no change)."""
        if self.busy < self.workers and not self.waiting:
            return
        queue = self.waiters.get(client)
        if queue is not None and len(queue) >= self.per_client:
            raise Refused(429, self.retry_after(), "too many credential checks waiting")
        if self.waiting >= self.max_waiting and not self._victim(client):
            raise Refused(503, self.retry_after(), "credential checks saturated")

    async def _wait(self, loop: asyncio.AbstractEventLoop, client: str) -> None:
        self.room(client)
        if self.waiting >= self.max_waiting:
            self._evict(self._victim(client))
        queue = self.waiters.get(client)
        if queue is None:
            queue = self.waiters[client] = deque()
        turn: asyncio.Future[None] = loop.create_future()
        queue.append(turn)
        self.waiting += 1
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._release()          # handed the slot as we were cancelled
            elif turn in queue:
                queue.remove(turn)
                self.waiting -= 1
                if not queue and self.waiters.get(client) is queue:
                    del self.waiters[client]
            raise

    def _victim(self, client: str) -> str:
        """Whose waiter deserves a place less than ``client``: the client with failures,
        then the most waiting, if that ranks above ``client`` with one more waiting
        (max-min fair shares); "" if none."""
        queue = self.waiters.get(client)
        victim, worst = "", (not self.prefer(client), (len(queue) if queue else 0) + 1)
        for other, waiting in self.waiters.items():
            rank = (not self.prefer(other), len(waiting))
            if rank > worst:
                victim, worst = other, rank
        return victim

    def _evict(self, victim: str) -> None:
        """Refuse (503) the newest waiter of ``victim``."""
        queue = self.waiters[victim]
        turn = queue.pop()
        if not queue:
            del self.waiters[victim]
        self.waiting -= 1
        if not turn.done():
            turn.set_exception(Refused(503, self.retry_after(), "credential checks saturated"))

    def _next(self) -> str:
        """Who goes next: no failures first, then the fewest waiting, then the longest
        since its last turn (served clients go to the back)."""
        best, rank = "", (True, 1 << 30)
        for client, waiting in self.waiters.items():
            mine = (not self.prefer(client), len(waiting))
            if mine < rank:
                best, rank = client, mine
        return best

    def _release(self) -> None:
        """Hand the slot to the next waiter (round robin over clients), or free it."""
        while self.waiters:
            client = self._next()
            queue = self.waiters.pop(client)
            turn = queue.popleft()
            if queue:
                self.waiters[client] = queue     # to the back of the round
            self.waiting -= 1
            if not turn.done():
                turn.set_result(None)
                return
        self.busy -= 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class Guard:
    """Failure limits in front of the hash queue: what ``verify`` calls to run scrypt."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.failures = FailureLimits(self.limits)
        self.queue = HashQueue(self.limits, self.failures.clean)

    def admit(self, client: str, ident: tuple[str, str]) -> None:
        """Raise ``Refused`` now if a check would be: before any store read, so a refused
        flood costs neither a read nor a hash (the same for known and unknown ids)."""
        who = client_key(client)
        self.failures.admit(who, ident)
        self.queue.room(who)

    async def check(self, client: str, ident: tuple[str, str],
                    fn: Callable[[str, str], bool], secret: str, stored: str) -> bool:
        """``fn(secret, stored)`` in a hash thread, unless refused; failures counted."""
        who = client_key(client)
        self.failures.admit(who, ident)
        ok = await self.queue.run(who, fn, secret, stored)
        if not ok:
            self.failures.failed(who, ident)
        return ok
