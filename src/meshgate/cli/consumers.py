"""``meshgate users`` and ``meshgate apps``: EG's ``eg users|apps <verb>``, over the Admin API.

Verbs, flags and output are those of EG's ``bin/generators/users`` and
``apps``: ``create`` (``-p key=value``, ``--stdin``; apps need ``-u USER``),
``info``, ``list`` (``-a`` for every page), ``update`` (``-p``),
``activate``, ``deactivate`` and ``remove``/``rm`` (several ids at once).
``-q`` prints only ids (``list -q`` prints usernames for users, as ``eg``).
Unlike ``eg`` nothing prompts for missing fields: the Admin API's message
says what is missing, and the exit status is not 0.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meshgate.cli.admin_client import CliError, segment
from meshgate.cli.session import (
    All,
    AsJson,
    Property,
    Session,
    Stdin,
    parse_properties,
    read_stdin_objects,
    verb,
)

users = typer.Typer(help="Manage users", no_args_is_help=True)
apps = typer.Typer(help="Manage applications", no_args_is_help=True)

UserIds = Annotated[list[str], typer.Argument(help="User ids or usernames",
                                              show_default=False)]
UserId = Annotated[str, typer.Argument(help="User id or username", show_default=False)]
AppIds = Annotated[list[str], typer.Argument(help="Application ids", show_default=False)]
AppId = Annotated[str, typer.Argument(help="Application id", show_default=False)]
Owner = Annotated[str | None, typer.Option("--user", "-u",
                                           help="User id or username owning the app",
                                           show_default=False)]

USER_COLUMNS = ["id", "username", "firstname", "lastname", "email", "isActive", "createdAt"]
APP_COLUMNS = ["id", "name", "userId", "redirectUri", "isActive", "createdAt"]


# -- shared by both nouns --------------------------------------------------------------
def _list_pages(session: Session, path: str, key: str, every: bool) -> list[dict[str, Any]]:
    """One page, or every page following ``nextKey`` (0 means no more), as EG's client."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    seen: set[str] = set()
    while True:
        page = session.client.call("GET", path, params=params)
        items = page.get(key) if isinstance(page, dict) else page
        found.extend(i for i in (items or []) if isinstance(i, dict))
        next_key = page.get("nextKey") if isinstance(page, dict) else None
        if not every or next_key in (None, 0, "0", "") or str(next_key) in seen:
            return found
        seen.add(str(next_key))
        params = {"start": next_key}


def _set_status(session: Session, path: str, ids: list[str], active: bool) -> None:
    def one(item: str) -> None:
        result = session.client.call("PUT", f"{path}/{segment(item)}/status",
                                     {"status": active})
        status = result.get("status") if isinstance(result, dict) else None
        if session.quiet:
            session.out(item)
        else:
            session.ok(f"{status or ('Activated' if active else 'Deactivated')} {item}")
    session.each(ids, one)


def _remove(session: Session, path: str, ids: list[str]) -> None:
    def one(item: str) -> None:
        session.client.call("DELETE", f"{path}/{segment(item)}")
        if session.quiet:
            session.out(item)
        else:
            session.ok(f"Removed {item}")
    session.each(ids, one)


def _created(session: Session, created: Any, label: str, show: bool) -> None:
    record = created if isinstance(created, dict) else {}
    if session.quiet:
        session.out(str(record.get("id", "")))
        return
    session.ok(f"Created {record.get(label) or record.get('id', '')}")
    if show:
        session.out_json(created)


def _update(session: Session, path: str, noun: str, item: str,
            properties: list[str] | None) -> None:
    changes = parse_properties(properties)
    if not changes:
        raise CliError("nothing to update: give at least one -p key=value", 2)
    try:
        session.client.call("GET", f"{path}/{segment(item)}")
    except CliError as exc:
        raise CliError(f"{noun} not found: {item} ({exc.message})") from None
    updated = session.client.call("PUT", f"{path}/{segment(item)}", changes)
    if session.quiet:
        session.out(str(updated.get("id", item)) if isinstance(updated, dict) else item)
    else:
        session.ok(f"Updated {item}")


