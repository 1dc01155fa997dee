"""An async client of the registry API, and self-registration with heartbeats.

Theory of operation
-------------------
``RegistryClient`` maps each API route to a method over one
``httpx.AsyncClient``. Non-2xx answers raise ``RegistryError`` (with the
status), except the two that are answers rather than failures: a heartbeat
or deregistration of an unknown instance returns ``None`` / ``False``.

``watch(service)`` runs blocking queries (``?index=N&wait=...``) in a loop and
yields ``(index, instances)`` whenever the index moves (the first answer is
always yielded). A transport error or 5xx is retried with exponential backoff
(0.1 s doubling to 5 s, with jitter); an index that goes backwards (a
registry that lost its state) resets the loop rather than blocking forever.
``watch_all()`` does the same for every service.

``Registration`` keeps one instance registered: it registers, heartbeats
every ttl/3, registers again when a heartbeat gets 404 (the registry forgot
the instance, or it was removed while critical), retries through registry
outages, and deregisters on ``stop()``.

With a ``token`` every call carries ``Authorization: Bearer``. A registry
that refuses a registration or heartbeat (401/403: no, unknown or revoked
token, or one for another service; 413/422: an invalid instance; 429: a cap)
is logged once as an error naming the cause, then retried quietly with
backoff (a token may be created meanwhile); ``registered`` stays clear and
``refused`` holds the reason until the registry accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx

from meshgate.registry.base import DEFAULT_TTL_MS

log = logging.getLogger("meshgate.registry.client")
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
REFUSALS = {401: "the registry needs a valid token (--token-file, $MESHGATE_JOIN_TOKEN)",
            403: "the token may not write this service",
            413: "the instance is too large", 422: "the instance is invalid",
            429: "the registry's instance limit is reached"}


class RegistryError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _backoff(attempt: int) -> float:
    delay: float = min(BACKOFF_MAX, BACKOFF_START * 2 ** attempt)
    return delay * random.uniform(0.5, 1.0)


class RegistryClient:
    def __init__(self, base_url: str, *, timeout: float = 5.0, token: str | None = None
                 ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       headers=headers)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, path: str, *, allow_404: bool = False,
                    timeout: float | None = None, **kwargs: Any) -> httpx.Response | None:
        try:
            response = await self._http.request(
                method, path, timeout=timeout if timeout is not None else self.timeout,
                **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryError(f"registry {self.base_url} unreachable: {exc!r}") from exc
        if response.status_code == 404 and allow_404:
            return None
        if response.status_code >= 300:
            try:
                detail = response.json()["detail"]
            except (ValueError, KeyError, TypeError):
                detail = response.text
            raise RegistryError(f"{method} {path}: {response.status_code} {detail}",
                                response.status_code)
        return response

    @staticmethod
    def _instance_path(service: str, instance_id: str) -> str:
        return f"/v1/services/{service}/instances/{instance_id}"

    # -- writes --------------------------------------------------------------------

    async def register(self, service: str, instance_id: str, address: str, port: int,
                       **fields: Any) -> dict[str, Any]:
        """Register; ``fields`` are scheme, zone, version, tags, metadata, ttl (ms),
        deregisterCriticalAfter (ms). Returns the instance."""
        body = {"address": address, "port": port, **fields}
        response = await self._call("PUT", self._instance_path(service, instance_id), json=body)
        assert response is not None
        result: dict[str, Any] = response.json()
        return result

    async def heartbeat(self, service: str, instance_id: str) -> dict[str, Any] | None:
        """Renew the ttl; ``None`` when the registry does not know the instance."""
        path = self._instance_path(service, instance_id) + "/heartbeat"
        response = await self._call("PUT", path, allow_404=True)
        return None if response is None else dict(response.json())

    async def deregister(self, service: str, instance_id: str) -> bool:
        """Remove the instance; ``False`` when it was not registered."""
        path = self._instance_path(service, instance_id)
        return await self._call("DELETE", path, allow_404=True) is not None

    # -- reads ---------------------------------------------------------------------

    async def service(self, service: str, *, index: int | None = None,
                      wait: float | None = None) -> tuple[int, list[dict[str, Any]]]:
        """(index, instances) of ``service``; with ``index``, a blocking query."""
        body = await self._get(f"/v1/services/{service}", index, wait)
        return int(body["index"]), list(body["instances"])

    async def instances(self, service: str) -> list[dict[str, Any]]:
        return (await self.service(service))[1]

    async def services(self, *, index: int | None = None, wait: float | None = None
                       ) -> tuple[int, dict[str, list[dict[str, Any]]]]:
        """(index, {service: instances}); with ``index``, a blocking query."""
        body = await self._get("/v1/services", index, wait)
        return int(body["index"]), dict(body["services"])

    async def _get(self, path: str, index: int | None, wait: float | None) -> dict[str, Any]:
        params: dict[str, str] = {}
        timeout = self.timeout
        if index is not None:
            seconds = 30.0 if wait is None else wait
            params = {"index": str(index), "wait": f"{int(seconds * 1000)}ms"}
            timeout = self.timeout + seconds * 1.1
        response = await self._call("GET", path, params=params, timeout=timeout)
        assert response is not None
        result: dict[str, Any] = response.json()
        return result

    # -- watches -------------------------------------------------------------------

    async def watch(self, service: str, *, wait: float = 30.0
                    ) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
        """(index, instances) now and after every change, forever (reconnecting)."""
        async for index, body in self._watch(lambda i: self.service(service, index=i, wait=wait)):
            yield index, body

    async def watch_all(self, *, wait: float = 30.0
                        ) -> AsyncIterator[tuple[int, dict[str, list[dict[str, Any]]]]]:
        async for index, body in self._watch(lambda i: self.services(index=i, wait=wait)):
            yield index, body

    async def _watch(self, query: Any) -> AsyncIterator[tuple[int, Any]]:
        index, attempt, first = 0, 0, True
        while True:
            try:
                new_index, body = await query(index if index > 0 else None)
            except RegistryError as exc:
                if exc.status is not None and exc.status < 500:
                    raise
                delay = _backoff(attempt)
                attempt += 1
                log.debug("registry watch failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            if new_index < index:
                first = True            # the registry restarted without its state
            if first or new_index != index:
                first = False
                yield new_index, body
            index = new_index


class Registration:
    """Keep one instance registered until ``stop()``."""

    def __init__(self, client: RegistryClient, service: str, instance_id: str,
                 address: str, port: int, **fields: Any) -> None:
        self.client = client
        self.service = service
        self.instance_id = instance_id
        self.body: dict[str, Any] = {"address": address, "port": port, **fields}
        self.ttl_ms = int(fields.get("ttl", DEFAULT_TTL_MS))
        self.instance: dict[str, Any] | None = None
        self.registered = asyncio.Event()
        self.refused: str | None = None         # why the registry refuses us, if it does
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        return max(0.01, self.ttl_ms / 3000)

    async def start(self) -> None:
        """Register once (failures are retried in the background) and start heartbeats."""
        await self._register()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _register(self) -> bool:
        try:
            self.instance = await self.client.register(self.service, self.instance_id,
                                                       **self.body)
        except RegistryError as exc:
            self.registered.clear()
            if not self._refusal("register", exc):
                log.warning("cannot register %s/%s: %s", self.service, self.instance_id, exc)
            return False
        if self.refused is not None:
            log.info("registry accepted %s/%s now", self.service, self.instance_id)
            self.refused = None
        self.registered.set()
        return True

    def _refusal(self, what: str, exc: RegistryError) -> bool:
        """Log a refusal once (per cause); False when ``exc`` is not one."""
        if exc.status not in REFUSALS:
            return False
        reason = f"{exc.status}: {REFUSALS[exc.status]}"
        if self.refused != reason:
            log.error("registry %s refused to %s %s/%s: %s (%s); retrying quietly",
                      self.client.base_url, what, self.service, self.instance_id, exc,
                      REFUSALS[exc.status])
        self.refused = reason
        return True

    async def _run(self) -> None:
        attempt = 0
        while True:
            ok = self.registered.is_set()
            await asyncio.sleep(self.interval if ok else min(self.interval, _backoff(attempt)))
            if not self.registered.is_set():
                attempt = 0 if await self._register() else attempt + 1
                continue
            try:
                instance = await self.client.heartbeat(self.service, self.instance_id)
            except RegistryError as exc:
                if self._refusal("renew", exc):
                    self.registered.clear()
                else:
                    log.warning("heartbeat of %s/%s failed: %s", self.service,
                                self.instance_id, exc)
                continue
            if instance is None:
                await self._register()
            else:
                self.instance = instance

    async def stop(self, *, deregister: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if deregister:
            with contextlib.suppress(RegistryError):
                await self.client.deregister(self.service, self.instance_id)
        self.registered.clear()

    async def __aenter__(self) -> Registration:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
