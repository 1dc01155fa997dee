"""Express Gateway's config routes: /api-endpoints, /service-endpoints, /pipelines, ...

Theory of operation
-------------------
Routes, verbs and status codes are EG's (``lib/rest/routes``):

* ``/api-endpoints``, ``/service-endpoints``, ``/pipelines``: ``GET`` lists
  the section (name -> definition), ``GET /:name`` one entry (404 if none),
  ``PUT /:name`` creates (201) or replaces (204) it with the JSON body,
  ``DELETE /:name`` removes it (204; 404 if none);
* ``/policies``: ``GET`` the whitelist, ``PUT /:name`` adds a name (200
  ``{"status": "ok"}``), ``DELETE /:name`` removes it (204);
* ``/schemas``, ``/schemas/:param``: see ``admin.schemas``.

A change goes through ``ConfigEditor.change`` under one ``asyncio.Lock``, so
concurrent requests apply one after the other, each on the file the previous
one wrote:

1. read the running gateway config file (``config_file.read_document``);
2. edit that one entry in the text (``config_file``: everything else in the
   file, ``${VAR}`` placeholders and comments included, stays as written);
3. validate the whole new text with the loader (``parse_gateway``, the code
   ``meshgate run`` uses): an invalid result is a 422 whose message names
   each offending field, e.g. ``pipelines.p.policies[0].proxy.action.
   serviceEndpoint: unknown serviceEndpoint 'x'``, and nothing is written;
4. write it atomically (temporary file + rename) and call
   ``master.reload()``, which re-reads the file and tells every worker to
   swap in the new Snapshot -- no restart, no dropped connection. Should the
   reload fail even so (the system file broke meanwhile), the old text is put
   back and the answer is a 500.

GET answers from the running config (``master.config``): the sections as
written in the file (after substitution), like EG, when the file still holds
the running config; the normalised model otherwise (the file was changed on
disk and not yet, or not validly, reloaded).

Bodies are JSON whatever their Content-Type (YAML if it says ``yaml``); a
missing or malformed body is a 400 -- EG answered those with a 500. Errors
are ``{"error": message}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from meshgate.admin import schemas
from meshgate.admin.config_file import (
    Document,
    add_item,
    delete_entry,
    read_document,
    remove_item,
    set_entry,
    write_atomic,
)
from meshgate.admin.openapi import ENTRY, doc
from meshgate.config.loader import ConfigError, load_system_file, parse_gateway

# URL prefix -> (config section, noun used in messages)
SECTIONS = {
    "api-endpoints": ("apiEndpoints", "apiEndpoint"),
    "service-endpoints": ("serviceEndpoints", "serviceEndpoint"),
    "pipelines": ("pipelines", "pipeline"),
}

Handler = Callable[..., Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message}, status_code=self.status)


def reason(exc: ConfigError) -> str:
    """Every error of a rejected change as ``field: message``, without file or line."""
    return "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in exc.errors)


class ConfigEditor:
    """Reads the running config; applies changes one at a time (see the module doc)."""

    def __init__(self, master: Any) -> None:
        self.master = master
        self.lock = asyncio.Lock()
        self._cache: tuple[Any, tuple[int, ...] | None, dict[str, Any]] | None = None

    def running(self) -> dict[str, Any]:
        """The running gateway config by section (see the module doc)."""
        config = self.master.config
        path = config.gateway_path
        try:
            st = path.stat()
            stamp: tuple[int, ...] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if self._cache and self._cache[0] is config and stamp and self._cache[1] == stamp:
            return self._cache[2]
        data: dict[str, Any] | None = None
        with contextlib.suppress(ConfigError):
            doc = read_document(path)
            if parse_gateway(doc.text, file=str(path)) == config.gateway:
                data = doc.data
        if data is None:
            data = config.gateway.model_dump(mode="json", by_alias=True, exclude_unset=True)
        self._cache = (config, stamp, data)
        return data

    async def change(self, edit: Callable[[Document], str]) -> None:
        """Apply ``edit`` to the file; ApiError (4xx/5xx) when it cannot be applied."""
        async with self.lock:
            config = self.master.config
            path = config.gateway_path
            try:
                doc = read_document(path)
            except ConfigError as exc:
                raise ApiError(422, f"the config file cannot be edited: {exc}") from None
            text = edit(doc)
            if text == doc.text:
                return
            try:
                parse_gateway(text, file=path.name)
            except ConfigError as exc:
                raise ApiError(422, reason(exc)) from None
            if config.system_path is not None:
                try:
                    load_system_file(config.system_path)
                except ConfigError as exc:
                    raise ApiError(422, f"cannot reload: {exc}") from None
            try:
                write_atomic(path, text)
            except OSError as exc:
                raise ApiError(500, f"cannot write {path}: {exc.strerror or exc}") from None
            if not self.master.reload():
                with contextlib.suppress(OSError):
                    write_atomic(path, doc.text)
                raise ApiError(500, "the gateway did not accept the new config (see its log); "
                                    "the change was reverted")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_body(request: Request) -> Any:
    """The request body as JSON (or YAML); ApiError 400 if missing or malformed."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "expected a JSON body")
    try:
        if "yaml" in request.headers.get("content-type", ""):
            return yaml.safe_load(raw)
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, yaml.YAMLError) as exc:
        raise ApiError(400, f"malformed request body: {exc}") from None


