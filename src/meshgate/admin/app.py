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
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from meshgate.admin import config_api, consumers
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

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok = master.is_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics")
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

    for module in (consumers, config_api):
        app.include_router(module.router(master))
    return app


def admin_server(app: FastAPI, host: str, port: int) -> EmbeddedServer:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            lifespan="off", access_log=False)
    return EmbeddedServer(config)
