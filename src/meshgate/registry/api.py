"""The registry's HTTP API (FastAPI): register, heartbeat, list, watch.

Theory of operation
-------------------
Routes (a contract clients and sidecars code against)::

    PUT    /v1/services/{service}/instances/{id}            register (body: InstanceSpec)
    PUT    /v1/services/{service}/instances/{id}/heartbeat  200 instance | 404
    DELETE /v1/services/{service}/instances/{id}            200 | 404
    GET    /v1/services                 {"index", "services": {name: [instance]}}
    GET    /v1/services/{service}       {"index", "service", "instances": [...]}
    GET    /v1/watch[/{service}]        server-sent events of the bodies above
    GET    /v1/health                   {"status": "ok"}
    POST   /v1/tokens                   {"service": S} | {"operator": true} -> the token, once
    GET    /v1/tokens                   {"tokens": [{id, service, operator, created, ...}]}
    DELETE /v1/tokens/{id}              revoke

Writes need a bearer token (see ``auth``): 401 without a valid one, 403 when
it is for another service; the token routes are the operator's. Reads need
one only with ``require_token_for_reads``. A request body over
``limits.max_body`` or metadata over ``limits.max_metadata`` is 413; a new
instance beyond the per-service or per-token cap is 429.

A store that cannot be reached (etcd down) answers 503. Reads carry
``X-Registry-Index``. ``?index=N&wait=30s`` makes a read a
blocking query (as Consul's): it answers once the index of what it reads
exceeds N, or after ``wait`` with the unchanged body. An ``index`` above the
registry's own means the registry lost its state: the answer is immediate,
so the client resyncs instead of hanging.

A watch stream sends ``event: snapshot`` with the current body at once and
again after every change (changes in a burst are coalesced: the watcher gets
the latest state), and a ``: keep-alive`` comment when nothing changed for
``keepalive`` seconds, which also reveals a dead client to the server. The
bodies are the stores' cached encodings (see ``base``), never re-encoded per
watcher.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshgate.etcdv3 import EtcdError
from meshgate.registry.auth import Limits, Principal, RegistryAuth
from meshgate.registry.base import BaseStore, InstanceSpec, check_name, dumps
from meshgate.registry.tokens import new_token

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
INDEX_HEADER = "X-Registry-Index"
_WAIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 0.001}


def parse_wait(text: str | None) -> float:
    """``"30s"``, ``"500ms"``, ``"1m"`` or a bare number of ms -> seconds (capped)."""
    if text is None or text == "":
        return DEFAULT_WAIT
    match = _WAIT.match(text)
    if match is None:
        raise ValueError(f"invalid wait {text!r}: expected e.g. 30s, 500ms, 1m or ms as a number")
    return min(float(match.group(1)) * _UNIT[match.group(2)], MAX_WAIT)


def _names(service: str, instance_id: str | None = None) -> None:
    try:
        check_name("service", service)
        if instance_id is not None:
            check_name("instance id", instance_id)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _json(body: bytes, index: int, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json",
                    headers={INDEX_HEADER: str(index)})


class TokenRequest(BaseModel):
    """The body of ``POST /v1/tokens``."""

    model_config = ConfigDict(extra="forbid")

    service: str | None = Field(None, description="The service a join token is for")
    operator: bool = Field(False, description="An operator token (every service, tokens)")
    description: str = Field("", max_length=255)


class BodyLimit:
    """413 for a request body over ``limit`` bytes, read before the app sees any of it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        body, more = b"", True
        if length.isdigit() and int(length) <= self.limit:
            while more and len(body) <= self.limit:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
        if more or len(body) > self.limit:
            await JSONResponse({"detail": f"request body over {self.limit} bytes"},
                               status_code=413)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def create_registry_app(store: BaseStore, auth: RegistryAuth, *, keepalive: float = 15.0,
                        limits: Limits | None = None) -> FastAPI:
    caps = limits or Limits()
    app = FastAPI(title="meshgate registry", version="1")
    app.add_middleware(BodyLimit, limit=caps.max_body)

    def writer(request: Request, service: str) -> Principal:
        auth.principal(request)         # 401 comes before any complaint about the request
        _names(service)
        return auth.writer(request, service)

    def operator(request: Request) -> Principal:
        return auth.operator(request)

    def reader(request: Request) -> None:
        auth.reader(request)

    # Defaults, not Annotated aliases: the annotations are strings resolved in the
    # module's namespace, where these closures do not live.
    as_writer, as_operator = Depends(writer), Depends(operator)
    reads = [Depends(reader)]

    def check_limits(service: str, instance_id: str, spec: InstanceSpec,
                     who: Principal) -> None:
        size = len(dumps(spec.metadata))
        if size > caps.max_metadata:
            raise HTTPException(413, f"instance metadata is {size} bytes serialized; "
                                     f"the limit is {caps.max_metadata}")
        if store.get(service, instance_id) is not None:
            return
        if store.count(service) >= caps.max_per_service:
            raise HTTPException(429, f"service {service!r} has {store.count(service)} "
                                     f"instances, the registry's limit per service")
        if not who.operator and store.count_registered_by(who.token_id) >= caps.max_per_token:
            raise HTTPException(429, f"token {who.token_id} has registered "
                                     f"{caps.max_per_token} instances, the limit per token")

    @app.exception_handler(EtcdError)
    async def unavailable(request: Request, exc: EtcdError) -> JSONResponse:
        return JSONResponse({"detail": f"registry store unavailable: {exc}"}, status_code=503)

    def instance_response(instance: dict[str, Any] | None, what: str) -> Response:
        if instance is None:
            raise HTTPException(404, f"unknown instance {what}")
        return _json(dumps(instance), store.service_index(instance["service"]))

    @app.put("/v1/services/{service}/instances/{instance_id}")
    async def register(service: str, instance_id: str, spec: InstanceSpec,
                       who: Principal = as_writer) -> Response:
        """Register (or replace) an instance; it counts as a heartbeat."""
        _names(service, instance_id)
        if spec.id not in (None, instance_id) or spec.service not in (None, service):
            raise HTTPException(422, "id/service in the body must match the path")
        check_limits(service, instance_id, spec, who)
        return instance_response(await store.register(service, instance_id, spec,
                                                      who.token_id),
                                 f"{service}/{instance_id}")

    @app.put("/v1/services/{service}/instances/{instance_id}/heartbeat")
    async def heartbeat(service: str, instance_id: str, who: Principal = as_writer) -> Response:
        """Renew the instance's ttl; 404 means register again."""
        _names(service, instance_id)
        return instance_response(await store.heartbeat(service, instance_id),
                                 f"{service}/{instance_id}")

    @app.delete("/v1/services/{service}/instances/{instance_id}")
    async def deregister(service: str, instance_id: str, who: Principal = as_writer) -> Response:
        _names(service, instance_id)
        if not await store.deregister(service, instance_id):
            raise HTTPException(404, f"unknown instance {service}/{instance_id}")
        return _json(b'{"deregistered":true}', store.service_index(service))

    async def blocking(service: str | None, index: int | None, wait: str | None) -> None:
        try:
            seconds = parse_wait(wait)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        if index is not None and 0 < index <= store.index:
            await store.wait_change(index, service, seconds)

    @app.get("/v1/services", dependencies=reads)
    async def list_services(index: int | None = Query(None, description="blocking query"),
                            wait: str | None = Query(None, description="30s, 500ms, 1m")
                            ) -> Response:
        """Every service and its instances."""
        await blocking(None, index, wait)
        current, body = store.encoded_all()
        return _json(body, current)

    @app.get("/v1/services/{service}", dependencies=reads)
    async def list_service(service: str,
                           index: int | None = Query(None, description="blocking query"),
                           wait: str | None = Query(None, description="30s, 500ms, 1m")
                           ) -> Response:
        """One service's instances (an empty list for an unknown service)."""
        _names(service)
        await blocking(service, index, wait)
        current, body = store.encoded_service(service)
        return _json(body, current)

    async def events(service: str | None) -> AsyncIterator[bytes]:
        index = -1
        while not store.closing:
            if store.service_index(service) != index:
                if service is None:
                    index, body = store.encoded_all()
                else:
                    index, body = store.encoded_service(service)
                yield b"event: snapshot\nid: %d\ndata: %b\n\n" % (index, body)
            elif not await store.wait_change(index, service, keepalive):
                yield b": keep-alive\n\n"

    def stream(service: str | None) -> StreamingResponse:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                   INDEX_HEADER: str(store.service_index(service))}
        return StreamingResponse(events(service), media_type="text/event-stream",
                                 headers=headers)

    @app.get("/v1/watch", dependencies=reads)
    async def watch_all() -> StreamingResponse:
        """Server-sent ``snapshot`` events of ``GET /v1/services``."""
        return stream(None)

    @app.get("/v1/watch/{service}", dependencies=reads)
    async def watch_service(service: str) -> StreamingResponse:
        """Server-sent ``snapshot`` events of ``GET /v1/services/{service}``."""
        _names(service)
        return stream(service)

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.post("/v1/tokens", status_code=201)
    async def create_token(body: TokenRequest, who: Principal = as_operator) -> JSONResponse:
        """A join token for one service, or an operator token: shown in this answer only."""
        if body.operator == (body.service is not None):
            raise HTTPException(422, "give either a service or operator: true")
        if body.service is not None:
            _names(body.service)
        record, token = new_token(body.service, body.description)
        await store.tokens.add(record)
        return JSONResponse({**record.public(), "token": token}, status_code=201)

    @app.get("/v1/tokens")
    async def list_tokens(who: Principal = as_operator) -> JSONResponse:
        """Every stored token (never the secret), with how many instances each registered."""
        return JSONResponse({"tokens": [
            {**r.public(), "instances": store.count_registered_by(r.id)}
            for r in store.tokens.records()]})

    @app.delete("/v1/tokens/{token_id}")
    async def revoke_token(token_id: str, who: Principal = as_operator) -> JSONResponse:
        """Revoke: the token stops working; its instances lapse at their ttl."""
        if not await store.tokens.remove(token_id):
            raise HTTPException(404, f"unknown token {token_id}")
        return JSONResponse({"revoked": token_id})

    return app
