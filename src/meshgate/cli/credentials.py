"""``meshgate credentials|credential:scopes|scopes|tokens``: EG's ``eg`` commands of those names.

* ``credentials create -c CONSUMER -t TYPE [-p k=v]`` (or ``--stdin`` with
  ``consumer`` and ``type`` in each object); ``-q`` prints the secret to hand
  out: ``keyId:keySecret`` for key-auth and jwt, ``id:password`` for
  basic-auth, ``id:secret`` for oauth2. ``-p`` values that are JSON
  (``scopes=["a","b"]``) are sent as such, as in ``eg``.
* ``credentials info ID -t TYPE``, ``activate|deactivate ID.. -t TYPE``,
  ``list [-c CONSUMER] [-f active archived]``.
* ``credential:scopes add|remove|set SCOPE.. --id ID -t TYPE`` (also spelled
  ``credential-scopes``).
* ``scopes create|info|list|remove``, ``tokens revoke TOKEN..``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meshgate.cli.admin_client import CliError, segment
from meshgate.cli.session import (
    AsJson,
    Property,
    Session,
    Stdin,
    parse_properties,
    read_stdin_objects,
    verb,
)

credentials = typer.Typer(help="Manage credentials", no_args_is_help=True)
credential_scopes = typer.Typer(help="Manage scopes for credentials", no_args_is_help=True)
scopes = typer.Typer(help="Manage scopes", no_args_is_help=True)
tokens = typer.Typer(help="Manage tokens", no_args_is_help=True)

TYPES = "basic-auth, key-auth, jwt, oauth2"
Consumer = Annotated[str | None, typer.Option(
    "--consumer", "-c", help="Consumer: user id, username or app id", show_default=False)]
Type = Annotated[str, typer.Option("--type", "-t", help=f"Credential type: {TYPES}",
                                   show_default=False)]
OptionalType = Annotated[str | None, typer.Option(
    "--type", "-t", help=f"Credential type: {TYPES}", show_default=False)]
CredentialId = Annotated[str, typer.Argument(help="Credential id or keyId", show_default=False)]
CredentialIds = Annotated[list[str], typer.Argument(help="Credential ids or keyIds",
                                                    show_default=False)]
ScopeOwner = Annotated[str, typer.Option("--id", "--keyid", help="Credential id or keyId",
                                         show_default=False)]
ScopeNames = Annotated[list[str], typer.Argument(help="Scopes", show_default=False)]
Filters = Annotated[list[str] | None, typer.Option(
    "--filter", "-f", help="Credential states to list: active, archived (default: active)",
    show_default=False)]
Tokens = Annotated[list[str], typer.Argument(help="Access or refresh tokens",
                                             show_default=False)]

CREDENTIAL_COLUMNS = ["type", "id", "keyId", "consumerId", "isActive", "scopes", "createdAt"]


def _path(kind: str, item: str) -> str:
    return f"/credentials/{segment(kind)}/{segment(item)}"


# -- credentials ---------------------------------------------------------------------
def secret_line(credential: dict[str, Any], kind: str,
                sent: dict[str, Any] | None = None) -> str:
    """What ``-q`` prints for a new credential: the pair a client authenticates with.

    A password or secret the user chose is not echoed by the API; ``sent`` supplies it.
    """
    kind = str(credential.get("type") or kind)
    both = {**(sent or {}), **{k: v for k, v in credential.items() if v is not None}}
    if kind in ("key-auth", "jwt"):
        return f"{both.get('keyId', '')}:{both.get('keySecret', '')}"
    if kind == "basic-auth":
        return f"{both.get('id', '')}:{both.get('password', '')}"
    if kind == "oauth2":
        return f"{both.get('id', '')}:{both.get('secret', '')}"
    return str(both.get("id", ""))


def _create_credential(session: Session, consumer: str, kind: str,
                       fields: dict[str, Any]) -> None:
    if isinstance(fields.get("scopes"), str):
        fields["scopes"] = [fields["scopes"]]
    created = session.client.call("POST", "/credentials",
                                  {"consumerId": consumer, "type": kind, "credential": fields})
    record = created if isinstance(created, dict) else {}
    if session.quiet:
        session.out(secret_line(record, kind, fields))
    else:
        session.ok(f"Created {record.get('id') or record.get('keyId', '')}")
        session.out_json(created)


@verb(credentials, "create")
def create_credential(session: Session, consumer: Consumer = None, type: OptionalType = None,
                      property: Property = None, stdin: Stdin = False) -> None:
    """Create a credential for a user or app (-c jdoe -t key-auth, or --stdin)."""
    if not stdin:
        if not (consumer and type):
            raise CliError("must include either --stdin or -c with -t "
                           "(--consumer with --type)", 2)
        _create_credential(session, consumer, type, parse_properties(property, True))
        return
    objects = read_stdin_objects()
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    for number, obj in enumerate(objects, start=1):
        owner, kind = obj.pop("consumer", None) or consumer, obj.pop("type", None) or type
        if not (owner and kind):
            raise CliError(f"stdin object {number}: needs \"consumer\" and \"type\" "
                           "(or -c and -t)", 2)
        jobs.append((str(owner), str(kind), obj))
    session.each(jobs, lambda job: _create_credential(session, *job))


@verb(credentials, "info")
def credential_info(session: Session, id: CredentialId, type: Type) -> None:
    """Show details for a single credential."""
    found = session.client.call("GET", _path(type, id))
    if session.quiet and isinstance(found, dict):
        session.out(str(found.get("id") or found.get("keyId") or id))
    else:
        session.out_json(found)


def _credential_status(session: Session, ids: list[str], kind: str, active: bool) -> None:
    def one(item: str) -> None:
        result = session.client.call("PUT", _path(kind, item) + "/status", {"status": active})
        status = result.get("status") if isinstance(result, dict) else None
        if session.quiet:
            session.out(item)
        else:
            session.ok(f"{status or ('Activated' if active else 'Deactivated')} {item}")
    session.each(ids, one)


@verb(credentials, "activate")
def activate_credentials(session: Session, id: CredentialIds, type: Type) -> None:
    """Activate credentials by id or keyId."""
    _credential_status(session, id, type, True)


@verb(credentials, "deactivate")
def deactivate_credentials(session: Session, id: CredentialIds, type: Type) -> None:
    """Deactivate credentials by id or keyId."""
    _credential_status(session, id, type, False)


@verb(credentials, "list")
def list_credentials(session: Session, consumer_id: Annotated[str | None, typer.Option(
        "--consumerId", "--consumer-id", "-c", help="Consumer: user id, username or app id",
        show_default=False)] = None, filter: Filters = None,
        json_output: AsJson = False) -> None:
    """List credentials, of one consumer or of all."""
    states = filter or ["active"]
    unknown = [s for s in states if s not in ("active", "archived")]
    if unknown:
        raise CliError(f"unrecognised filter type: {unknown[0]} (use active, archived)", 2)
    path = f"/credentials/{segment(consumer_id)}" if consumer_id else "/credentials"
    answer = session.client.call("GET", path)
    found = answer.get("credentials") if isinstance(answer, dict) else answer
    rows = [c for c in (found or []) if isinstance(c, dict)
            and ("active" if c.get("isActive", True) else "archived") in states]
    if session.quiet:
        for row in rows:
            session.out(str(row.get("id") or row.get("keyId") or ""))
    elif json_output:
        session.out_json(rows)
    elif not rows:
        session.out(f"Consumer {consumer_id} has no credentials" if consumer_id
                    else "There are no credentials")
    else:
        session.table(rows, CREDENTIAL_COLUMNS)


# -- credential:scopes -----------------------------------------------------------------
@verb(credential_scopes, "add")
def add_scopes(session: Session, scopes: ScopeNames, id: ScopeOwner, type: Type) -> None:
    """Add scopes to a credential."""
    def one(scope: str) -> None:
        session.client.call("PUT", f"{_path(type, id)}/scopes/{segment(scope)}")
        session.ok(f"Scope {scope} added to {id}")
    session.each(scopes, one)


@verb(credential_scopes, "remove", "rm")
def remove_scopes(session: Session, scopes: ScopeNames, id: ScopeOwner, type: Type) -> None:
    """Remove scopes from a credential."""
    def one(scope: str) -> None:
        session.client.call("DELETE", f"{_path(type, id)}/scopes/{segment(scope)}")
        session.ok(f"Scope {scope} removed from {id}")
    session.each(scopes, one)


@verb(credential_scopes, "set")
def set_scopes(session: Session, scopes: ScopeNames, id: ScopeOwner, type: Type) -> None:
    """Replace the scopes of a credential."""
    session.client.call("PUT", f"{_path(type, id)}/scopes", {"scopes": scopes})
    session.ok(f"Scopes {','.join(scopes)} set for {id}")


# -- scopes ------------------------------------------------------------------------------
@verb(scopes, "create")
def create_scopes(session: Session, scope: ScopeNames) -> None:
    """Create scopes."""
    session.client.call("POST", "/scopes", {"scopes": scope})
    if session.quiet:
        for name in scope:
            session.out(name)
    else:
        session.ok(f"Created {','.join(scope)}")


@verb(scopes, "info")
def scope_info(session: Session, scope: Annotated[str, typer.Argument(
        help="Scope", show_default=False)]) -> None:
    """Show a single scope (fails if it does not exist)."""
    found = session.client.call("GET", f"/scopes/{segment(scope)}")
    session.out(str(found.get("scope", scope)) if isinstance(found, dict) else scope)


@verb(scopes, "list")
def list_scopes(session: Session, json_output: AsJson = False) -> None:
    """List scopes."""
    answer = session.client.call("GET", "/scopes")
    found = answer.get("scopes") if isinstance(answer, dict) else answer
    names = [str(s) for s in (found or [])]
    if session.quiet:
        for name in names:
            session.out(name)
    elif json_output:
        session.out_json(names)
    elif not names:
        session.out("You have no scopes")
    else:
        session.table([{"scope": n} for n in names], ["scope"])


@verb(scopes, "remove", "rm")
def remove_scopes_cmd(session: Session, scope: ScopeNames) -> None:
    """Remove scopes."""
    def one(name: str) -> None:
        session.client.call("DELETE", f"/scopes/{segment(name)}")
        if session.quiet:
            session.out(name)
        else:
            session.ok(f"Removed {name}")
    session.each(scope, one)


# -- tokens ------------------------------------------------------------------------------
@verb(tokens, "revoke")
def revoke_tokens(session: Session, tokens: Tokens) -> None:
    """Revoke OAuth2 access or refresh tokens."""
    def one(token: str) -> None:
        session.client.call("DELETE", f"/tokens/{segment(token)}")
        if session.quiet:
            session.out(token)
        else:
            session.ok(f"Access token has been revoked: {token}")
    session.each(tokens, one)
