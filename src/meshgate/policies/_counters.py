"""Request counters for the rate-limit policy: in the worker, or in Redis.

Theory of operation
-------------------
A counter answers ``hit(key, limit)`` with ``(count, reset)``: how many
requests the key has made in its window including this one (more than
``limit`` means: refuse it) and the seconds until the window frees up.

Two algorithms, both with a local and a Redis implementation:

* fixed window -- a key's window opens at its first request and lasts
  ``windowMs`` (what EG's rate-limit-redis store did); every request counts;
* sliding window -- windows are aligned on the clock, and the count is the
  current window's plus the previous one's weighted by how much of it still
  overlaps the sliding window; only admitted requests count. This smooths
  the burst of 2 x max a fixed window allows across a boundary.

Local counters live in one worker process and are kept across reloads (in
``ctx.services``). They are plain dict operations, no coroutine; the fixed
window also offers ``count(key, now)``, which returns the key's ``Window``
itself so the policy's hot path builds no tuple.

Redis fixed windows are *leased* (``RedisLeases``): a process asks Redis for
a block of a key's quota with one atomic script (grant = min(asked, a
fraction of what remains, what remains); INCRBY by the grant; PEXPIRE when
the key is new) and admits that many requests itself, synchronously, before
it asks again. The block starts at 1 and doubles while blocks are used up
within ``LEASE_QUICK`` (halving when one lasted longer than ``LEASE_SLOW``),
up to ``LEASE_CAP``; Redis never grants more than 1/``LEASE_FRACTION`` of
what remains (at least 1), so near the limit every grant is 1 and the
processes sharing a Redis together admit exactly ``max``: never more (grants
never exceed what remains), and fewer only by what a process leased and then
got no more requests for. A request finding its process's lease used up
waits for the one lease request in flight for that key, or sends it. A
refused request is still counted (INCR), as when each request was counted.
Sliding windows in Redis stay one script per request (GET, GET and a
conditional INCR): their count cannot be split into blocks without
admitting more than ``max`` at a window boundary.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

LEASE_CAP = 1000          # largest block of quota one lease asks for
LEASE_FRACTION = 8        # a lease takes at most 1/8 of what remains in the window
LEASE_QUICK = 0.25        # a block used up faster than this: ask for twice as much
LEASE_SLOW = 1.0          # a block that lasted longer than this: ask for half

_LEASE_LUA = """
local left = tonumber(ARGV[1]) - tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[2]), math.max(1, math.floor(left / tonumber(ARGV[4]))),
                       left)
local count
if grant > 0 then
  count = redis.call('INCRBY', KEYS[1], grant)
else
  grant = 0
  count = redis.call('INCR', KEYS[1])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  ttl = tonumber(ARGV[3])
end
return {grant, count, ttl}
"""

_SLIDING_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
if previous * tonumber(ARGV[2]) + current >= tonumber(ARGV[1]) then
  return {0, current, previous}
end
current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, current, previous}
"""


class Window:
    """One key's fixed window: requests counted in it, and when it ends."""

    __slots__ = ("count", "end")

    def __init__(self, end: float) -> None:
        self.count = 0
        self.end = end


