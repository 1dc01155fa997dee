"""``meshgate registry``: run the built-in service registry on its own.

Theory of operation
-------------------
Parses the options, then runs ``serve_registry`` on uvloop until SIGTERM or
SIGINT, which stop it cleanly (blocking queries and watch streams end, a
last snapshot is written, the exit status is 0). A port already in use or an
unreachable etcd at start is one line on stderr and exit status 1; bad
options exit 2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from meshgate.etcdv3 import EtcdError
from meshgate.registry.base import (
    DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
    DEFAULT_ETCD_PREFIX,
    DEFAULT_PORT,
)


def registry(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535,
                                      help="Port to listen on (0: any free port)")
                    ] = DEFAULT_PORT,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Folder of the memory store's snapshot (default: none, "
                           "registrations are lost on restart)")] = None,
    store: Annotated[str, typer.Option(help="memory or etcd")] = "memory",
    etcd: Annotated[list[str] | None, typer.Option(
        "--etcd", help="etcd endpoint URL (repeat, or comma-separate, for several)")] = None,
    etcd_prefix: Annotated[str, typer.Option(
        "--etcd-prefix", help="Key prefix of the registry in etcd")] = DEFAULT_ETCD_PREFIX,
    deregister_critical_after: Annotated[int, typer.Option(
        "--deregister-critical-after", min=0,
        help="Default ms a critical instance stays listed before removal")
    ] = DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Serve the service registry API (register, heartbeat, list, watch)."""
    if store not in ("memory", "etcd"):
        typer.echo(f"meshgate registry: --store must be memory or etcd, not {store!r}", err=True)
        raise typer.Exit(2)
    endpoints = [u.strip() for item in etcd or [] for u in item.split(",") if u.strip()]
    if store == "etcd" and not endpoints:
        typer.echo("meshgate registry: --store etcd needs --etcd URL", err=True)
        raise typer.Exit(2)
    from meshgate.registry.server import serve_registry

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s registry %(levelname)s %(name)s: %(message)s")
    try:
        uvloop.run(serve_registry(
            host, port, store="etcd" if store == "etcd" else "memory", data_dir=data_dir,
            etcd_endpoints=endpoints, etcd_prefix=etcd_prefix,
            deregister_critical_after_ms=deregister_critical_after))
    except OSError as exc:
        typer.echo(f"meshgate registry: cannot listen on {host}:{port}: "
                   f"{exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    except (RuntimeError, EtcdError) as exc:
        typer.echo(f"meshgate registry: {exc}", err=True)
        raise typer.Exit(1) from None
