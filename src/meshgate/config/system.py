"""The model of system.config.yml: storage, crypto, tokens, plugins, CLI.

Theory of operation
-------------------
``SystemConfig.model_validate(data)`` takes an Express Gateway
``system.config.yml`` unchanged. Every section has EG's defaults (from EG's
``lib/config/schemas/system.config.json``), so a missing file and an empty
one mean the same thing. Sections keep unknown keys, as EG did: ``db.redis``
holds ioredis options and ``session`` express-session options.

Storage: with no ``db.redis`` section, or ``emulate: true``, meshgate keeps
consumers in its embedded store; otherwise in the Redis described there.
Times (``timeToExpiry``) are milliseconds, as in EG.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from meshgate.config.base import EGModel, MeshModel, Millis, Port, empty_if_none


class RedisSentinel(EGModel):
    host: str
    port: Port = 26379


class RedisTls(EGModel):
    keyFile: str | None = None
    certFile: str | None = None
    caFile: str | None = None


class RedisConfig(EGModel):
    emulate: bool = False
    namespace: str = "EG"
    host: str = "localhost"
    port: Port = 6379
    password: str | None = None
    db: Annotated[int, Field(ge=0)] = 0
    sentinels: list[RedisSentinel] | None = None
    name: str | None = None             # sentinel master group
    tls: RedisTls | None = None


class DbConfig(EGModel):
    redis: RedisConfig | None = None    # None: the embedded store


class CryptoConfig(EGModel):
    cipherKey: str = "sensitiveKey"
    algorithm: str = "aes256"
    saltRounds: Annotated[int, Field(ge=1)] = 10


class AccessTokensConfig(EGModel):
    tokenType: Literal["opaque", "jwt"] = "opaque"
    timeToExpiry: Millis = 720000
    issuer: str | None = None
    audience: str | list[str] | None = None
    subject: str | None = None
    algorithm: str = "HS256"
    secretOrPrivateKey: str | None = None
    secretOrPrivateKeyFile: str | None = None


class RefreshTokensConfig(EGModel):
    timeToExpiry: Millis = 720000


class AuthorizationCodesConfig(EGModel):
    timeToExpiry: Millis = 300000


class CliConfig(EGModel):
    url: str | None = None              # Admin API URL; EG_ADMIN_URL wins
    verbose: bool = False


class RegistryServe(MeshModel):
    """Run the built-in registry inside ``meshgate run`` (the master serves it)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8500
    dataDir: str | None = Field(None, description="Snapshot folder (memory store)")
    store: Literal["memory", "etcd"] = "memory"
    etcd: list[str] = Field(default_factory=list, description="etcd endpoint URLs")
    etcdPrefix: str = "/meshgate/registry"


class RegistryConfig(MeshModel):
    url: str | None = Field(None, description="Registry URL used by `type: registry` "
                                              "discovery and sidecars ($MESHGATE_REGISTRY)")
    serve: RegistryServe | None = Field(None, description="Embed the registry in this process")


def _plugins(value: Any) -> Any:
    if not isinstance(value, dict):
        return empty_if_none(value)
    return {name: {} if settings is None else settings for name, settings in value.items()}


Section = BeforeValidator(empty_if_none)


class SystemConfig(EGModel):
    db: Annotated[DbConfig, Section] = Field(default_factory=DbConfig)
    crypto: Annotated[CryptoConfig, Section] = Field(default_factory=CryptoConfig)
    session: Annotated[dict[str, Any], Section] = Field(default_factory=dict)
    accessTokens: Annotated[AccessTokensConfig, Section] = Field(
        default_factory=AccessTokensConfig)
    refreshTokens: Annotated[RefreshTokensConfig, Section] = Field(
        default_factory=RefreshTokensConfig)
    authorizationCodes: Annotated[AuthorizationCodesConfig, Section] = Field(
        default_factory=AuthorizationCodesConfig)
    plugins: Annotated[dict[str, dict[str, Any]], BeforeValidator(_plugins)] = Field(
        default_factory=dict)
    cli: Annotated[CliConfig, Section] = Field(default_factory=CliConfig)
    registry: RegistryConfig | None = None

    @property
    def uses_redis(self) -> bool:
        """True when consumers live in a real Redis (db.redis without emulate)."""
        redis = self.db.redis
        return redis is not None and not redis.emulate
