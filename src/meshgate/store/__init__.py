"""Consumers, credentials, scopes and OAuth2 tokens: SQLite embedded, Redis shared.

Theory of operation
-------------------
``open_store(loaded_config)`` returns a ``Store`` (``api``) without doing
network I/O; connections open on first use, so it may be called from a
policy factory. Which backend:

* ``db.redis`` in system.config.yml without ``emulate: true`` -> Redis
  (``redis.RedisBackend``): every gateway on that Redis shares consumers;
* otherwise the embedded SQLite file (``sqlite.SqliteBackend``), at
  ``db.sqlite.path`` if given (relative to the config folder), else
  ``$MESHGATE_DATA_DIR/meshgate.db``, else ``<config folder>/data/meshgate.db``.

Module map: ``backend`` (the storage interface), ``sqlite`` / ``redis`` (its
two engines), ``model`` (documents, values, errors), ``secrets`` (hashing,
sealing, ids), ``cache`` (verification cache), ``core`` + ``users`` +
``credentials`` + ``tokens`` + ``verify`` (EG's rules, assembled in
``service.ConsumerStore``).

In a worker, share one store per process between policies and reloads::

    store = ctx.services.get("store", lambda: open_store_for(ctx.system, config_dir))
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshgate.store.api import Store
from meshgate.store.cache import MISS
from meshgate.store.guard import Limits
from meshgate.store.model import (
    CREDENTIAL_TYPES,
    Conflict,
    Consumer,
    Credential,
    Invalid,
    NotFound,
    StoreError,
    Token,
)
from meshgate.store.service import ConsumerStore

__all__ = [
    "CREDENTIAL_TYPES", "MISS", "Conflict", "Consumer", "ConsumerStore", "Credential",
    "Invalid", "NotFound", "Store", "StoreError", "Token", "open_store", "open_store_for",
    "sqlite_path",
]


def sqlite_path(system: Any, config_dir: Path | None,
                env: Mapping[str, str] | None = None) -> Path:
    """Where the embedded store's file lives (see the module docstring)."""
    env = os.environ if env is None else env
    section = getattr(system.db, "sqlite", None)
    base = config_dir if config_dir is not None else Path.cwd()
    if section is not None and section.path:
        path = Path(str(section.path)).expanduser()
        return path if path.is_absolute() else base / path
    if env.get("MESHGATE_DATA_DIR"):
        return Path(env["MESHGATE_DATA_DIR"]).expanduser() / "meshgate.db"
    return base / "data" / "meshgate.db"


def open_store_for(system: Any, config_dir: Path | None) -> ConsumerStore:
    """A store from a SystemConfig and the config folder it came from."""
    cipher_key = system.crypto.cipherKey
    if system.uses_redis:
        from meshgate.store.redis import RedisBackend, client_from_config
        cfg = system.db.redis
        backend: Any = RedisBackend(client_from_config(cfg), cfg.namespace)
    else:
        from meshgate.store.sqlite import SqliteBackend
        backend = SqliteBackend(sqlite_path(system, config_dir))
    limits = Limits.from_config(getattr(system, "credentialChecks", None))
    return ConsumerStore(backend, config_dir=config_dir, cipher_key=cipher_key, limits=limits)


def open_store(loaded: Any) -> ConsumerStore:
    """A store for a ``LoadedConfig`` (its system config and config folder)."""
    return open_store_for(loaded.system, Path(loaded.directory))
