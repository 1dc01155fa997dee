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

Hot path (``_limiter.RateLimit``, compiled): the mode is picked at load
time (``build`` returns the bound method for it). The local fixed window is
a dict look-up and an add, timed
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

from typing import Literal

from pydantic import Field, field_validator

from meshgate.config.base import ParamsModel
from meshgate.gateway.template import compile_template
from meshgate.policies import POLICIES, Action, BuildContext, PolicySpec
from meshgate.policies._limiter import DEFAULT_MESSAGE, RateLimit


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


def build(params: RateLimitParams, ctx: BuildContext) -> Action:
    """The action for this step: the bound method of its mode, chosen now."""
    return RateLimit(params, ctx, _rank(ctx)).action


def _rank(ctx: BuildContext) -> int:
    """How many rate-limit steps of this pipeline were built before this one."""
    rank: int = getattr(ctx, "_rate_limit_rank", 0)
    setattr(ctx, "_rate_limit_rank", rank + 1)  # noqa: B010 -- BuildContext has no slot for it
    return rank


POLICIES.add(PolicySpec("rate-limit", RateLimitParams, build,
                        "Refuse requests beyond `max` per window, per key"))
