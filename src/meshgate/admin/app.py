"""The Admin API application (FastAPI) served by the master on the admin port.

``GET /ready`` (200 once every worker listens, 503 otherwise), ``GET
/metrics`` (Prometheus text, summed over all workers at scrape time) and
``GET /clusters`` (endpoints per serviceEndpoint, as Envoy's admin names it:
discovery and health checks from the master, ejections and load from each
worker). The Express Gateway Admin API routes mount here too.
"""

from __future__ import annotations

from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from meshgate.admin import config_api, consumers
from meshgate.admin.adminkey import OPEN_PATHS
from meshgate.admin.guard import JSON_TYPES, YAML_TYPES, install_guard
from meshgate.server.embed import EmbeddedServer
from meshgate.telemetry.metrics import Collector


class Supervisor(Protocol):
    """What the admin API needs from the master process."""

    config: Any     # the LoadedConfig being served

    def is_ready(self) -> bool: ...

    async def collect_metrics(self) -> dict[str, Any]: ...

    async def collect_clusters(self) -> dict[str, Any]: ...

    def reload(self) -> bool: ...


def create_admin_app(master: Supervisor) -> FastAPI:
    app = FastAPI(title="meshgate Admin API", version="1")

    @app.get("/ready", responses={503: {"description": "A worker is not listening yet"}})
    async def ready() -> JSONResponse:
        ok = master.is_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response, responses={200: {
        "description": "Prometheus text exposition",
        "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        data = await master.collect_metrics()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(lambda: data))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/clusters")
    async def clusters() -> JSONResponse:
        """Every serviceEndpoint's endpoints: discovery, health checks, and each
        worker's view (outlier ejections, requests in flight, responses, errors)."""
        return JSONResponse(await master.collect_clusters())

    routes: list[BaseRoute] = list(app.router.routes)
    for module in (consumers, config_api):
        router = module.router(master)
        routes += router.routes
        app.include_router(router)

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's answer, but a 405 lists every method of the path (RFC 9110
        15.5.6): each method is a route of its own, and Starlette names only one."""
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code != 405:
            return await http_exception_handler(request, exc)
        methods: set[str] = set()
        for route in routes:
            if route.matches(request.scope)[0] != Match.NONE:
                methods |= getattr(route, "methods", None) or set()
        return JSONResponse({"error": "Method Not Allowed"}, status_code=405,
                            headers={"Allow": ", ".join(sorted(methods))})

    app.add_exception_handler(StarletteHTTPException, http_error)
    return app


def guard_admin(app: FastAPI, master: Supervisor) -> None:
    """Keep browsers off the Admin API (``guard``): the names it answers to are
    ``admin.host`` and ``admin.hosts`` of the config being served (reloads too)."""
    def names() -> list[str]:
        admin = master.config.gateway.admin
        return [admin.host, *admin.hosts] if admin is not None else []

    install_guard(app, names, accept=(*JSON_TYPES, *YAML_TYPES), open_paths=OPEN_PATHS,
                  hint="list the names the Admin API answers to in admin.hosts "
                       "of gateway.config.yml")


def admin_server(app: FastAPI, host: str, port: int) -> EmbeddedServer:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            lifespan="off", access_log=False)
    return EmbeddedServer(config)
