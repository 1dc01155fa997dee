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

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from meshgate.etcdv3 import EtcdError
from meshgate.registry.base import BaseStore, InstanceSpec, check_name, dumps

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


def create_registry_app(store: BaseStore, *, keepalive: float = 15.0) -> FastAPI:
    app = FastAPI(title="meshgate registry", version="1")

    @app.exception_handler(EtcdError)
    async def unavailable(request: Request, exc: EtcdError) -> JSONResponse:
        return JSONResponse({"detail": f"registry store unavailable: {exc}"}, status_code=503)

    def instance_response(instance: dict[str, Any] | None, what: str) -> Response:
        if instance is None:
            raise HTTPException(404, f"unknown instance {what}")
        return _json(dumps(instance), store.service_index(instance["service"]))

    @app.put("/v1/services/{service}/instances/{instance_id}")
    async def register(service: str, instance_id: str, spec: InstanceSpec) -> Response:
        """Register (or replace) an instance; it counts as a heartbeat."""
        _names(service, instance_id)
        if spec.id not in (None, instance_id) or spec.service not in (None, service):
            raise HTTPException(422, "id/service in the body must match the path")
        return instance_response(await store.register(service, instance_id, spec),
                                 f"{service}/{instance_id}")

    @app.put("/v1/services/{service}/instances/{instance_id}/heartbeat")
    async def heartbeat(service: str, instance_id: str) -> Response:
        """Renew the instance's ttl; 404 means register again."""
        _names(service, instance_id)
        return instance_response(await store.heartbeat(service, instance_id),
                                 f"{service}/{instance_id}")

    @app.delete("/v1/services/{service}/instances/{instance_id}")
    async def deregister(service: str, instance_id: str) -> Response:
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

    @app.get("/v1/services")
    async def list_services(index: int | None = Query(None, description="blocking query"),
                            wait: str | None = Query(None, description="30s, 500ms, 1m")
                            ) -> Response:
        """Every service and its instances."""
        await blocking(None, index, wait)
        current, body = store.encoded_all()
        return _json(body, current)

    @app.get("/v1/services/{service}")
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

    @app.get("/v1/watch")
    async def watch_all() -> StreamingResponse:
        """Server-sent ``snapshot`` events of ``GET /v1/services``."""
        return stream(None)

    @app.get("/v1/watch/{service}")
    async def watch_service(service: str) -> StreamingResponse:
        """Server-sent ``snapshot`` events of ``GET /v1/services/{service}``."""
        _names(service)
        return stream(service)

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app
