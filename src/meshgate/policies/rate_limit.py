"""rate-limit: refuse a client's requests beyond ``max`` per window (EG's rate-limit).

Theory of operation
-------------------
EG's parameters and defaults: ``rateLimitBy`` (a template such as
``${req.ip}``, ``${req.headers.x-api-key}``, ``${consumer.id}``; default the
client IP), ``windowMs`` (60000), ``max`` (5; 0 turns the policy off),
``message`` and ``statusCode`` (429), ``headers`` (true). Refused requests
get ``message`` (as ``{"message": ...}`` when the client asks for JSON) and
``Retry-After``; with ``headers`` every response carries
``RateLimit-Limit/-Remaining/-Reset`` (``standardHeaders``; seconds until
the reset) and ``X-RateLimit-Limit/-Remaining/-Reset`` (``legacyHeaders``;
the reset as a Unix time, as EG sent them).

EG also slowed every request after the first in a window by a second
(``delayAfter`` 1, ``delayMs`` 1000 -- issue #767); meshgate delays only
when both are set explicitly.

Where counts live (``store``): by default in each worker process
(``local``), unless system.config.yml has a real ``db.redis`` -- then, or
with ``store: redis``, in Redis, where one limit is shared by every process
of every gateway (see ``_counters``). Local counts are per process: with N
workers, or N gateways, a client may get up to N x ``max`` requests through.
``algorithm`` picks ``fixed-window`` (default) or ``sliding-window``.

Counter keys are ``<keyPrefix>:<rateLimitBy value>``; ``keyPrefix``
defaults to ``<pipeline>:<n>`` (n: the rank of this rate-limit step in its
pipeline), under the Redis ``namespace``. Set ``keyPrefix`` to share a
limit between pipelines, or to keep counts when steps are reordered.

Hot path: the mode is picked at load time (``build`` returns the bound
method for it). The local fixed window is a dict look-up and an add, timed
by the Exchange's arrival (``ex.started``, the loop clock) rather than a
clock call; the headers are one bytes formatting operation into a
pre-rendered block the codec appends (``_attach``), and the Unix time of
``X-RateLimit-Reset`` is read once a second. The Redis fixed window admits
from its process's lease of the key's quota the same way, without a
coroutine; only a request finding the lease used up awaits a new one (one
script call per key in flight, see ``_counters``). Its RateLimit-Remaining is
Redis's count at the last lease plus what this process admitted since: exact
with one process, an over-estimate of what remains when others share the
key. The Redis sliding window awaits one script call per request. A key
Redis has refused is remembered until its window ends, so a client hammering
past its limit is refused without further Redis trips. If Redis fails (1 s
socket timeouts), each process falls back to its local counters and tries
Redis again a second later, logging a warning at most every 10 s: an outage
of the limiter is neither an outage of the API nor an open door.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from meshgate.config.base import ParamsModel
from meshgate.gateway.template import compile_template
from meshgate.policies import POLICIES, Action, BuildContext, Outcome, PolicySpec
from meshgate.policies._counters import (
    LocalFixedWindow,
    LocalSlidingWindow,
    RedisLeases,
    RedisSlidingWindow,
    Window,
    ceil_seconds,
)
from meshgate.policies._redis import namespace, shared_redis

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers

log = logging.getLogger("meshgate.rate_limit")
DEFAULT_MESSAGE = "Too many requests, please try again later."
_BLOCKED_MAX = 10000
REDIS_RETRY = 1.0          # seconds on local counters after a Redis failure
_STANDARD = (b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset")
_LEGACY = (b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset")


class RateLimitParams(ParamsModel):
    rateLimitBy: str | None = Field(None, description="Template of the key to count by; "
                                                      "default the client IP")
    windowMs: int = Field(60000, gt=0, description="Window length in ms")
    max: int = Field(5, ge=0, description="Requests allowed per window; 0 disables")
    message: str = Field(DEFAULT_MESSAGE, description="Body of a refused request")
    statusCode: int = Field(429, ge=400, le=599, description="Status of a refused request")
    headers: bool = Field(True, description="Send rate-limit headers and Retry-After")
    standardHeaders: bool = Field(True, description="RateLimit-Limit/-Remaining/-Reset")
    legacyHeaders: bool = Field(True, description="X-RateLimit-Limit/-Remaining/-Reset")
    delayAfter: int | None = Field(None, ge=0, description="Delay requests beyond this count "
                                                           "(only with delayMs)")
    delayMs: int | None = Field(None, ge=0, description="Delay per request beyond delayAfter")
    algorithm: Literal["fixed-window", "sliding-window"] = Field(
        "fixed-window", description="Counting algorithm")
    store: Literal["local", "redis"] | None = Field(
        None, description="Where counts live; default redis when db.redis is configured")
    keyPrefix: str | None = Field(None, description="Counter key prefix "
                                                    "(default <pipeline>:<n>)")

    @field_validator("rateLimitBy")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_template(value)
        return value


def _client_ip(ex: Exchange) -> str:
    return ex.client_addr.decode("latin-1")


class RateLimit:
    def __init__(self, params: RateLimitParams, ctx: BuildContext) -> None:
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
        prefix = params.keyPrefix or f"{ctx.pipeline}:{_rank(ctx)}"
        use_redis = params.store == "redis" or (
            params.store is None and bool(getattr(ctx.system, "uses_redis", False)))
        kind = LocalSlidingWindow if sliding else LocalFixedWindow
        counter: LocalFixedWindow | LocalSlidingWindow = ctx.services.get(
            f"rate-limit:{prefix}:{params.windowMs}:{kind.__name__}", lambda: kind(window))
        self.fallback = counter             # counts while Redis is unreachable
        self.count_local: Callable[[str, float], Window]     # the fixed window's, bound
        self.redis_down_until = 0.0
        self.blocked: dict[str, float] | None = None
        self.leases: RedisLeases | None = None
        self.remote: RedisLeases | RedisSlidingWindow | None = None
        self.action: Action
        if params.max <= 0:
            self.action = _off
        elif not use_redis:
            if isinstance(counter, LocalFixedWindow):
                self.count_local = counter.count
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
        window = self.count_local(self.key_of(ex), now)
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


def build(params: RateLimitParams, ctx: BuildContext) -> Action:
    """The action for this step: the bound method of its mode, chosen now."""
    return RateLimit(params, ctx).action


def _rank(ctx: BuildContext) -> int:
    """How many rate-limit steps of this pipeline were built before this one."""
    rank: int = getattr(ctx, "_rate_limit_rank", 0)
    setattr(ctx, "_rate_limit_rank", rank + 1)  # noqa: B010 -- BuildContext has no slot for it
    return rank


_last_warning = 0.0


def _warn(exc: Exception) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= 10.0:
        _last_warning = now
        log.warning("rate-limit: Redis unavailable, counting in each process until it is "
                    "back: %s", exc)


POLICIES.add(PolicySpec("rate-limit", RateLimitParams, build,
                        "Refuse requests beyond `max` per window, per key"))
