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

import ssl
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

    extra = config.model_extra or {}
    # Short timeouts: a policy waiting on Redis holds a client request.
    options: dict[str, Any] = {"db": config.db, "password": config.password,
                               "username": extra.get("username"),
                               "socket_connect_timeout": 1, "socket_timeout": 1}
    tls = config.tls
    if tls is not None:
        options.update(ssl=True, ssl_keyfile=tls.keyFile, ssl_certfile=tls.certFile,
                       ssl_ca_certs=tls.caFile,
                       ssl_cert_reqs=ssl.CERT_REQUIRED if tls.caFile else ssl.CERT_NONE)
    if config.sentinels:
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel([(s.host, s.port) for s in config.sentinels], **options)
        return sentinel.master_for(config.name or "mymaster")
    return aioredis.Redis(host=config.host, port=config.port, **options)
