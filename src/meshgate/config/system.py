"""The model of system.config.yml: storage, crypto, tokens, plugins, CLI.

Theory of operation
-------------------
``SystemConfig.model_validate(data)`` takes an Express Gateway
``system.config.yml`` unchanged. Every section has EG's defaults (from EG's
``lib/config/schemas/system.config.json``), so a missing file and an empty
one mean the same thing. Every section rejects keys it does not know:
``db.redis`` knows ioredis' options and ``session`` express-session's (EG
handed both sections to those libraries), the others EG's documented keys.
``plugins`` (EG's JavaScript plugins) is refused with a message saying how
meshgate's Python plugins work.

Storage: with no ``db.redis`` section, or ``emulate: true``, meshgate keeps
consumers in its embedded store; otherwise in the Redis described there.
Times (``timeToExpiry``) are milliseconds, as in EG.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from meshgate.config.base import (
    EGModel,
    MeshModel,
    Millis,
    Port,
    empty_if_none,
    raise_errors,
    relocate,
)
from meshgate.config.keys import PLUGINS_MESSAGE


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
    username: str | None = None
    password: str | None = None
    db: Annotated[int, Field(ge=0)] = 0
    sentinels: list[RedisSentinel] | None = None
    name: str | None = None             # sentinel master group
    tls: RedisTls | None = None
    # ioredis options EG passed through: accepted, not used by meshgate.
    family: Any = None
    path: Any = None
    keepAlive: Any = None
    noDelay: Any = None
    connectionName: Any = None
    keyPrefix: Any = None
    connectTimeout: Any = None
    disconnectTimeout: Any = None
    commandTimeout: Any = None
    socketTimeout: Any = None
    maxRetriesPerRequest: Any = None
    maxLoadingRetryTime: Any = None
    enableReadyCheck: Any = None
    enableOfflineQueue: Any = None
    enableAutoPipelining: Any = None
    autoPipeliningIgnoredCommands: Any = None
    autoResubscribe: Any = None
    autoResendUnfulfilledCommands: Any = None
    lazyConnect: Any = None
    readOnly: Any = None
    stringNumbers: Any = None
    showFriendlyErrorStack: Any = None
    role: Any = None
    sentinelUsername: Any = None
    sentinelPassword: Any = None
    sentinelCommandTimeout: Any = None
    sentinelTLS: Any = None
    enableTLSForSentinelMode: Any = None
    updateSentinels: Any = None
    preferredSlaves: Any = None
    natMap: Any = None


class SqliteConfig(MeshModel):
    path: str | None = Field(None, description="The embedded store's file "
                                               "(relative to the config folder)")


class DbConfig(EGModel):
    redis: RedisConfig | None = None    # None: the embedded store
    sqlite: SqliteConfig | None = None  # where the embedded store lives


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


class SessionCookie(EGModel):
    """express-session's ``cookie`` options."""

    maxAge: Millis | None = None
    secure: bool | str | None = None
    httpOnly: bool | None = None
    domain: str | None = None
    path: str | None = None
    sameSite: bool | str | None = None
    expires: Any = None
    partitioned: bool | None = None
    priority: str | None = None


class SessionConfig(EGModel):
    """express-session's options (EG handed the section to it)."""

    secret: str | list[str] | None = None
    name: str | None = None
    cookie: SessionCookie | None = None
    resave: bool | None = None
    saveUninitialized: bool | None = None
    rolling: bool | None = None
    proxy: bool | None = None
    unset: str | None = None


def _session(value: Any) -> Any:
    """Checked against express-session's options, kept as the mapping it was."""
    value = empty_if_none(value)
    try:
        SessionConfig.model_validate(value)
    except ValidationError as exc:
        raise_errors("session", relocate(exc, (), SessionConfig))
    return value


class CliConfig(EGModel):
    url: str | None = None              # Admin API URL; EG_ADMIN_URL wins
    verbose: bool = False


class RegistryServe(MeshModel):
    """Run the built-in registry inside ``meshgate run`` (the master serves it)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8500
    hosts: list[str] = Field(default_factory=list, description="Other Host names it answers to")
    dataDir: str | None = Field(None, description="Snapshot folder (memory store)")
    store: Literal["memory", "etcd"] = "memory"
    etcd: list[str] = Field(default_factory=list, description="etcd endpoint URLs")
    etcdPrefix: str = "/meshgate/registry"


class RegistryConfig(MeshModel):
    url: str | None = Field(None, description="Registry URL used by `type: registry` "
                                              "discovery and sidecars ($MESHGATE_REGISTRY)")
    serve: RegistryServe | None = Field(None, description="Embed the registry in this process")


class CredentialChecks(MeshModel):
    """Limits on checking presented secrets (key-auth, basic-auth, oauth2 clients)."""

    hashWorkers: int = Field(
        default=2, ge=1, le=64, description="Slow hashes run at once per worker process")
    maxWaiting: int = Field(
        default=32, ge=0, description="Checks waiting for a hash; beyond: 503, Retry-After")
    maxWaitingPerClient: int = Field(
        default=4, ge=1, description="Checks one client address may have waiting; beyond: 429")
    maxFailures: int = Field(
        default=10, ge=1, description="Failed checks per client address in failureWindow; "
                                      "beyond: 429")
    maxFailuresPerId: int = Field(
        default=20, ge=1, description="Failed checks per key id / username in failureWindow; "
                                      "beyond: only clients without failures may try")
    failureWindow: int = Field(
        default=60000, ge=1000, description="The sliding window of failures, ms")


def _no_plugins(value: Any) -> Any:
    """EG's ``plugins``: nothing (or an empty section) is fine, any plugin is not."""
    if value:
        raise PydanticCustomError("eg_plugins", PLUGINS_MESSAGE)
    return {}


Section = BeforeValidator(empty_if_none)


class SystemConfig(EGModel):
    db: Annotated[DbConfig, Section] = Field(default_factory=DbConfig)
    crypto: Annotated[CryptoConfig, Section] = Field(default_factory=CryptoConfig)
    session: Annotated[dict[str, Any], BeforeValidator(
        _session, json_schema_input_type=SessionConfig)] = Field(default_factory=dict)
    accessTokens: Annotated[AccessTokensConfig, Section] = Field(
        default_factory=AccessTokensConfig)
    refreshTokens: Annotated[RefreshTokensConfig, Section] = Field(
        default_factory=RefreshTokensConfig)
    authorizationCodes: Annotated[AuthorizationCodesConfig, Section] = Field(
        default_factory=AuthorizationCodesConfig)
    plugins: Annotated[dict[str, Any], BeforeValidator(_no_plugins)] = Field(
        default_factory=dict, description="Express Gateway's JavaScript plugins: refused",
        json_schema_extra={"maxProperties": 0})
    cli: Annotated[CliConfig, Section] = Field(default_factory=CliConfig)
    registry: RegistryConfig | None = None
    credentialChecks: Annotated[CredentialChecks, Section] = Field(
        default_factory=CredentialChecks)

    @property
    def uses_redis(self) -> bool:
        """True when consumers live in a real Redis (db.redis without emulate)."""
        redis = self.db.redis
        return redis is not None and not redis.emulate
