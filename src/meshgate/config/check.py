"""Build a validated config's policies as a worker would, without serving it.

Theory of operation
-------------------
The models (``loader``) catch what a file says wrong; some mistakes only
show when a policy is built: a jwt ``secretOrPublicKeyFile`` that does not
exist, a key that does not parse, a system.config.yml ``accessTokens`` key
the oauth2 policy cannot sign with. ``check_build(cfg)`` does what a worker
does on start -- clusters, then every pipeline's conditions and actions,
then ``snapshot.compile_snapshot`` -- on a fresh event loop with a
throwaway ``WorkerContext``, and returns a ``ConfigError`` per failure,
located like the loader's (``FILE:LINE: pipelines.P.policies[i].POLICY[j]
.action: ...``) and naming the pipeline and the policy.

No listener is opened and nothing persists. Policies that keep state get
what they ask ``ctx.services`` for, except the consumer store: the
validation build gets a store whose backend refuses I/O, so no SQLite file
or data folder is created and no Redis connection is made (so a store that
is unreachable is not reported; the ``users.json`` / ``applications.json``
models are still read). The shared Redis and HTTP clients some policies
make connect only on first use; the build never uses them and closes them
after, as a worker does at exit.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshgate.config.errors import ConfigError, locate
from meshgate.config.loader import parse_document
from meshgate.config.snapshot import compile_condition, compile_snapshot
from meshgate.policies import POLICIES, BuildContext

if TYPE_CHECKING:
    from meshgate.config.loader import LoadedConfig
    from meshgate.server.context import WorkerContext
    from meshgate.store.backend import Doc, Op
    from meshgate.upstream.cluster import Cluster

__all__ = ["check_build"]


def check_build(cfg: LoadedConfig) -> list[ConfigError]:
    """Every error building ``cfg``'s clusters and policies raises (empty: it builds)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_build(cfg))
    finally:
        loop.close()


async def _build(cfg: LoadedConfig) -> list[ConfigError]:
    from meshgate.server.context import WorkerContext
    from meshgate.server.worker import _close_services
    from meshgate.telemetry.metrics import Metrics

    ctx = WorkerContext(asyncio.get_running_loop(), Metrics())
    ctx.services.get("store", lambda: _offline_store(cfg))
    where = _Locator(cfg)
    clusters: dict[str, Cluster] = {}
    try:
        errors = _build_clusters(cfg, ctx, clusters, where)
        if not errors:
            errors = _build_pipelines(cfg, ctx, clusters, where)
        if not errors:
            try:       # the rest, exactly as a worker does it (routes, the router)
                snapshot = compile_snapshot(cfg, ctx)
                for cluster in snapshot.clusters.values():
                    cluster.close()
            except Exception as exc:
                errors.append(where.error(("pipelines",), "the config does not build", exc))
        return errors
    finally:
        for cluster in clusters.values():
            cluster.close()
        await _close_services(ctx)


def _build_clusters(cfg: LoadedConfig, ctx: WorkerContext, clusters: dict[str, Cluster],
                    where: _Locator) -> list[ConfigError]:
    from meshgate.config.snapshot import _options
    from meshgate.upstream.cluster import build_cluster

    errors: list[ConfigError] = []
    for name, svc in cfg.gateway.serviceEndpoints.items():
        try:
            clusters[name] = build_cluster(ctx, name, svc, _options(svc.proxyOptions))
        except Exception as exc:
            errors.append(where.error(("serviceEndpoints", name),
                                      f"serviceEndpoint {name!r} does not build", exc))
    return errors


def _build_pipelines(cfg: LoadedConfig, ctx: WorkerContext, clusters: dict[str, Cluster],
                     where: _Locator) -> list[ConfigError]:
    errors: list[ConfigError] = []
    for name, pipeline in cfg.gateway.pipelines.items():
        build = BuildContext(clusters, cfg.system, name, list(pipeline.apiEndpoints),
                             ctx.services, cfg.directory, ctx.metrics)
        for index, use in enumerate(pipeline.policies):
            spec = POLICIES.get(use.name)
            what = f"pipeline {name!r}, policy {use.name!r}"
            for number, step in enumerate(use.steps):
                loc = ("pipelines", name, "policies", index, use.name, number)
                if step.condition is not None:
                    try:
                        compile_condition(step.condition)
                    except Exception as exc:
                        errors.append(where.error((*loc, "condition"), f"{what}, condition",
                                                  exc))
                try:
                    if spec is None:
                        raise ValueError("unknown policy")
                    spec.build(step.action, build)
                except Exception as exc:
                    errors.append(where.error((*loc, "action"), what, exc))
    return errors


class _Locator:
    """File, line and dotted field of a place in gateway.config.yml, as the loader says."""

    def __init__(self, cfg: LoadedConfig) -> None:
        self.file = str(cfg.gateway_path)
        self.data: Any = {}
        self.lines: Any = {}
        self.source_line: Callable[[int], int] = lambda n: n
        try:
            text = Path(cfg.gateway_path).read_text(encoding="utf-8")
            sub, self.data, self.lines = parse_document(
                text, self.file, os.environ, cfg.gateway_path.suffix == ".json")
            self.source_line = sub.source_line
        except (OSError, ConfigError):      # changed since it was loaded: no line then
            pass

    def error(self, loc: Sequence[str | int], what: str, exc: Exception) -> ConfigError:
        field, line = locate(self.data, self.lines, loc)
        reason = " ".join((str(exc) or type(exc).__name__).split())   # one line
        return ConfigError(self.file, self.source_line(line) if line else None, field or None,
                           f"{what}: {reason}")


class _OfflineBackend:
    """A store backend for the validation build: it refuses I/O instead of doing it."""

    async def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the consumer store is not opened by meshgate validate")

    get = get_many = keys_by = scan = version = _refuse

    async def apply(self, ops: Sequence[Op], bump: bool = True) -> None:
        await self._refuse()

    async def take(self, table: str, key: str, check: Callable[[Doc], bool],
                   bump: bool = True) -> Doc | None:
        return await self._refuse()

    async def close(self) -> None:
        return None


def _offline_store(cfg: LoadedConfig) -> Any:
    from meshgate.store.service import ConsumerStore

    return ConsumerStore(_OfflineBackend(), config_dir=Path(cfg.directory),
                         cipher_key=cfg.system.crypto.cipherKey)
