"""``meshgate sidecar``: run next to one service instance.

Theory of operation
-------------------
Builds a ``SidecarConfig`` from the options, then serves exactly as ``meshgate
run`` does, with ``apply_sidecar`` rewriting every config loaded (at start and
on each reload). Without ``--config`` the sidecar serves an empty config
folder of its own: inbound to the app, outbound by service name, nothing
else -- it needs only the registry address (``--registry`` or
``$MESHGATE_REGISTRY``). Bad options or config exit 2.

The registry needs this service's join token (``--token-file``, else
``$MESHGATE_JOIN_TOKEN``); an unreadable token file exits 2. ``--app-protocol``
and ``--mesh-protocol`` win over the folder's ``sidecar.appProtocol`` and
``sidecar.meshProtocol``. Port 0 for
``--inbound-port`` or ``--outbound-port`` is resolved here, once, to a free
port: every worker then binds that same port (with SO_REUSEPORT each would
otherwise get its own), and the inbound one is the port registered.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
import uvloop
from pydantic import ValidationError

from meshgate.config.loader import ConfigError, find_config_dir, load_config
from meshgate.config.mesh import SidecarConfig
from meshgate.registry.tokens import read_token_file


class Protocol(StrEnum):
    http1 = "http1"
    h2c = "h2c"


def sidecar(
    service: Annotated[str, typer.Option(help="Name of the service this instance serves")],
    app_port: Annotated[int, typer.Option("--app-port", min=1, max=65535,
                                          help="Port of the local app")],
    config: Annotated[str | None, typer.Option(
        "--config", help="Config folder (pipelines for inbound traffic, outbound settings)")
    ] = None,
    inbound_port: Annotated[int, typer.Option("--inbound-port", min=0, max=65535,
                                              help="Port for traffic to this instance")] = 15006,
    outbound_port: Annotated[int, typer.Option(
        "--outbound-port", min=0, max=65535,
        help="Port the app calls other services through (Host header or HTTP_PROXY)")] = 15001,
    registry: Annotated[str | None, typer.Option(
        help="Registry URL (default: $MESHGATE_REGISTRY, then http://127.0.0.1:8500)")] = None,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="File holding this service's registry join token "
                             "(default: $MESHGATE_JOIN_TOKEN)")] = None,
    address: Annotated[str, typer.Option(help="Address registered for this instance")
                       ] = "127.0.0.1",
    bind: Annotated[str, typer.Option(help="Address the listeners bind")] = "127.0.0.1",
    instance_id: Annotated[str | None, typer.Option(
        "--instance-id", help="Instance id (default: SERVICE-HOST-INBOUND_PORT)")] = None,
    zone: Annotated[str, typer.Option(help="Zone (locality) of this instance")] = "",
    version: Annotated[str, typer.Option(help="Version label of this instance")] = "",
    weight: Annotated[int, typer.Option(min=1, max=128,
                                        help="Balancing weight of this instance")] = 1,
    ttl: Annotated[int, typer.Option(min=100, help="Registration TTL in ms")] = 10000,
    app_health_path: Annotated[str | None, typer.Option(
        "--app-health-path",
        help="HTTP path that checks the app (default: a TCP connect to --app-port)")] = None,
    admin_port: Annotated[int | None, typer.Option(
        "--admin-port", min=0, max=65535,
        help="Admin API port (/metrics, /clusters, /ready); default: none")] = None,
    no_register: Annotated[bool, typer.Option("--no-register",
                                              help="Do not register this instance")] = False,
    app_protocol: Annotated[Protocol | None, typer.Option(
        "--app-protocol", help="What the app speaks: http1 (default) or h2c (gRPC)")] = None,
    mesh_protocol: Annotated[Protocol | None, typer.Option(
        "--mesh-protocol", help="To other sidecars: h2c (default: calls share a few HTTP/2 "
                                "connections) or http1")] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1)] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run as the sidecar of one service instance: inbound and outbound listeners."""
    from meshgate.server.master import serve
    from meshgate.sidecar.config import apply_sidecar

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s sidecar %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)    # heartbeats, watches
    if token_file is not None:
        try:
            read_token_file(token_file)
        except (OSError, ValueError) as exc:
            typer.echo(f"meshgate sidecar: --token-file: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        inbound_port = inbound_port or _free_port(bind)
        outbound_port = outbound_port or _free_port(bind)
    except OSError as exc:
        typer.echo(f"meshgate sidecar: cannot bind {bind}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    protocols = {key: value.value for key, value in (("appProtocol", app_protocol),
                                                      ("meshProtocol", mesh_protocol))
                 if value is not None}
    try:
        side = SidecarConfig.model_validate({
            **protocols,
            "service": service, "appPort": app_port, "inboundPort": inbound_port,
            "outboundPort": outbound_port, "bind": bind, "address": address,
            "instanceId": instance_id or f"{service}-{socket.gethostname()}-{inbound_port}",
            "zone": zone, "version": version, "weight": weight, "ttl": ttl,
            "selfRegister": not no_register,
            "registry": registry or os.environ.get("MESHGATE_REGISTRY"),
            "tokenFile": str(token_file.resolve()) if token_file is not None else None,
            "appHealthPath": app_health_path, "adminPort": admin_port})
    except ValidationError as exc:
        typer.echo(f"meshgate sidecar: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None
    with tempfile.TemporaryDirectory(prefix="meshgate-sidecar-") as scratch:
        try:
            if config is not None:
                directory = find_config_dir(config)
            else:
                directory = Path(scratch)
                (directory / "gateway.config.yml").write_text("{}\n")
            overlay = partial(_overlay, side=side, apply=apply_sidecar)
            overlay(load_config(directory))
        except ConfigError as exc:
            typer.echo(f"meshgate: invalid config: {exc}", err=True)
            raise typer.Exit(2) from None
        code = uvloop.run(serve(directory, workers, log_level, overlay))
    raise typer.Exit(code)


def _free_port(host: str) -> int:
    """A port free on ``host`` now, for a listener asked for on port 0."""
    info = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM,
                              flags=socket.AI_PASSIVE)[0]
    with socket.socket(info[0], socket.SOCK_STREAM) as sock:
        sock.bind(info[4])
        return int(sock.getsockname()[1])


# What a config folder's ``sidecar`` section may set (the rest is the command line's).
_FROM_FOLDER = ("outbound", "appProtocol", "meshProtocol")


def _overlay(loaded: object, *, side: SidecarConfig, apply: object) -> object:
    """The folder's ``sidecar`` section gives what the command line left unsaid."""
    folder = getattr(loaded.gateway, "sidecar", None)    # type: ignore[attr-defined]
    if folder is not None:
        update = {key: getattr(folder, key) for key in _FROM_FOLDER
                  if key in folder.model_fields_set and key not in side.model_fields_set}
        if update:
            side = side.model_copy(update=update)
    return apply(loaded, side)    # type: ignore[operator]
