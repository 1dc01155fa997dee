"""The worker's Redis client, shared by policies that keep state in Redis.

Theory of operation
-------------------
``shared_redis(ctx)`` returns one ``redis.asyncio`` client per worker process
(kept in ``ctx.services``, so it outlives config reloads) for the
``db.redis`` section of system.config.yml: host, port, password, db, TLS
files, or ``sentinels`` + ``name`` for a Sentinel-managed master. With no
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
    import redis.asyncio as aioredis

    options: dict[str, Any] = {"db": config.db, "password": config.password,
                               "socket_connect_timeout": 2, "socket_timeout": 2}
    if config.tls is not None:
        options.update(ssl=True, ssl_keyfile=config.tls.keyFile,
                       ssl_certfile=config.tls.certFile, ssl_ca_certs=config.tls.caFile)
    if config.sentinels:
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel([(s.host, s.port) for s in config.sentinels], **options)
        return sentinel.master_for(config.name or "mymaster")
    return aioredis.Redis(host=config.host, port=config.port, **options)
