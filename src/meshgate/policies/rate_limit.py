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

Hot path: the local mode is a dict update and no coroutine. The Redis mode
awaits one script call; a key the fixed window has refused is remembered
until its window ends, so a client hammering past its limit is refused
without further Redis trips. If Redis fails (1 s socket timeouts), each
process falls back to its local counters and tries Redis again a second
later, logging a warning at most every 10 s: an outage of the limiter is
neither an outage of the API nor an open door.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from meshgate.config.base import ParamsModel
from meshgate.gateway.template import compile_template
from meshgate.policies import POLICIES, BuildContext, PolicySpec
from meshgate.policies._counters import (
    LocalFixedWindow,
    LocalSlidingWindow,
    RedisCounter,
    ceil_seconds,
)
from meshgate.policies._redis import namespace, shared_redis

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange, Headers

log = logging.getLogger("meshgate.rate_limit")
DEFAULT_MESSAGE = "Too many requests, please try again later."
_BLOCKED_MAX = 10000
REDIS_RETRY = 1.0          # seconds on local counters after a Redis failure


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
        self.limit_text = b"%d" % params.max
        self.status = params.statusCode
        self.message = params.message.encode()
        self.json_message = json.dumps({"message": params.message}).encode()
        self.standard = params.headers and params.standardHeaders
        self.legacy = params.headers and params.legacyHeaders
        self.retry_after = params.headers
        delay = params.delayAfter is not None and bool(params.delayMs)
        self.delay_after = (params.delayAfter or 0) if delay else -1
        self.delay = (params.delayMs or 0) / 1000.0
        window = params.windowMs / 1000.0
        sliding = params.algorithm == "sliding-window"
        prefix = params.keyPrefix or f"{ctx.pipeline}:{_rank(ctx)}"
        use_redis = params.store == "redis" or (
            params.store is None and bool(getattr(ctx.system, "uses_redis", False)))
        kind = LocalSlidingWindow if sliding else LocalFixedWindow
        counter: LocalFixedWindow | LocalSlidingWindow = ctx.services.get(
            f"rate-limit:{prefix}:{params.windowMs}:{kind.__name__}", lambda: kind(window))
        self.local: LocalFixedWindow | LocalSlidingWindow | None = counter
        self.fallback = counter             # counts while Redis is unreachable
        self.redis: RedisCounter | None = None
        self.redis_down_until = 0.0
        self.blocked: dict[str, float] | None = None
        if use_redis:
            self.local = None
            self.redis = RedisCounter(shared_redis(ctx), f"{namespace(ctx)}:rate-limit:{prefix}",
                                      window, sliding)
            self.blocked = {} if not sliding else None

    def __call__(self, ex: Exchange) -> bool | Awaitable[bool | None] | None:
        if self.max <= 0:
            return None
        key = self.key_of(ex)
        local = self.local
        if local is not None:
            count, reset = local.hit(key, self.max)
            return self._decide(ex, count, reset)
        if self.redis_down_until:
            if time.monotonic() < self.redis_down_until:
                count, reset = self.fallback.hit(key, self.max)
                return self._decide(ex, count, reset)
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
        assert self.redis is not None
        try:
            count, reset = await self.redis.hit(key, self.max)
        except Exception as exc:
            # Redis is out: count in this process meanwhile, and try it again later.
            _warn(exc)
            self.redis_down_until = time.monotonic() + REDIS_RETRY
            count, reset = self.fallback.hit(key, self.max)
        if count > self.max and self.blocked is not None and reset > 0:
            self._remember(key, reset)
        outcome = self._decide(ex, count, reset)
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

    def _decide(self, ex: Exchange, count: int, reset: float) -> bool | Awaitable[None] | None:
        if count > self.max:
            self._refuse(ex, reset)
            return True
        if self.standard or self.legacy:
            ex.add_response_headers(self._headers(self.max - count, reset))
        if 0 <= self.delay_after < count:
            return asyncio.sleep((count - self.delay_after) * self.delay)
        return None

    def _headers(self, remaining: int, reset: float) -> Headers:
        # Per admitted request when headers are on: kept to plain arithmetic.
        remaining_text = b"%d" % remaining if remaining > 0 else b"0"
        whole = int(reset)
        seconds = (whole + (whole < reset)) or 1            # ceil, at least 1
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


POLICIES.add(PolicySpec("rate-limit", RateLimitParams, RateLimit,
                        "Refuse requests beyond `max` per window, per key"))
