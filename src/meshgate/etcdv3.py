"""A small async etcd v3 client over etcd's JSON gRPC-gateway.

Theory of operation
-------------------
etcd (3.4+) serves its gRPC API as JSON over HTTP under ``/v3/``: each unary
call is a ``POST`` of a JSON request, each server stream a ``POST`` whose
response body is a sequence of newline-separated JSON objects, each wrapped as
``{"result": ...}`` (or ``{"error": ...}``). Byte fields (keys, values) travel
as base64 and 64-bit integers as decimal strings, which ``_int`` folds back.

One ``httpx.AsyncClient`` carries every call. The client knows several
endpoints and sticks to the one that last worked; a transport failure
(refused, reset, timeout) moves on to the next, and only when every endpoint
failed does the call raise ``EtcdError``. A 5xx answer (a member without a
leader) also moves on; any other error answer is etcd's verdict on the
request, raised as ``EtcdError`` at once.

``watch_prefix`` opens one watch stream and yields each non-empty batch of
events as ``("put" | "delete", key, value)`` tuples (``watch_prefix_revisions``
also gives each batch's highest mod revision, a cluster-wide change index). When the stream ends or
breaks, or etcd cancels the watch (a compacted start revision), it raises
``EtcdError``; the caller re-lists with ``get_prefix`` and watches again from
the new revision + 1.

Leases: ``grant`` returns the id, ``keepalive`` renews once (one request on
the keep-alive stream) and returns the remaining TTL, raising
``LeaseNotFound`` (an ``EtcdError``) when etcd no longer knows the lease (it
answers TTL 0).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

Event = tuple[str, str, bytes]


class EtcdError(Exception):
    """An etcd call failed: unreachable cluster, error answer, broken watch, lost lease."""


class LeaseNotFound(EtcdError):
    """``keepalive`` of a lease etcd no longer knows (expired or revoked)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _int(value: Any) -> int:
    """int64 fields arrive as strings (and are omitted when zero)."""
    return int(value) if value not in (None, "") else 0


def prefix_range_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"    # empty prefix or all 0xff: to the end of the keyspace


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("error") or err)
        return str(body.get("message") or err)
    return str(body)