def _guarded(handler: Handler) -> Handler:
    """Turn an ApiError raised by ``handler`` into its JSON response."""
    @functools.wraps(handler)       # FastAPI reads the parameters through __wrapped__
    async def run(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except ApiError as exc:
            return exc.response()
    return run


def _add(api: APIRouter, path: str, handler: Handler, method: str,
         trailing_slash: bool = False, **documented: Any) -> None:
    guarded = _guarded(handler)
    api.add_api_route(path, guarded, methods=[method], **documented)
    if trailing_slash:      # EG's own client lists with a trailing slash
        api.add_api_route(path + "/", guarded, methods=[method], include_in_schema=False,
                          **documented)


def _mount_section(api: APIRouter, editor: ConfigEditor, prefix: str) -> None:
    section, noun = SECTIONS[prefix]

    def entries() -> dict[str, Any]:
        value = editor.running().get(section)
        return value if isinstance(value, dict) else {}

    async def list_all() -> Response:
        return JSONResponse(entries())

    async def get_one(name: str) -> Response:
        found = entries()
        if name not in found:
            raise ApiError(404, f"no {noun} named {name!r}")
        return JSONResponse(found[name])

    async def put_one(name: str, request: Request) -> Response:
        body = await read_body(request)
        created = False

        def edit(doc: Document) -> str:
            nonlocal created
            existing = doc.data.get(section)
            created = not (isinstance(existing, dict) and name in existing)
            return set_entry(doc, section, name, body)

        await editor.change(edit)
        return Response(status_code=201 if created else 204)

    async def delete_one(name: str) -> Response:
        def edit(doc: Document) -> str:
            existing = doc.data.get(section)
            if not (isinstance(existing, dict) and name in existing):
                raise ApiError(404, f"no {noun} named {name!r}")
            return delete_entry(doc, section, name)

        await editor.change(edit)
        return Response(status_code=204)

    _add(api, f"/{prefix}", list_all, "GET", trailing_slash=True, **doc(200))
    _add(api, f"/{prefix}/{{name}}", get_one, "GET", **doc(200, [404]))
    # 201 created, 204 replaced: documented as 201 with 204 beside it
    put = doc(201, [400, 422], body=ENTRY, empty=True)
    put["responses"][204] = {"description": "Replaced"}
    _add(api, f"/{prefix}/{{name}}", put_one, "PUT", **put)
    _add(api, f"/{prefix}/{{name}}", delete_one, "DELETE", **doc(204, [404, 422]))


def _mount_policies(api: APIRouter, editor: ConfigEditor) -> None:
    async def list_all() -> Response:
        value = editor.running().get("policies")
        return JSONResponse(value if isinstance(value, list) else [] if value is None
                            else [value])

    async def put_one(name: str) -> Response:
        await editor.change(lambda doc: add_item(doc, "policies", name))
        return JSONResponse({"status": "ok"})

    async def delete_one(name: str) -> Response:
        await editor.change(lambda doc: remove_item(doc, "policies", name))
        return Response(status_code=204)

    _add(api, "/policies", list_all, "GET", trailing_slash=True, **doc(200))
    _add(api, "/policies/{name}", put_one, "PUT", **doc(200, [422]))
    _add(api, "/policies/{name}", delete_one, "DELETE", **doc(204, [422]))


def _mount_schemas(api: APIRouter) -> None:
    async def list_all() -> Response:
        return JSONResponse(schemas.find(None))

    async def find(param: str) -> Response:
        found = schemas.find(param)
        if found is None:
            raise ApiError(404, f"no schema {param!r}; give a type ({', '.join(schemas.TYPES)}),"
                                " a name or an $id")
        return JSONResponse(found)

    _add(api, "/schemas", list_all, "GET", trailing_slash=True, **doc(200))
    _add(api, "/schemas/{param:path}", find, "GET", **doc(200, [404]))


def router(master: Any) -> APIRouter:
    api = APIRouter()
    editor = ConfigEditor(master)
    for prefix in SECTIONS:
        _mount_section(api, editor, prefix)
    _mount_policies(api, editor)
    _mount_schemas(api)
    return api
