"""What every Admin API command shares: its options, output and exit status.

Theory of operation
-------------------
``eg`` accepts its common flags after the verb (``eg users create -q``), so
they cannot be options of the group. ``verb(group, name, *aliases)``
registers a function ``fn(session, ...)`` as a typer command whose signature
is the function's own parameters plus the common options below; it builds
the ``Session`` from them, runs the function and turns failures into exit
statuses:

* a ``CliError`` raised out of the function stops it (status 1, or 2 for a
  usage error found before anything was sent);
* ``Session.each`` runs one request per item (``users remove a b c``),
  reporting each failure on its own line and carrying on, as ``eg`` does;
  the command then exits 1.

Output follows ``eg``: results on stdout (JSON documents, or with ``-q``
only ids, one a line, for scripts), progress such as ``Created <id>`` on
stderr; ``list`` prints a table (rich) unless ``-q`` or ``--json``.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from meshgate.cli.admin_client import AdminClient, CliError, find_admin_url, parse_headers

T = TypeVar("T")

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only print ids (for scripts)")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v",
                                       help="Show the requests sent to the Admin API")]
Headers = Annotated[list[str] | None, typer.Option(
    "-H", "--header", help="Header to send with each request, NAME:VALUE (repeatable)")]
AdminUrl = Annotated[str | None, typer.Option(
    "--admin-url", help="Admin API URL (default: $MESHGATE_ADMIN_URL, $EG_ADMIN_URL, "
                        "cli.url of system.config.yml, http://localhost:9876)",
    show_default=False)]
ConfigDir = Annotated[str | None, typer.Option(
    "--config", help="Config folder to read the admin URL from "
                     "(default: $MESHGATE_CONFIG_DIR, then $EG_CONFIG_DIR)", show_default=False)]
NoColor = Annotated[bool, typer.Option("--no-color", help="Disable colour")]

# Never shown in a table (--json and info still show what the API sends).
SECRETS = frozenset({"keySecret", "password", "secret", "passwordHash"})

_COMMON: list[inspect.Parameter] = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
    for name, kind, default in (
        ("quiet", Quiet, False), ("verbose", Verbose, False), ("header", Headers, None),
        ("admin_url", AdminUrl, None), ("config", ConfigDir, None), ("no_color", NoColor, False))
]


@dataclass
class Session:
    client: AdminClient
    quiet: bool
    no_color: bool
    failures: list[CliError] = field(default_factory=list)

    def out(self, text: str) -> None:
        """A result, on stdout."""
        typer.echo(text)

    def out_json(self, value: Any) -> None:
        typer.echo(json.dumps(value, indent=2, ensure_ascii=False))

    def ok(self, message: str) -> None:
        """Progress (``Created x``), on stderr; silent with -q."""
        if not self.quiet:
            typer.secho(message, err=True, fg=None if self.no_color else "green")

    def fail(self, error: CliError) -> None:
        self.failures.append(error)
        typer.secho(f"meshgate: {error.message}", err=True,
                    fg=None if self.no_color else "red")

    def each(self, items: Iterable[T], action: Callable[[T], None]) -> None:
        """Run ``action`` on every item; a failure is reported and the rest still run
        (unless the Admin API cannot be reached at all)."""
        for item in items:
            try:
                action(item)
            except CliError as exc:
                if exc.fatal:
                    raise
                self.fail(exc)

    def table(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        """Rows as a rich table: the given columns that occur, then other scalars but secrets."""
        present = [c for c in columns if any(c in r for r in rows)]
        extra = sorted({k for r in rows for k, v in r.items() if k not in present
                        and k not in SECRETS and not isinstance(v, (dict, list))})
        console = Console(no_color=self.no_color, soft_wrap=True,
                          width=None if sys.stdout.isatty() else 10_000)
        table = Table(*present, *extra, header_style=None if self.no_color else "bold")
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in [*present, *extra]))
        console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def verb(group: typer.Typer, name: str, *aliases: str,
         help: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``fn(session, ...)`` as ``group name`` (and hidden aliases)."""
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            common = {p.name: kwargs.pop(p.name) for p in _COMMON}
            _run(fn, common, kwargs)

        params = [*own, *_COMMON]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        # typer reads __signature__ and resolves __annotations__: give it evaluated ones
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__
        group.command(name, help=help or (fn.__doc__ or "").strip())(command)
        for alias in aliases:
            group.command(alias, hidden=True)(command)
        return fn
    return register


def _run(fn: Callable[..., None], common: dict[str, Any], kwargs: dict[str, Any]) -> None:
    session: Session | None = None
    try:
        client = AdminClient(find_admin_url(common["admin_url"], common["config"]),
                             parse_headers(common["header"] or []), common["verbose"])
        session = Session(client, common["quiet"], common["no_color"])
        try:
            fn(session, **kwargs)
        finally:
            client.close()
    except CliError as exc:
        if session is None:
            typer.echo(f"meshgate: {exc.message}", err=True)
        else:
            session.fail(exc)
        raise typer.Exit(exc.code) from None
    if session.failures:
        raise typer.Exit(max(e.code for e in session.failures))


def parse_properties(values: list[str] | None, json_values: bool = False) -> dict[str, Any]:
    """``-p key=value`` options -> a dict (EG's rule: no '=' or nothing after it is invalid).

    With ``json_values`` a value that parses as JSON (``[]``, ``true``) is used as such,
    as ``eg credentials create`` does.
    """
    out: dict[str, Any] = {}
    for raw in values or []:
        key, sep, value = raw.partition("=")
        if not sep or not key or not value:
            raise CliError(f"invalid property option {raw!r}: expected key=value", 2)
        if json_values:
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    return out


def read_stdin_objects() -> list[dict[str, Any]]:
    """Newline-delimited JSON objects from stdin, all checked before anything is sent."""
    objects: list[dict[str, Any]] = []
    for number, line in enumerate(sys.stdin.read().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise CliError(f"stdin line {number}: invalid JSON: {exc}", 2) from None
        if not isinstance(value, dict):
            raise CliError(f"stdin line {number}: expected a JSON object", 2)
        objects.append(value)
    return objects


Property = Annotated[list[str] | None, typer.Option(
    "-p", "--property", help="Property as key=value (repeatable)", show_default=False)]
Stdin = Annotated[bool, typer.Option("--stdin", help="Read newline-delimited JSON objects "
                                                     "from standard input")]
All = Annotated[bool, typer.Option("--all", "-a", help="Fetch every page, not only the first")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
