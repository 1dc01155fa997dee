"""The worker's Redis client, shared by policies that keep state in Redis.

Theory of operation
-------------------
``shared_redis(ctx)`` returns one ``redis.asyncio`` client per worker process
(kept in ``ctx.services``, so it outlives config reloads) for the
``db.redis`` section of system.config.yml: host, port, username, password,
db, TLS files, or ``sentinels`` + ``name`` for a Sentinel-managed master,
with 1 s socket timeouts (the consumer store keeps its own client). With no
``db.redis`` section (a policy asked for Redis explicitly) the defaults --
localhost:6379, db 0 -- apply. The client connects on its first command, in
the worker's event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshgate.config.system import RedisConfig
    from meshgate.policies import BuildContext

SERVICE_KEY = "redis.asyncio"


def redis_config(ctx: BuildContext) -> RedisConfig:
    from meshgate.config.system import RedisConfig

    db = getattr(ctx.system, "db", None)
    config = getattr(db, "redis", None)
    return config if config is not None else RedisConfig()


def namespace(ctx: BuildContext) -> str:
    return redis_config(ctx).namespace


def shared_redis(ctx: BuildContext) -> Any:
    """The worker's ``redis.asyncio.Redis`` client (made on first use)."""
    return ctx.services.get(SERVICE_KEY, lambda: _connect(redis_config(ctx)))


def _connect(config: RedisConfig) -> Any:
    from meshgate.store.redis import client_from_config

    # Short timeouts: a policy waiting on Redis holds a client request.
    return client_from_config(config, timeout=1, decode_responses=False)
