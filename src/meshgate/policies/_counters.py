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
``ctx.services``). They are plain dict operations, no coroutine. Redis
counters are one atomic Lua script per request -- INCR and PEXPIRE for a
fixed window, GET, GET and a conditional INCR for a sliding one -- so every
gateway process on every machine sharing the Redis shares the limit.
"""

from __future__ import annotations

import math
import time
from typing import Any

_FIXED_LUA = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
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


class LocalFixedWindow:
    """Per-key windows opening at the key's first request."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.entries: dict[str, list[float]] = {}    # key -> [count, window end]
        self.prune_at = 0.0

    def hit(self, key: str, limit: int) -> tuple[int, float]:
        now = time.monotonic()
        entry = self.entries.get(key)
        if entry is None or entry[1] <= now:
            if now >= self.prune_at:
                self._prune(now)
            entry = self.entries[key] = [0, now + self.window]
        entry[0] += 1
        return int(entry[0]), entry[1] - now

    def _prune(self, now: float) -> None:
        """Forget ended windows, at most once per window length."""
        self.prune_at = now + self.window
        ended = [k for k, (_, end) in self.entries.items() if end <= now]
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


class RedisCounter:
    """A window counter in Redis, shared by every gateway using that Redis."""

    def __init__(self, client: Any, prefix: str, window: float, sliding: bool) -> None:
        self.prefix = prefix + ":"
        self.window = window
        self.window_ms = max(int(window * 1000), 1)
        self.sliding = sliding
        self.script = client.register_script(_SLIDING_LUA if sliding else _FIXED_LUA)

    async def hit(self, key: str, limit: int) -> tuple[int, float]:
        if not self.sliding:
            count, ttl = await self.script(keys=[self.prefix + key], args=[self.window_ms])
            return int(count), max(int(ttl), 0) / 1000.0
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