class EtcdClient:
    """Async etcd v3 client with fail-over across ``endpoints`` (``http://host:port``)."""

    def __init__(self, endpoints: list[str], *, timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._current = 0
        self._http = httpx.AsyncClient(timeout=timeout)

    # -- plumbing -------------------------------------------------------------

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._current + i) % n for i in range(n)]

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        failures: list[str] = []
        for index in self._order():
            url = f"{self.endpoints[index]}/v3/{path}"
            try:
                response = await self._http.post(url, json=body)
            except httpx.TransportError as exc:
                failures.append(f"{self.endpoints[index]}: {exc!r}")
                continue
            try:
                data = response.json()
            except ValueError:
                data = response.text
            if response.status_code >= 500:     # e.g. a member without a leader: next one
                failures.append(f"{self.endpoints[index]}: HTTP {response.status_code}: "
                                f"{_error_text(data)}")
                continue
            self._current = index
            if response.status_code != 200:
                raise EtcdError(f"etcd {path}: HTTP {response.status_code}: {_error_text(data)}")
            if not isinstance(data, dict):
                raise EtcdError(f"etcd {path}: unexpected answer {data!r}")
            if "error" in data:
                raise EtcdError(f"etcd {path}: {_error_text(data)}")
            return data
        raise EtcdError(f"etcd {path}: no endpoint answered ({'; '.join(failures)})")

    # -- key/value ------------------------------------------------------------

    async def get_prefix(self, prefix: str) -> tuple[int, list[tuple[str, bytes]]]:
        """Every key under ``prefix``: (header revision, [(key, value)]) in key order."""
        raw = prefix.encode()
        data = await self._call("kv/range", {"key": _b64(raw),
                                             "range_end": _b64(prefix_range_end(raw))})
        revision = _int(data.get("header", {}).get("revision"))
        items = [(_unb64(kv.get("key")).decode(), _unb64(kv.get("value")))
                 for kv in data.get("kvs") or []]
        return revision, items

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        """Write ``key``; returns the revision of the write."""
        body: dict[str, Any] = {"key": _b64(key.encode()), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self._call("kv/put", body)
        return _int(data.get("header", {}).get("revision"))

    async def delete(self, key: str) -> None:
        await self._call("kv/deleterange", {"key": _b64(key.encode())})

    # -- leases ---------------------------------------------------------------

    async def grant(self, ttl_seconds: int) -> int:
        """A new lease of ``ttl_seconds`` (at least 1); returns its id."""
        data = await self._call("lease/grant", {"TTL": str(max(1, int(ttl_seconds)))})
        lease = _int(data.get("ID"))
        if not lease:
            raise EtcdError(f"etcd lease/grant: no lease id in {data!r}")
        return lease

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease`` once; returns its TTL. Raises ``EtcdError`` if it is gone."""
        data = await self._call("lease/keepalive", {"ID": str(lease)})
        result = data.get("result", data)
        ttl = _int(result.get("TTL")) if isinstance(result, dict) else 0
        if ttl <= 0:
            raise LeaseNotFound(f"etcd lease {lease:x} not found")
        return ttl

    async def revoke(self, lease: int) -> None:
        """Drop ``lease`` and its keys; a lease already gone is not an error."""
        try:
            await self._call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # -- watch ----------------------------------------------------------------

    async def watch_prefix(self, prefix: str,
                           start_revision: int) -> AsyncIterator[list[Event]]:
        """Batches of changes under ``prefix`` from ``start_revision`` on.

        Raises ``EtcdError`` when the stream cannot be opened on any endpoint,
        breaks, ends, or is cancelled by etcd (e.g. the revision was compacted).
        """
        async for _revision, batch in self.watch_prefix_revisions(prefix, start_revision):
            yield batch

    async def watch_prefix_revisions(self, prefix: str, start_revision: int
                                     ) -> AsyncIterator[tuple[int, list[Event]]]:
        """As ``watch_prefix``, each batch with the highest mod revision among its events."""
        raw = prefix.encode()
        create: dict[str, Any] = {"key": _b64(raw), "range_end": _b64(prefix_range_end(raw))}
        if start_revision > 0:
            create["start_revision"] = str(start_revision)
        body = {"create_request": create}
        timeout = httpx.Timeout(self.timeout, read=None)
        failures: list[str] = []
        for index in self._order():
            url = f"{self.endpoints[index]}/v3/watch"
            connected = False
            try:
                async with self._http.stream("POST", url, json=body, timeout=timeout) as resp:
                    connected = True
                    self._current = index
                    if resp.status_code != 200:
                        text = (await resp.aread()).decode(errors="replace")
                        raise EtcdError(f"etcd watch: HTTP {resp.status_code}: {text}")
                    async for line in resp.aiter_lines():
                        revision, batch = _watch_batch(line)
                        if batch:
                            yield revision, batch
            except httpx.TransportError as exc:
                if not connected:       # never reached this member: try the next
                    failures.append(f"{self.endpoints[index]}: {exc!r}")
                    continue
                raise EtcdError(f"etcd watch stream broke: {exc!r}") from exc
            raise EtcdError("etcd watch stream ended")
        raise EtcdError(f"etcd watch: no endpoint answered ({'; '.join(failures)})")

    async def close(self) -> None:
        await self._http.aclose()


def _watch_batch(line: str) -> tuple[int, list[Event]]:
    """Decode one stream message; raises ``EtcdError`` on an error or cancellation."""
    line = line.strip()
    if not line:
        return 0, []
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise EtcdError(f"etcd watch: bad message {line[:200]!r}") from exc
    if "error" in message:
        raise EtcdError(f"etcd watch: {_error_text(message)}")
    result = message.get("result", message)
    if result.get("canceled"):
        compacted = _int(result.get("compact_revision"))
        reason = result.get("cancel_reason") or (
            f"revision compacted (now {compacted})" if compacted else "canceled")
        raise EtcdError(f"etcd watch canceled: {reason}")
    out: list[Event] = []
    revision = 0
    for event in result.get("events") or []:
        kv = event.get("kv") or {}
        kind = "delete" if event.get("type") == "DELETE" else "put"
        out.append((kind, _unb64(kv.get("key")).decode(), _unb64(kv.get("value"))))
        revision = max(revision, _int(kv.get("mod_revision")))
    if out and not revision:
        revision = _int(result.get("header", {}).get("revision"))
    return revision, out
