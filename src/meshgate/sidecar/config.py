"""Turn a config folder (or none) into a sidecar's config.

Theory of operation
-------------------
``meshgate sidecar`` runs the same master and workers as ``meshgate run``;
what differs is the config, rewritten by ``apply_sidecar`` after every load
(so a reload of the user's files keeps the sidecar parts):

* ``sidecar`` is set from the command line (the workers open the outbound
  listener from it, the master registers the instance);
* the ``http`` listener is the inbound port, unless the folder sets one
  (then the folder's port is the one registered);
  the Admin API (``/metrics``, ``/clusters``) listens on ``adminPort`` when
  given and the folder has no ``admin`` section;
* a serviceEndpoint ``local`` points at the app (``appHost:appPort``),
  spoken to in ``appProtocol`` (HTTP/1.1, or h2c for a gRPC server);
* with no pipelines in the folder, one pipeline ``inbound`` proxies every
  request to ``local``, WebSocket included (a sidecar is transparent) -- so
  a sidecar needs no config at all. A folder's own
  pipelines (auth, rate limits, faults ...) serve inbound traffic instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from meshgate.config.loader import LoadedConfig
from meshgate.config.mesh import SidecarConfig
from meshgate.config.model import (
    AdminConfig,
    ApiEndpoint,
    HttpConfig,
    Pipeline,
    ServiceEndpoint,
)

LOCAL = "local"


def apply_sidecar(loaded: LoadedConfig, side: SidecarConfig) -> LoadedConfig:
    gw = loaded.gateway
    update: dict[str, Any] = {"sidecar": side}
    if gw.http is None:
        update["http"] = HttpConfig(port=side.inboundPort, hostname=side.bind)
    elif gw.http.port != side.inboundPort:
        side = side.model_copy(update={"inboundPort": gw.http.port})
        update["sidecar"] = side
    if gw.admin is None and side.adminPort is not None:
        update["admin"] = AdminConfig.model_validate({"port": side.adminPort, "host": side.bind})
    services = dict(gw.serviceEndpoints)
    services.setdefault(LOCAL, ServiceEndpoint.model_validate(
        {"url": f"http://{side.appHost}:{side.appPort}", "protocol": side.appProtocol}))
    update["serviceEndpoints"] = services
    if not gw.pipelines:
        update["apiEndpoints"] = {**gw.apiEndpoints,
                                  "inbound": [ApiEndpoint.model_validate({"paths": ["/*"]})]}
        update["pipelines"] = {"inbound": Pipeline.model_validate({
            "apiEndpoints": ["inbound"],
            "policies": [{"proxy": [{"action": {"serviceEndpoint": LOCAL, "websocket": True}}]}]})}
        update["policies"] = sorted({*gw.policies, "proxy"})
    return dataclasses.replace(loaded, gateway=gw.model_copy(update=update))
