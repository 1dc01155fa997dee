"""rate-limit per request: count, admit with headers, or refuse (compiled).

Theory of operation
-------------------
``RateLimit`` is the policy as configured (see ``rate_limit`` for the
parameters and where counts live); ``build`` there returns the bound method
of its mode (``_local_fixed``, ``_local_sliding``, ``_redis``), picked once.
This module is compiled (``setup.py``); ``rate_limit.py`` keeps the
parameter model, which mypyc cannot compile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Final

from meshgate.gateway.template import compile_template
from meshgate.policies._counters import (
    LocalFixedWindow,
    LocalSlidingWindow,
    RedisLeases,
    RedisSlidingWindow,
    ceil_seconds,
)
from meshgate.policies._redis import namespace, shared_redis

if TYPE_CHECKING:
    from meshgate.policies import Action, BuildContext, Outcome
    from meshgate.policies.rate_limit import RateLimitParams
    from meshgate.protocol.exchange import Exchange, Headers

log = logging.getLogger("meshgate.rate_limit")
DEFAULT_MESSAGE = "Too many requests, please try again later."
_BLOCKED_MAX: Final = 10000
REDIS_RETRY: Final = 1.0          # seconds on local counters after a Redis failure
_STANDARD: Final = (b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset")
_LEGACY: Final = (b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset")


def _client_ip(ex: Exchange) -> str:
    return ex.client_addr.decode("latin-1")


class RateLimit:
    def __init__(self, params: RateLimitParams, ctx: BuildContext, rank: int) -> None:
        self.key_of = (compile_template(params.rateLimitBy) if params.rateLimitBy
                       else _client_ip)
        self.max = params.max
        self.status = params.statusCode
        self.message = params.message.encode()
        self.json_message = json.dumps({"message": params.message}).encode()
        self.standard = params.headers and params.standardHeaders
        self.legacy = params.headers and params.legacyHeaders
        self.retry_after = params.headers
        self._templates(b"%d" % params.max)
        delay = params.delayAfter is not None and bool(params.delayMs)
        self.delay_after = (params.delayAfter or 0) if delay else -1
        self.delay = (params.delayMs or 0) / 1000.0
        self.unix_second = 0            # int(time.time()), refreshed once a second
        self.unix_until = 0.0           # ... at this loop-clock time
        window = params.windowMs / 1000.0
        sliding = params.algorithm == "sliding-window"
        prefix = params.keyPrefix or f"{ctx.pipeline}:{rank}"
        use_redis = params.store == "redis" or (
            params.store is None and bool(getattr(ctx.system, "uses_redis", False)))
        kind = LocalSlidingWindow if sliding else LocalFixedWindow
        counter: LocalFixedWindow | LocalSlidingWindow = ctx.services.get(
            f"rate-limit:{prefix}:{params.windowMs}:{kind.__name__}", lambda: kind(window))
        self.fallback = counter             # counts while Redis is unreachable
        self.fixed = counter if isinstance(counter, LocalFixedWindow) else None
        self.redis_down_until = 0.0
        self.blocked: dict[str, float] | None = None
        self.leases: RedisLeases | None = None
        self.remote: RedisLeases | RedisSlidingWindow | None = None
        self.action: Action
        if params.max <= 0:
            self.action = _off
        elif not use_redis:
            if self.fixed is not None:
                self.action = self._local_fixed
            else:
                self.action = self._local_sliding
        else:
            key = f"{namespace(ctx)}:rate-limit:{prefix}"
            client = shared_redis(ctx)
            if sliding:
                self.remote = RedisSlidingWindow(client, key, window)
            else:
                # Leases outlive reloads, as the client does: a reload strands no quota.
                # Per max too: a lease is admitted from without comparing with max.
                self.remote = self.leases = ctx.services.get(
                    f"rate-limit-leases:{key}:{params.windowMs}:{params.max}",
                    lambda: RedisLeases(client, key, window))
                self.blocked = {}
            self.action = self._redis

    def _templates(self, limit: bytes) -> None:
        """The admitted requests' header block, as one formatting template."""
        names: tuple[bytes, ...] = ()
        lines = b""
        if self.standard:
            names += _STANDARD
            lines += (b"ratelimit-limit: %s\r\nratelimit-remaining: %%d\r\n"
                      b"ratelimit-reset: %%d\r\n" % limit)
        if self.legacy:
            names += _LEGACY
            lines += (b"x-ratelimit-limit: %s\r\nx-ratelimit-remaining: %%d\r\n"
                      b"x-ratelimit-reset: %%d\r\n" % limit)
        self.lines = lines if names else None
        # The codec's name for a pre-rendered block: its header names, each after a
        # line feed (which no header name contains), so it can replace upstream ones.
        self.block_names = b"".join(b"\n" + name for name in names)
        self.limit_text = limit

    def __call__(self, ex: Exchange) -> Outcome:
        return self.action(ex)

    # -- the modes -------------------------------------------------------------------------
    def _local_fixed(self, ex: Exchange) -> Outcome:
        now = ex.started
        fixed = self.fixed
        assert fixed is not None
        window = fixed.count(self.key_of(ex), now)
        if window.count > self.max:
            self._refuse(ex, window.end - now)
            return True
        return self._admit(ex, window.count, window.end - now, now)

    def _local_sliding(self, ex: Exchange) -> Outcome:
        count, reset = self.fallback.hit(self.key_of(ex), self.max)
        return self._decide(ex, count, reset, ex.started)

    def _redis(self, ex: Exchange) -> Outcome:
        key = self.key_of(ex)
        now = ex.started
        leases = self.leases
        if leases is not None:
            lease = leases.take(key, now)
            if lease is not None:
                return self._admit(ex, lease.count, lease.end - now, now)
        if self.redis_down_until:
            if time.monotonic() < self.redis_down_until:
                count, reset = self.fallback.hit(key, self.max)
                return self._decide(ex, count, reset, now)
            self.redis_down_until = 0.0
        blocked = self.blocked
        if blocked is not None:
            until = blocked.get(key)
            if until is not None:
                left = until - time.monotonic()
                if left > 0:
                    self._refuse(ex, left)
                    return True
                del blocked[key]
        return self._remote(ex, key)

    async def _remote(self, ex: Exchange, key: str) -> bool | None:
        assert self.remote is not None
        try:
            count, reset = await self.remote.hit(key, self.max)
        except Exception as exc:
            # Redis is out: count in this process meanwhile, and try it again later.
            _warn(exc)
            self.redis_down_until = time.monotonic() + REDIS_RETRY
            count, reset = self.fallback.hit(key, self.max)
        if count > self.max and self.blocked is not None and reset > 0:
            self._remember(key, reset)
        outcome = self._decide(ex, count, reset, asyncio.get_running_loop().time())
        if outcome is None or isinstance(outcome, bool):
            return outcome
        await outcome
        return None

    def _remember(self, key: str, reset: float) -> None:
        blocked = self.blocked
        assert blocked is not None
        now = time.monotonic()
        if len(blocked) >= _BLOCKED_MAX:
            for stale in [k for k, until in blocked.items() if until <= now]:
                del blocked[stale]
            if len(blocked) >= _BLOCKED_MAX:
                blocked.clear()
        blocked[key] = now + reset

    # -- the answer ------------------------------------------------------------------------
    def _decide(self, ex: Exchange, count: int, reset: float, now: float) -> Outcome:
        if count > self.max:
            self._refuse(ex, reset)
            return True
        return self._admit(ex, count, reset, now)

    def _admit(self, ex: Exchange, count: int, reset: float, now: float) -> Outcome:
        """Headers of an admitted request, and its delay when configured.

        Per request: kept to arithmetic and one bytes formatting operation.
        ``now`` is on the loop clock (``ex.started``).
        """
        lines = self.lines
        if lines is not None:
            whole = int(reset)
            seconds = (whole + (whole < reset)) or 1            # ceil, at least 1
            remaining = self.max - count
            if self.legacy:
                if now >= self.unix_until:
                    self._read_clock(now)
                stamp = self.unix_second + seconds
                lines %= ((remaining, seconds, remaining, stamp) if self.standard
                          else (remaining, stamp))
            else:
                lines %= (remaining, seconds)
            # ex.add_response_headers, without the list copy: the codec appends
            # the pre-rendered block (see protocol.hop.merge_extra).
            pair = (self.block_names, lines)
            extra = ex.response_headers_extra
            if extra is None:
                ex.response_headers_extra = [pair]
            else:
                extra.append(pair)
        if 0 <= self.delay_after < count:
            return asyncio.sleep((count - self.delay_after) * self.delay)
        return None

    def _read_clock(self, now: float) -> None:
        wall = time.time()
        self.unix_second = int(wall)
        self.unix_until = now + 1.0 - (wall - self.unix_second)

    def _headers(self, remaining: int, reset: float) -> Headers:
        """The rate-limit headers as pairs, for a refusal (which ``respond`` sends)."""
        remaining_text = b"%d" % remaining if remaining > 0 else b"0"
        seconds = ceil_seconds(reset)
        out: Headers = []
        if self.standard:
            out += [(b"ratelimit-limit", self.limit_text),
                    (b"ratelimit-remaining", remaining_text),
                    (b"ratelimit-reset", b"%d" % seconds)]
        if self.legacy:
            out += [(b"x-ratelimit-limit", self.limit_text),
                    (b"x-ratelimit-remaining", remaining_text),
                    (b"x-ratelimit-reset", b"%d" % (int(time.time()) + seconds))]
        return out

    def _refuse(self, ex: Exchange, reset: float) -> None:
        headers = self._headers(0, reset)
        if self.retry_after:
            headers.append((b"retry-after", b"%d" % ceil_seconds(reset)))
        accept = ex.header(b"accept")
        if accept is not None and b"json" in accept and b"html" not in accept:
            headers.append((b"content-type", b"application/json; charset=utf-8"))
            ex.respond(self.status, self.json_message, headers)
        else:
            ex.respond(self.status, self.message, headers)


def _off(ex: Exchange) -> None:
    """max 0: the policy is off."""
    return None


class _Throttle:
    def __init__(self) -> None:
        self.last = 0.0                  # when a Redis warning was last logged


_warnings = _Throttle()


def _warn(exc: Exception) -> None:
    now = time.monotonic()
    if now - _warnings.last >= 10.0:
        _warnings.last = now
        log.warning("rate-limit: Redis unavailable, counting in each process until it is "
                    "back: %s", exc)
