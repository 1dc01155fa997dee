"""The ``meshgate`` command line: run, validate, schema, and EG's Admin API commands.

Config problems print one line naming file, line and field and exit with
status 2; nothing here prints a traceback for bad input. ``users``, ``apps``,
``credentials``, ``credential:scopes``, ``scopes`` and ``tokens`` mirror EG's
``eg`` commands (``cli/consumers.py``, ``cli/credentials.py``): API errors exit
1, usage errors 2.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

import typer
import uvloop

from meshgate import __version__
from meshgate.cli import consumers, credentials, registry, sidecar
from meshgate.config.loader import (
    ConfigError,
    find_config_dir,
    json_schema,
    load_config,
    system_json_schema,
)

app = typer.Typer(help="meshgate: API gateway, service-mesh sidecar and service registry.",
                  no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)

# EG's command names first, then the aliases eg accepts (and credential-scopes).
for _group, _names in (
    (consumers.users, ("users", "user")),
    (consumers.apps, ("apps", "app")),
    (credentials.credentials, ("credentials", "credential")),
    (credentials.credential_scopes,
     ("credential:scopes", "credential:scope", "credential-scopes")),
    (credentials.scopes, ("scopes", "scope")),
    (credentials.tokens, ("tokens", "token")),
):
    for _index, _name in enumerate(_names):
        app.add_typer(_group, name=_name, hidden=_index > 0)
app.add_typer(registry.app, name="registry")
app.command("sidecar")(sidecar.sidecar)

ConfigDirArg = Annotated[
    str | None,
    typer.Argument(help="Config folder with gateway.config.yml "
                        "(default: $MESHGATE_CONFIG_DIR, then $EG_CONFIG_DIR)",
                   show_default=False),
]


def _config_error(exc: ConfigError) -> typer.Exit:
    typer.echo(f"meshgate: invalid config: {exc}", err=True)
    return typer.Exit(2)


@app.command()
def run(
    config_dir: ConfigDirArg = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=1,
                       help="Worker processes (default: server.workers, 1)")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Serve the gateway described by CONFIG_DIR."""
    from meshgate.server.master import serve

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s master %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)    # registry watches
    try:
        directory = find_config_dir(config_dir)
        load_config(directory)
    except ConfigError as exc:
        raise _config_error(exc) from None
    code = uvloop.run(serve(directory, workers, log_level))
    raise typer.Exit(code)


@app.command()
def validate(config_dir: ConfigDirArg = None) -> None:
    """Check CONFIG_DIR without serving it: the files, then building every policy."""
    from meshgate.conditions import CONDITIONS
    from meshgate.config.check import check_build
    from meshgate.policies import POLICIES

    try:
        cfg = load_config(find_config_dir(config_dir))
    except ConfigError as exc:
        raise _config_error(exc) from None
    failures = check_build(cfg)
    for extensions in (POLICIES, CONDITIONS):    # installed plugins that were left out
        extensions.names()
        for problem in extensions.problems:
            typer.echo(f"meshgate: warning: {problem}", err=True)
    if failures:
        for failure in failures:
            typer.echo(f"meshgate: invalid config: {failure}", err=True)
        raise typer.Exit(2)
    gw = cfg.gateway
    typer.echo(f"{cfg.gateway_path}: ok ({len(gw.apiEndpoints)} apiEndpoints, "
               f"{len(gw.serviceEndpoints)} serviceEndpoints, {len(gw.pipelines)} pipelines)")


@app.command()
def schema(
    system: Annotated[bool, typer.Option(
        "--system", help="The schema of system.config.yml instead")] = False,
) -> None:
    """Print the JSON Schema of gateway.config.yml (for editors); unknown keys are errors."""
    json.dump(system_json_schema() if system else json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