def _info(session: Session, path: str, item: str) -> None:
    found = session.client.call("GET", f"{path}/{segment(item)}")
    if session.quiet and isinstance(found, dict):
        session.out(str(found.get("id", item)))
    else:
        session.out_json(found)


# -- users ---------------------------------------------------------------------------------
@verb(users, "create")
def create_user(session: Session, property: Property = None, stdin: Stdin = False) -> None:
    """Create a user (-p username=jdoe -p firstname=Jane -p lastname=Doe, or --stdin)."""
    if stdin:
        session.each(read_stdin_objects(), lambda user: _created(
            session, session.client.call("POST", "/users", user), "username", show=False))
        return
    user = parse_properties(property)
    _created(session, session.client.call("POST", "/users", user), "id", show=True)


@verb(users, "info")
def user_info(session: Session, user_id: UserId) -> None:
    """Show details for a single user."""
    _info(session, "/users", user_id)


@verb(users, "list")
def list_users(session: Session, all: All = False, json_output: AsJson = False) -> None:
    """List users."""
    found = _list_pages(session, "/users", "users", all)
    if session.quiet:
        for user in found:
            session.out(str(user.get("username", user.get("id", ""))))
    elif json_output:
        session.out_json(found)
    elif not found:
        session.out("You have no users")
    else:
        session.table(found, USER_COLUMNS)


@verb(users, "update")
def update_user(session: Session, user_id: UserId, property: Property = None) -> None:
    """Update a user (-p firstname=John)."""
    _update(session, "/users", "User", user_id, property)


@verb(users, "activate")
def activate_users(session: Session, user_ids: UserIds) -> None:
    """Activate users."""
    _set_status(session, "/users", user_ids, True)


@verb(users, "deactivate")
def deactivate_users(session: Session, user_ids: UserIds) -> None:
    """Deactivate users."""
    _set_status(session, "/users", user_ids, False)


@verb(users, "remove", "rm")
def remove_users(session: Session, user_ids: UserIds) -> None:
    """Remove users."""
    _remove(session, "/users", user_ids)


# -- apps ----------------------------------------------------------------------------------
@verb(apps, "create")
def create_app(session: Session, user: Owner = None, property: Property = None,
               stdin: Stdin = False) -> None:
    """Create an application (-u jdoe -p name=mobile-app, or --stdin)."""
    if not stdin and not user:
        raise CliError("must include --stdin or -u, --user", 2)
    if stdin:
        objects = read_stdin_objects()
        for number, app in enumerate(objects, start=1):
            if not (app.get("user") or user):
                raise CliError(f"stdin object {number}: no \"user\" and no -u given", 2)

        def one(app: dict[str, Any]) -> None:
            owner = app.pop("user", None) or user
            _created(session, session.client.call("POST", "/apps", {**app, "userId": owner}),
                     "id", show=False)
        session.each(objects, one)
        return
    app = parse_properties(property)
    _created(session, session.client.call("POST", "/apps", {**app, "userId": user}),
             "id", show=True)


@verb(apps, "info")
def app_info(session: Session, app_id: AppId) -> None:
    """Show details for a single application."""
    _info(session, "/apps", app_id)


@verb(apps, "list")
def list_apps(session: Session, all: All = False, json_output: AsJson = False) -> None:
    """List applications."""
    found = _list_pages(session, "/apps", "apps", all)
    if session.quiet:
        for app in found:
            session.out(str(app.get("id", "")))
    elif json_output:
        session.out_json(found)
    elif not found:
        session.out("You have no apps")
    else:
        session.table(found, APP_COLUMNS)


@verb(apps, "update")
def update_app(session: Session, app_id: AppId, property: Property = None) -> None:
    """Update an application (-p name=new-name)."""
    _update(session, "/apps", "App", app_id, property)


@verb(apps, "activate")
def activate_apps(session: Session, app_ids: AppIds) -> None:
    """Activate applications."""
    _set_status(session, "/apps", app_ids, True)


@verb(apps, "deactivate")
def deactivate_apps(session: Session, app_ids: AppIds) -> None:
    """Deactivate applications."""
    _set_status(session, "/apps", app_ids, False)


@verb(apps, "remove", "rm")
def remove_apps(session: Session, app_ids: AppIds) -> None:
    """Remove applications."""
    _remove(session, "/apps", app_ids)
