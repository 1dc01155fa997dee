"""Express Gateway's consumer routes: /users, /apps, /credentials, /scopes, /tokens.

Theory of operation
-------------------
The paths, bodies and status codes are EG's (``lib/rest/routes``), so the
``eg`` CLI and scripts written for EG work unchanged, trailing slash or not.
Handlers are thin: parse, call the store (``meshgate.store``), shape EG's
answer. The store is opened from the master's config on first use and kept
on ``master.store`` (the master closes it).

Errors never become 500s:

* 404 and 409 carry EG's own plain-text messages (``User not found: bob``,
  ``username already exists``...), as EG sent them;
* a body that is not JSON, or not a JSON object, is a 400 and any other
  invalid input (missing or mistyped fields, unknown credential type or
  property, unknown scope) a 422, both as ``{"error": "<message>"}``.

Where EG answered a 500 for a plain mistake (a key id already taken, a
second active basic-auth credential) meshgate answers 409 or 422. A store
that cannot be reached (Redis down) is a 503.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError

from meshgate.admin.openapi import (
    CREDENTIAL,
    OBJECT,
    SCOPES,
    STATUS,
    credential_type,
    doc,
    model_body,
)
from meshgate.store import Conflict, Invalid, NotFound, Store, StoreError, open_store
from meshgate.store.model import (
    DEFAULT_APP_MODEL,
    DEFAULT_USER_MODEL,
    PropertyModel,
)

log = logging.getLogger("meshgate.admin")
CredentialType = Annotated[str, credential_type()]


class BadBody(Exception):
    """The request body is not a JSON object."""


class _Route(APIRoute):
    """Turns store refusals and bad bodies into EG-style answers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except BadBody as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except NotFound as exc:
                return PlainTextResponse(str(exc), status_code=404)
            except Conflict as exc:
                return PlainTextResponse(str(exc), status_code=409)
            except (Invalid, StoreError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=422)
            except (OSError, RedisError, sqlite3.Error) as exc:
                log.error("consumer store unavailable: %s", exc)
                return JSONResponse({"error": f"the consumer store is unavailable: {exc}"},
                                    status_code=503)

        return guarded


