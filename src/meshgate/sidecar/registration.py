"""A sidecar keeps its instance registered only while the local app is up.

Theory of operation
-------------------
The master of a sidecar checks the local app (``appHealthPath``: an HTTP GET
that must answer 2xx/3xx; without it, a TCP connect) every
``appHealthInterval``, with the same ``HealthChecker`` the clusters use. The
instance is registered (and heartbeated, see ``registry.client``) only while
the app passes: when it fails twice in a row -- the app crashed, was
SIGKILLed, hangs -- the sidecar deregisters at once, so callers stop
choosing it within a watch round trip rather than a TTL; when the app passes
again it registers again. An app that is not up yet when the sidecar starts
is registered as soon as its first check passes.

``stop()`` (SIGTERM) deregisters before the sidecar drains.

The instance's metadata says ``protocol: h2c`` while the inbound port takes
HTTP/2 by prior knowledge (``server.http2.enabled``, the default): other
sidecars then send their calls to it as streams over a few connections
(``sidecar.outbound``), and fall back to HTTP/1.1 for instances without it.

Registry calls carry the join token (``tokenFile``, else
``$MESHGATE_JOIN_TOKEN``); "registered" is logged only once the registry
accepted the instance, and a refusal (no or wrong token, a cap) is logged
once as an error by the client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meshgate.config.mesh import HealthCheck, SidecarConfig
from meshgate.discovery import EndpointSpec
from meshgate.registry.client import Registration, RegistryClient
from meshgate.registry.tokens import client_token
from meshgate.upstream.health import HealthChecker

log = logging.getLogger("meshgate.sidecar")


class InstanceRegistration:
    def __init__(self, side: SidecarConfig, registry_url: str, h2c: bool = True) -> None:
        self.side = side
        self.client = RegistryClient(registry_url, token=client_token(side.tokenFile))
        fields: dict[str, Any] = {"ttl": side.ttl, "zone": side.zone,
                                  "version": side.version, "tags": side.tags}
        metadata: dict[str, str] = {}
        if side.weight != 1:
            metadata["weight"] = str(side.weight)
        if h2c:
            metadata["protocol"] = "h2c"
        fields["metadata"] = metadata
        self.registration = Registration(self.client, side.service, side.instanceId,
                                         side.address, side.inboundPort, **fields)
        check = HealthCheck.model_validate({
            "type": "http" if side.appHealthPath else "tcp",
            "path": side.appHealthPath or "/",
            "interval": side.appHealthInterval, "timeout": side.appHealthInterval,
            "healthyThreshold": 1, "unhealthyThreshold": 2})
        self.app = EndpointSpec(host=side.appHost, port=side.appPort)
        self.checker = HealthChecker(side.service, check, self._changed)
        self.checker.set_targets([self.app])
        self.registered = False
        self.pending: asyncio.Task[None] | None = None

    @property
    def service(self) -> str:
        return self.side.service

    @property
    def instance_id(self) -> str:
        return self.side.instanceId

    async def start(self) -> None:
        await self.checker.start()

    def _changed(self) -> None:
        up = self.checker.is_healthy(self.app.key)
        previous = self.pending

        async def apply() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            if up and not self.registered:
                await self.registration.start()
                self.registered = True
                if self.registration.registered.is_set():
                    log.info("app is up: registered %s/%s", self.service, self.instance_id)
                else:
                    log.warning("app is up; %s/%s is not registered yet (%s); retrying",
                                self.service, self.instance_id,
                                self.registration.refused or "registry unreachable")
            elif not up and self.registered:
                self.registered = False
                await self.registration.stop(deregister=True)
                log.warning("app is down: deregistered %s/%s", self.service, self.instance_id)

        self.pending = asyncio.get_running_loop().create_task(apply())

    def offer_h2c(self, h2c: bool) -> None:
        """A reload turned the inbound port's HTTP/2 on or off: tell the registry."""
        metadata = self.registration.body["metadata"]
        if h2c == ("protocol" in metadata):
            return
        if h2c:
            metadata["protocol"] = "h2c"
        else:
            del metadata["protocol"]
        if self.registered:
            self.registration.registered.clear()     # registered again with the new metadata
            log.info("inbound HTTP/2 %s: registering %s/%s again", "on" if h2c else "off",
                     self.service, self.instance_id)

    async def stop(self) -> None:
        await self.checker.stop()
        if self.pending is not None:
            await asyncio.gather(self.pending, return_exceptions=True)
        if self.registered:
            self.registered = False
            await self.registration.stop(deregister=True)
        await self.client.close()
