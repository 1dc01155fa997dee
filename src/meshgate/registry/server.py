"""Serve the registry: standalone (``meshgate registry``) or inside another process.

Theory of operation
-------------------
``EmbeddedRegistry`` owns a store and a uvicorn server running in the
caller's event loop on a socket it binds itself (so ``port=0`` works and the
bound port is known before serving). It never touches signals: the host
process (the gateway master, a test) owns them. ``start()`` returns once
uvicorn accepts connections; ``stop()`` first releases every blocking query
and watch stream (they would otherwise hold the shutdown), then stops
uvicorn, then closes the store (last snapshot, etcd leases stay with the
instances that own them).

``serve_registry()`` is the standalone form: start, wait for SIGTERM/SIGINT
(or the ``stop`` event), stop.

Operator tokens (see ``auth``): ``$MESHGATE_REGISTRY_TOKEN`` and the
``operator_token_file``, made with a new token (mode 0600) when missing.
Without either, a registry with a data dir uses ``DATA_DIR/operator.token``
(made on first start), and one without keeps a fresh token in a private
temporary file for its lifetime; either way the path is logged, never the
token. There is no way to start a registry whose writes are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import uvicorn

from meshgate.admin.guard import install_guard
from meshgate.registry.api import create_registry_app
from meshgate.registry.auth import Limits, RegistryAuth
from meshgate.registry.base import (
    DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
    DEFAULT_ETCD_PREFIX,
    DEFAULT_PORT,
    BaseStore,
)
from meshgate.registry.store import MemoryStore
from meshgate.registry.tokens import OPERATOR_TOKEN_FILE, operator_token_file
from meshgate.server.embed import EmbeddedServer, bind

log = logging.getLogger("meshgate.registry")
StoreKind = Literal["memory", "etcd"]
TOKEN_ENV = "MESHGATE_REGISTRY_TOKEN"


def operator_tokens(token_file: str | Path | None, data_dir: str | Path | None
                    ) -> tuple[list[str], Path | None, str]:
    """(operator tokens, their file, what to log about it) for a registry starting.

    ``ValueError`` / ``OSError`` when the file given cannot be read or made."""
    tokens = [t for t in [os.environ.get(TOKEN_ENV, "").strip()] if t]
    path: Path | None = None
    if token_file is not None:
        path = Path(token_file)
    elif data_dir is not None:
        path = Path(data_dir) / OPERATOR_TOKEN_FILE
    elif tokens:
        return tokens, None, f"operator token from ${TOKEN_ENV}"
    if path is None:
        fd, name = tempfile.mkstemp(prefix="meshgate-registry-", suffix=".token")
        os.close(fd)
        path = Path(name)
        path.unlink()
        token, _ = operator_token_file(path)
        return [*tokens, token], path, (f"operator token in {path} (mode 0600, for this run "
                                        "only: give --operator-token-file or --data-dir to "
                                        "keep one)")
    token, created = operator_token_file(path)
    made = "created, mode 0600" if created else "existing"
    return [*tokens, token], path, f"operator token in {path} ({made})"


def create_store(store: StoreKind = "memory", *, data_dir: str | Path | None = None,
                 etcd_endpoints: Sequence[str] = (), etcd_prefix: str = DEFAULT_ETCD_PREFIX,
                 deregister_critical_after_ms: int = DEFAULT_DEREGISTER_CRITICAL_AFTER_MS
                 ) -> BaseStore:
    if store == "memory":
        return MemoryStore(data_dir, deregister_critical_after_ms=deregister_critical_after_ms)
    if store == "etcd":
        from meshgate.registry.etcd_store import EtcdStore

        if not etcd_endpoints:
            raise ValueError("the etcd store needs at least one etcd endpoint")
        return EtcdStore(list(etcd_endpoints), etcd_prefix,
                         deregister_critical_after_ms=deregister_critical_after_ms)
    raise ValueError(f"unknown registry store {store!r} (memory or etcd)")


class EmbeddedRegistry:
    """The registry API served from the caller's event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 store: StoreKind | BaseStore = "memory", data_dir: str | Path | None = None,
                 etcd_endpoints: Sequence[str] = (), etcd_prefix: str = DEFAULT_ETCD_PREFIX,
                 deregister_critical_after_ms: int = DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
                 keepalive: float = 15.0, operator_token_file: str | Path | None = None,
                 require_token_for_reads: bool = False, limits: Limits | None = None,
                 allowed_hosts: Sequence[str] = ()) -> None:
        self.host = host
        self.port = port
        self.store = store if isinstance(store, BaseStore) else create_store(
            store, data_dir=data_dir, etcd_endpoints=etcd_endpoints, etcd_prefix=etcd_prefix,
            deregister_critical_after_ms=deregister_critical_after_ms)
        try:
            tokens, self.operator_token_path, self.token_note = operator_tokens(
                operator_token_file, data_dir)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot use the operator token file: {exc}") from None
        self._ephemeral = (operator_token_file is None and data_dir is None
                           and self.operator_token_path is not None)
        self.auth = RegistryAuth(self.store.tokens, tokens,
                                 require_token_for_reads=require_token_for_reads)
        self.app = create_registry_app(self.store, self.auth, keepalive=keepalive,
                                       limits=limits)
        names = [host, *allowed_hosts]      # no browser page may write (admin/guard.py)
        install_guard(self.app, lambda: names, open_paths=("/v1/health",), error_key="detail",
                      hint="give it with --allowed-host (registry.serve.hosts when embedded)")
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Open the store, bind, and return once the API accepts connections."""
        sock = bind(self.host, self.port)     # OSError (port in use) goes to the caller
        self.port = int(sock.getsockname()[1])
        try:
            await self.store.start()
        except BaseException:
            sock.close()
            await self.store.close()
            raise
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off",
                                access_log=False, ws="none", timeout_graceful_shutdown=2)
        self._server = EmbeddedServer(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self.store.close()
                self._task.result()
                raise RuntimeError("the registry API stopped at start")
            await asyncio.sleep(0.01)
        log.info("registry listening on %s (%s store); %s", self.url,
                 type(self.store).__name__, self.token_note)

    async def stop(self) -> None:
        self.store.release_watchers()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        await self.store.close()
        if self._ephemeral and self.operator_token_path is not None:
            self.operator_token_path.unlink(missing_ok=True)

    async def __aenter__(self) -> EmbeddedRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_registry(host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                         store: StoreKind = "memory", data_dir: str | Path | None = None,
                         etcd_endpoints: Sequence[str] = (),
                         etcd_prefix: str = DEFAULT_ETCD_PREFIX,
                         deregister_critical_after_ms: int =
                         DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
                         operator_token_file: str | Path | None = None,
                         require_token_for_reads: bool = False, limits: Limits | None = None,
                         allowed_hosts: Sequence[str] = (),
                         stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then stop cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = EmbeddedRegistry(host, port, store=store, data_dir=data_dir,
                                etcd_endpoints=etcd_endpoints, etcd_prefix=etcd_prefix,
                                deregister_critical_after_ms=deregister_critical_after_ms,
                                operator_token_file=operator_token_file,
                                require_token_for_reads=require_token_for_reads, limits=limits,
                                allowed_hosts=allowed_hosts)
    await registry.start()
    print(f"registry listening on {registry.url}", flush=True)
    print(f"registry {registry.token_note}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await registry.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
