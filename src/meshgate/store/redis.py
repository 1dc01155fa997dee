"""The shared backend: consumers in Redis, seen alike by every gateway on every host.

Theory of operation
-------------------
``db.redis`` in system.config.yml (without ``emulate: true``) names the
server as Express Gateway did: ``host``, ``port``, ``password``, ``db``,
``namespace`` (default ``EG``), ``sentinels`` + ``name``, ``tls``. Every key
meshgate writes starts with ``<namespace>:mg:`` (so one Redis can hold
several gateways, and EG's own ``<namespace>-user:...`` keys are left
alone)::

    <ns>:mg:d:<table>:<key>                JSON {"d": document, "x": {index: [values]}}
    <ns>:mg:x:<table>:<index>:<value>      SET of keys (a secondary index)
    <ns>:mg:o:<table>                      ZSET key -> sequence number (the scan order)
    <ns>:mg:n:<table>                      the table's sequence counter
    <ns>:mg:version                        INCR'd by every write batch

A batch is applied optimistically: WATCH the documents it touches and the
unique index sets it claims, read them, check ``if_absent`` / uniqueness,
then MULTI ... EXEC; a concurrent writer makes EXEC fail and the batch is
retried. Documents remember their index values, so a replace or delete
removes exactly the entries it made. ``take`` (read, check and delete a
single-use document) is the same dance on one key: of several clients
taking it at once, one EXEC succeeds and the others read it gone.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import WatchError

from meshgate.store.backend import Clash, Delete, Doc, Op, Put

RETRIES = 50


def client_from_config(cfg: Any, timeout: float = 5,
                       decode_responses: bool = True) -> aioredis.Redis:
    """A redis.asyncio client from a ``db.redis`` section (ioredis-style options).

    A command that fails on a broken connection is tried once more on a new
    one (a pooled connection Redis closed); a timeout is not retried. A
    request waiting on Redis therefore waits ``timeout`` at most once, where
    redis-py's default (ten retries with backoff) would hold it for minutes.
    """
    options: dict[str, Any] = {"db": cfg.db, "password": cfg.password,
                               "username": getattr(cfg, "username", None),
                               "decode_responses": decode_responses,
                               "socket_connect_timeout": timeout, "socket_timeout": timeout,
                               "health_check_interval": 30,
                               "retry": Retry(NoBackoff(), 1,
                                              supported_errors=(RedisConnectionError,))}
    tls = cfg.tls
    if tls is not None:
        options.update(ssl=True, ssl_certfile=tls.certFile, ssl_keyfile=tls.keyFile,
                       ssl_ca_certs=tls.caFile,
                       ssl_cert_reqs=ssl.CERT_REQUIRED if tls.caFile else ssl.CERT_NONE)
    if cfg.sentinels:
        sentinel = Sentinel([(s.host, s.port) for s in cfg.sentinels], **options)
        return sentinel.master_for(cfg.name or "mymaster")
    return aioredis.Redis(host=cfg.host, port=cfg.port, **options)


class RedisBackend:
    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client: Any = client       # decode_responses=True: replies are str
        self.prefix = f"{namespace}:mg:"

    # -- key names ---------------------------------------------------------------
    def _doc(self, table: str, key: str) -> str:
        return f"{self.prefix}d:{table}:{key}"

    def _index(self, table: str, name: str, value: str) -> str:
        return f"{self.prefix}x:{table}:{name}:{value}"

    def _order(self, table: str) -> str:
        return f"{self.prefix}o:{table}"

    # -- reads -------------------------------------------------------------------
    async def get(self, table: str, key: str) -> Doc | None:
        return _unwrap(await self.client.get(self._doc(table, key)))

    async def get_many(self, table: str, keys: Sequence[str]) -> list[Doc | None]:
        if not keys:
            return []
        raw = await self.client.mget([self._doc(table, k) for k in keys])
        return [_unwrap(r) for r in raw]

    async def keys_by(self, table: str, index: str, value: str) -> list[str]:
        return sorted(await self.client.smembers(self._index(table, index, value)))

    async def scan(self, table: str, after: int, count: int) -> tuple[list[Doc], int]:
        rows = await self.client.zrangebyscore(self._order(table), f"({after}", "+inf",
                                               start=0, num=count + 1, withscores=True)
        more = len(rows) > count
        rows = rows[:count]
        docs = await self.get_many(table, [key for key, _ in rows])
        return [d for d in docs if d is not None], (int(rows[-1][1]) if more else 0)

    async def version(self) -> int:
        value = await self.client.get(self.prefix + "version")
        return int(value) if value else 0

    # -- writes ------------------------------------------------------------------
    async def apply(self, ops: Sequence[Op], bump: bool = True) -> None:
        doc_keys = [self._doc(op.table, op.key) for op in ops]
        claims = [(op, name, value) for op in ops if isinstance(op, Put)
                  for name in op.unique for value in op.index.get(name, ())]
        async with self.client.pipeline(transaction=True) as pipe:
            for _ in range(RETRIES):
                try:
                    await pipe.watch(*doc_keys, *(self._index(op.table, name, value)
                                                  for op, name, value in claims))
                    olds = [_wrapped(r) for r in await pipe.mget(doc_keys)]
                    await self._check(pipe, ops, olds, claims)
                    seqs = [await self._seq(op, old) for op, old in zip(ops, olds, strict=True)]
                    pipe.multi()
                    for op, old, seq in zip(ops, olds, seqs, strict=True):
                        self._queue(pipe, op, old, seq)
                    if bump:
                        pipe.incr(self.prefix + "version")
                    await pipe.execute()
                    return
                except WatchError:
                    await pipe.reset()
            raise RuntimeError("redis: too much contention, the write was not applied")

    async def take(self, table: str, key: str, check: Callable[[Doc], bool],
                   bump: bool = True) -> Doc | None:
        # WATCH, read, check, then MULTI ... EXEC: if another client took (or changed)
        # the document in between, EXEC fails and the retry reads it gone.
        doc_key = self._doc(table, key)
        async with self.client.pipeline(transaction=True) as pipe:
            for _ in range(RETRIES):
                try:
                    await pipe.watch(doc_key)
                    old = _wrapped(await pipe.get(doc_key))
                    if old is None or not check(old["d"]):
                        await pipe.unwatch()
                        return None
                    pipe.multi()
                    self._queue(pipe, Delete(table, key), old, 0)
                    if bump:
                        pipe.incr(self.prefix + "version")
                    await pipe.execute()
                    doc: Doc = old["d"]
                    return doc
                except WatchError:
                    await pipe.reset()
            raise RuntimeError("redis: too much contention, the take was not applied")

    async def _check(self, pipe: Any, ops: Sequence[Op], olds: list[dict[str, Any] | None],
                     claims: list[tuple[Put, str, str]]) -> None:
        for op, old in zip(ops, olds, strict=True):
            if isinstance(op, Put) and op.if_absent and old is not None:
                raise Clash(op.table, f"{op.key!r} exists")
        for op, name, value in claims:
            holders = set(await pipe.smembers(self._index(op.table, name, value))) - {op.key}
            if holders:
                raise Clash(op.table, f"{name} {value!r} is taken")

    async def _seq(self, op: Op, old: dict[str, Any] | None) -> int:
        if not isinstance(op, Put):
            return 0
        if old is not None:
            return int(old.get("s", 0))
        return int(await self.client.incr(f"{self.prefix}n:{op.table}"))

    def _queue(self, pipe: Any, op: Op, old: dict[str, Any] | None, seq: int) -> None:
        if old is not None:
            for name, values in old.get("x", {}).items():
                for value in values:
                    pipe.srem(self._index(op.table, name, value), op.key)
        if isinstance(op, Delete):
            pipe.delete(self._doc(op.table, op.key))
            pipe.zrem(self._order(op.table), op.key)
            return
        index = {name: list(dict.fromkeys(values)) for name, values in op.index.items()}
        pipe.set(self._doc(op.table, op.key),
                 json.dumps({"d": op.doc, "x": index, "s": seq}, separators=(",", ":")))
        for name, values in index.items():
            for value in values:
                pipe.sadd(self._index(op.table, name, value), op.key)
        pipe.zadd(self._order(op.table), {op.key: seq})

    async def close(self) -> None:
        await self.client.aclose()


def _wrapped(raw: str | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None


def _unwrap(raw: str | None) -> Doc | None:
    if not raw:
        return None
    doc: Doc = json.loads(raw)["d"]
    return doc