async def body_of(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadBody(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadBody("the body must be a JSON object")
    return data


def status_of(body: dict[str, Any]) -> bool:
    value = body.get("status")
    if not isinstance(value, bool):
        raise Invalid("status must be true or false")
    return value


def page_of(request: Request) -> tuple[int, int]:
    """EG's ``start`` (a cursor, 0 first) and ``count`` (default 100) query parameters."""
    def number(name: str, default: int, low: int, high: int) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise Invalid(f"{name} must be an integer from {low} to {high}")
        return int(raw)
    return number("start", 0, 0, 2**63 - 1), number("count", 100, 1, 10000)


def text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise Invalid(f"{name} is required (a non-empty string)")
    return value


def router(master: Any) -> APIRouter:
    api = APIRouter(route_class=_Route)

    def store() -> Store:
        current: Store | None = getattr(master, "store", None)
        if current is None:
            current = open_store(master.config)
            master.store = current
        return current

    def route(method: str, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        """Register ``path`` with and without a trailing slash, as Express matches."""
        def register(fn: Any) -> Any:
            api.add_api_route(path, fn, methods=[method], **kwargs)
            api.add_api_route(path + "/", fn, methods=[method], include_in_schema=False,
                              **kwargs)
            return fn
        return register

    directory = getattr(getattr(master, "config", None), "directory", None)
    folder = Path(directory) if directory is not None else None
    _users(route, store, PropertyModel.load(folder, "users.json", DEFAULT_USER_MODEL))
    _apps(route, store, PropertyModel.load(folder, "applications.json", DEFAULT_APP_MODEL))
    _credentials(route, store)
    _scopes(route, store)

    @route("DELETE", "/tokens/{token}", **doc(200, text_errors=[404]))
    async def revoke_token(token: str) -> Response:
        if not await store().revoke_token(token):
            raise NotFound(f"token not found: {token}")
        return JSONResponse({"status": "Revoked"})

    return api


Route = Callable[..., Callable[[Any], Any]]


def _page(noun: str) -> dict[str, Any]:
    return {"type": "object", "properties": {noun: {"type": "array", "items": OBJECT},
                                             "nextKey": {"type": "integer"}}}
Opener = Callable[[], Store]


def _users(route: Route, store: Opener, model: PropertyModel) -> None:
    @route("GET", "/users", **doc(200, [422], ok_schema=_page("users")))
    async def list_users(request: Request) -> Response:
        start, count = page_of(request)
        users, next_key = await store().list_users(start, count)
        return JSONResponse({"users": users, "nextKey": next_key})

    @route("POST", "/users", **doc(200, [400, 422], text_errors=[409],
                                   body=model_body(model, creating=True)))
    async def create_user(request: Request) -> Response:
        return JSONResponse(await store().create_user(await body_of(request)))

    @route("GET", "/users/{ref}", **doc(200, text_errors=[404]))
    async def get_user(ref: str) -> Response:
        user = await store().find_user(ref)
        if user is None:
            raise NotFound(f"User not found: {ref}")
        return JSONResponse(user)

    # The username cannot change: a new one is ignored, as EG did.
    ignored = {"username": {"description": "Ignored: a username cannot change"}}

    @route("PUT", "/users/{ref}", **doc(200, [400, 422], text_errors=[404],
                                        body=model_body(model, creating=False, extra=ignored),
                                        body_required=False))
    async def update_user(ref: str, request: Request) -> Response:
        return JSONResponse(await store().update_user(ref, await body_of(request)))

    @route("DELETE", "/users/{ref}", **doc(204, text_errors=[404]))
    async def delete_user(ref: str) -> Response:
        await store().remove_user(ref)
        return Response(status_code=204)

    @route("PUT", "/users/{ref}/status", **doc(200, [400, 422], text_errors=[404],
                                               body=STATUS))
    async def user_status(ref: str, request: Request) -> Response:
        active = status_of(await body_of(request))
        return JSONResponse({"status": await store().set_user_status(ref, active)})


def _apps(route: Route, store: Opener, model: PropertyModel) -> None:
    owner = {"userId": {"type": "string", "minLength": 1,
                        "description": "The owner's id or username"}}

    @route("GET", "/apps", **doc(200, [422], ok_schema=_page("apps")))
    async def list_apps(request: Request) -> Response:
        start, count = page_of(request)
        apps, next_key = await store().list_apps(start, count)
        return JSONResponse({"apps": apps, "nextKey": next_key})

    @route("POST", "/apps", **doc(200, [400, 422], text_errors=[404, 409], body=model_body(
        model, creating=True, extra=owner, required=["userId"])))
    async def create_app(request: Request) -> Response:
        body = await body_of(request)
        owner = body.pop("userId", None)
        if not isinstance(owner, str) or not owner:
            raise Invalid("userId is required (the owner's id or username)")
        return JSONResponse(await store().create_app(body, owner))

    @route("GET", "/apps/{ref}", **doc(200, text_errors=[404, 409]))
    async def get_app(ref: str) -> Response:
        app = await store().find_app(ref)
        if app is None:
            raise NotFound(f"Application not found: {ref}")
        return JSONResponse(app)

    @route("PUT", "/apps/{ref}", **doc(200, [400, 422], text_errors=[404, 409],
                                       body=model_body(model, creating=False),
                                        body_required=False))
    async def update_app(ref: str, request: Request) -> Response:
        return JSONResponse(await store().update_app(ref, await body_of(request)))

    @route("DELETE", "/apps/{ref}", **doc(204, text_errors=[404, 409]))
    async def delete_app(ref: str) -> Response:
        await store().remove_app(ref)
        return Response(status_code=204)

    @route("PUT", "/apps/{ref}/status", **doc(200, [400, 422], text_errors=[404, 409],
                                              body=STATUS))
    async def app_status(ref: str, request: Request) -> Response:
        active = status_of(await body_of(request))
        return JSONResponse({"status": await store().set_app_status(ref, active)})


def _credentials(route: Route, store: Opener) -> None:
    @route("GET", "/credentials", **doc(200))
    async def all_credentials() -> Response:
        return JSONResponse({"credentials": await store().all_credentials()})

    @route("POST", "/credentials", **doc(200, [400, 422], text_errors=[404, 409],
                                         body=CREDENTIAL))
    async def create_credential(request: Request) -> Response:
        body = await body_of(request)
        consumer = text_field(body, "consumerId")
        details = body.get("credential")
        if details is not None and not isinstance(details, dict):
            raise Invalid("credential must be a JSON object")
        return JSONResponse(await store().create_credential(consumer, body.get("type"),
                                                            details))

    @route("GET", "/credentials/{type_}/{id_}", **doc(200, [422], text_errors=[404]))
    async def get_credential(type_: CredentialType, id_: str) -> Response:
        credential = await store().get_credential(type_, id_)
        if credential is None:
            raise NotFound(f"No credential found with id: {id_}")
        return JSONResponse(credential)

    @route("DELETE", "/credentials/{type_}/{id_}", **doc(204, [422], text_errors=[404]))
    async def delete_credential(type_: CredentialType, id_: str) -> Response:
        if not await store().remove_credential(type_, id_):
            raise NotFound(f"No credential found with id: {id_}")
        return Response(status_code=204)

    @route("PUT", "/credentials/{type_}/{id_}/status",
           **doc(200, [400, 422], text_errors=[404, 409], body=STATUS))
    async def credential_status(type_: CredentialType, id_: str, request: Request) -> Response:
        active = status_of(await body_of(request))
        return JSONResponse({"status": await store().set_credential_status(type_, id_, active)})

    @route("PUT", "/credentials/{type_}/{id_}/scopes/{scope}",
           **doc(204, [422], text_errors=[404]))
    async def add_scope(type_: CredentialType, id_: str, scope: str) -> Response:
        await store().add_credential_scopes(type_, id_, [scope])
        return Response(status_code=204)

    @route("DELETE", "/credentials/{type_}/{id_}/scopes/{scope}",
           **doc(204, [422], text_errors=[404]))
    async def remove_scope(type_: CredentialType, id_: str, scope: str) -> Response:
        await store().remove_credential_scopes(type_, id_, [scope])
        return Response(status_code=204)

    @route("PUT", "/credentials/{type_}/{id_}/scopes",
           **doc(204, [400, 422], text_errors=[404], body=SCOPES))
    async def set_scopes(type_: CredentialType, id_: str, request: Request) -> Response:
        body = await body_of(request)
        if "scopes" not in body:
            raise Invalid("scopes is required (a list of scope names)")
        await store().set_credential_scopes(type_, id_, body["scopes"])
        return Response(status_code=204)

    @route("GET", "/credentials/{consumer}", **doc(200, text_errors=[404, 409]))
    async def consumer_credentials(consumer: str) -> Response:
        return JSONResponse({"credentials": await store().list_credentials(consumer)})


def _scopes(route: Route, store: Opener) -> None:
    @route("GET", "/scopes", **doc(200))
    async def list_scopes() -> Response:
        scopes = await store().list_scopes()
        return JSONResponse({"scopes": scopes or None})     # EG said null for none

    @route("POST", "/scopes", **doc(201, [400, 422], text_errors=[409], body=SCOPES,
                                    empty=True))
    async def create_scopes(request: Request) -> Response:
        body = await body_of(request)
        if "scopes" not in body:
            raise Invalid("scopes is required (a list of scope names)")
        await store().create_scopes(body["scopes"])
        return Response(status_code=201)

    @route("GET", "/scopes/{scope}", **doc(200, text_errors=[404]))
    async def get_scope(scope: str) -> Response:
        if not await store().has_scope(scope):
            raise NotFound(f"scope not found: {scope}")
        return JSONResponse({"scope": scope})

    @route("PUT", "/scopes/{scope}", **doc(201, [422], text_errors=[409], empty=True))
    async def put_scope(scope: str) -> Response:
        await store().create_scopes([scope])
        return Response(status_code=201)

    @route("DELETE", "/scopes/{scope}", **doc(204, text_errors=[404]))
    async def delete_scope(scope: str) -> Response:
        if not await store().remove_scope(scope):
            raise NotFound(f"scope not found: {scope}")
        return Response(status_code=204)