class LocalFixedWindow:
    """Per-key windows opening at the key's first request."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.entries: dict[str, Window] = {}
        self.prune_at = 0.0

    def hit(self, key: str, limit: int) -> tuple[int, float]:
        now = time.monotonic()
        entry = self.count(key, now)
        return entry.count, entry.end - now

    def count(self, key: str, now: float) -> Window:
        """Count a request of ``key`` at ``now`` (one monotonic clock per counter)."""
        entry = self.entries.get(key)
        if entry is None or entry.end <= now:
            if now >= self.prune_at:
                self._prune(now)
            entry = self.entries[key] = Window(now + self.window)
        entry.count += 1
        return entry

    def _prune(self, now: float) -> None:
        """Forget ended windows, at most once per window length."""
        self.prune_at = now + self.window
        ended = [k for k, entry in self.entries.items() if entry.end <= now]
        for key in ended:
            del self.entries[key]


class LocalSlidingWindow:
    """Clock-aligned windows; the previous one counts for its overlap."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.index = -1
        self.current: dict[str, int] = {}
        self.previous: dict[str, int] = {}

    def hit(self, key: str, limit: int) -> tuple[int, float]:
        now = time.monotonic()
        window = self.window
        index = int(now // window)
        if index != self.index:
            self.previous = self.current if index == self.index + 1 else {}
            self.current = {}
            self.index = index
        elapsed = now - index * window
        current = self.current.get(key, 0)
        previous = self.previous.get(key, 0)
        estimate = previous * (1.0 - elapsed / window) + current
        if estimate >= limit:
            return limit + 1, sliding_retry(previous, current, elapsed, window, limit)
        self.current[key] = current + 1
        return int(estimate) + 1, window - elapsed


def sliding_retry(previous: int, current: int, elapsed: float, window: float,
                  limit: int) -> float:
    """Seconds until the sliding estimate drops below ``limit`` again."""
    if current < limit and previous > 0:
        # previous * (1 - (elapsed + t) / window) + current < limit
        return max(window * (1.0 - (limit - current) / previous) - elapsed, 0.001)
    # Within the next window the current count becomes the weighted previous one.
    return (window - elapsed) + window * max(1.0 - limit / max(current, 1), 0.0)


class Lease:
    """This process's block of one key's quota in the current Redis window."""

    __slots__ = ("chunk", "count", "end", "granted_at", "left", "pending")

    def __init__(self) -> None:
        self.count = 0          # Redis's count before our block, plus what we admitted of it
        self.left = 0           # requests of the block still to admit
        self.end = 0.0          # window end on the loop clock, never after Redis's
        self.chunk = 1          # block size to ask for next
        self.granted_at = 0.0
        # The lease request in flight; it resolves to None (granted: take from the
        # lease), a refusal (count, reset), or the exception Redis raised.
        self.pending: asyncio.Future[Any] | None = None


class RedisLeases:
    """Fixed windows in Redis, admitted locally in leased blocks (see above)."""

    def __init__(self, client: Any, prefix: str, window: float) -> None:
        self.prefix = prefix + ":"
        self.window = window
        self.window_ms = max(int(window * 1000), 1)
        self.script = client.register_script(_LEASE_LUA)
        self.leases: dict[str, Lease] = {}
        self.prune_at = 0.0
        self.requests = 0           # lease scripts sent (for tests and curiosity)

    def take(self, key: str, now: float) -> Lease | None:
        """Admit one request of ``key`` from the lease, if it has any left."""
        lease = self.leases.get(key)
        if lease is None or not lease.left or lease.end <= now:
            return None
        lease.left -= 1
        lease.count += 1
        return lease

    async def hit(self, key: str, limit: int) -> tuple[int, float]:
        """``(count, reset)`` for a request the lease could not admit: ask Redis, or wait."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            lease = self.take(key, now)
            if lease is not None:
                return lease.count, lease.end - now
            lease = self.leases.get(key)
            if lease is None or (lease.end <= now and lease.pending is None):
                lease = self._fresh(key, now)     # a finished window's lease is dropped
            pending = lease.pending
            if pending is None:
                return await self._ask(key, lease, limit, loop)
            # One request to Redis per key: wait for it. Shielded, so that a waiter
            # being cancelled does not cancel the answer the others wait for.
            outcome = await asyncio.shield(pending)
            if isinstance(outcome, Exception):
                raise outcome
            if outcome is not None:
                return outcome                    # refused: not counted again in Redis

    async def _ask(self, key: str, lease: Lease, limit: int,
                   loop: asyncio.AbstractEventLoop) -> tuple[int, float]:
        lease.pending = pending = loop.create_future()
        outcome: Any = None
        try:
            sent = loop.time()
            if lease.granted_at:
                lasted = sent - lease.granted_at
                if lasted < LEASE_QUICK:
                    lease.chunk = min(lease.chunk * 2, LEASE_CAP)
                elif lasted > LEASE_SLOW:
                    lease.chunk = max(lease.chunk // 2, 1)
            self.requests += 1
            grant, count, ttl = await self.script(
                keys=[self.prefix + key],
                args=[limit, lease.chunk, self.window_ms, LEASE_FRACTION])
            grant, count = int(grant), int(count)
            # Redis started the TTL after we sent: our end is never later than its.
            lease.end = sent + max(int(ttl), 0) / 1000.0
            now = loop.time()
            if grant <= 0:
                lease.left = 0
                outcome = (count, lease.end - now)
                return count, lease.end - now
            lease.granted_at = sent
            lease.count = count - grant + 1       # this request is the first of the block
            lease.left = grant - 1
            return lease.count, lease.end - now
        except Exception as exc:
            outcome = exc                         # the waiters fall back too, without retrying
            raise
        finally:
            # Cancelled (None): the waiters try again themselves.
            lease.pending = None
            pending.set_result(outcome)

    def _fresh(self, key: str, now: float) -> Lease:
        if now >= self.prune_at:
            self.prune_at = now + self.window
            ended = [k for k, lease in self.leases.items()
                     if lease.end <= now and lease.pending is None]
            for stale in ended:
                del self.leases[stale]
        lease = self.leases[key] = Lease()
        return lease


class RedisSlidingWindow:
    """A sliding window counter in Redis: one script per request."""

    def __init__(self, client: Any, prefix: str, window: float) -> None:
        self.prefix = prefix + ":"
        self.window = window
        self.window_ms = max(int(window * 1000), 1)
        self.script = client.register_script(_SLIDING_LUA)

    async def hit(self, key: str, limit: int) -> tuple[int, float]:
        now = time.time()        # wall clock: the windows of all gateways line up
        index = int(now // self.window)
        elapsed = now - index * self.window
        base = self.prefix + key + ":"
        weight = 1.0 - elapsed / self.window
        admitted, current, previous = await self.script(
            keys=[f"{base}{index}", f"{base}{index - 1}"],
            args=[limit, f"{weight:.6f}", self.window_ms * 2])
        if int(admitted):
            estimate = int(previous) * weight + int(current) - 1
            return int(estimate) + 1, self.window - elapsed
        return limit + 1, sliding_retry(int(previous), int(current), elapsed, self.window, limit)


def ceil_seconds(seconds: float) -> int:
    return max(math.ceil(seconds), 1)
