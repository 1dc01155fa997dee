"""The embedded backend: one SQLite file, shared safely by every local process.

Theory of operation
-------------------
The file lives in a data folder (see ``store.open_store`` for where). It is
opened in WAL mode with ``synchronous=FULL``: every committed batch is
fsynced to the write-ahead log before ``apply`` returns, so anything the
Admin API acknowledged survives ``kill -9`` of the whole gateway, and
readers never wait for a writer.

Two threads per process run the sqlite calls so the event loop never
blocks: a *reader* (point look-ups, scans, the version poll) and a *writer*
(``BEGIN IMMEDIATE`` batches; ``take`` selects and deletes inside one such
transaction). Each owns one connection. Several processes
(the master's Admin API, workers issuing OAuth2 tokens) may write the same
file; SQLite serialises them, waiting up to ``busy_timeout``.

Schema::

    docs(seq, tbl, key, doc)         -- seq is AUTOINCREMENT: the scan cursor
    idx(tbl, name, value, key, uniq) -- secondary indexes; partial UNIQUE(tbl, name,
                                     --   value) where uniq = 1
    meta(name, value)                -- 'version', bumped by every write batch
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from meshgate.store.backend import Clash, Delete, Doc, Op, Put

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL,
    UNIQUE (tbl, key));
CREATE TABLE IF NOT EXISTS idx (
    tbl TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, key TEXT NOT NULL,
    uniq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, name, value, key)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS idx_unique ON idx (tbl, name, value) WHERE uniq = 1;
CREATE INDEX IF NOT EXISTS idx_by_key ON idx (tbl, key);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('version', 0);
"""

BUSY_TIMEOUT_MS = 10000


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class SqliteBackend:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # owner-only; SQLite gives the -wal and -shm files the same mode
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        setup = _connect(self.path)             # once, before any thread runs
        try:
            setup.executescript(SCHEMA)
        finally:
            setup.close()
        self._pools = {name: ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-{name}")
                       for name in ("reader", "writer")}
        self._local = threading.local()
        self._closed = False

    # -- threads ---------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
        return conn

    async def _run(self, pool: str, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pools[pool], fn, *args)

    # -- reads -------------------------------------------------------------------
    async def get(self, table: str, key: str) -> Doc | None:
        return (await self.get_many(table, [key]))[0]

    async def get_many(self, table: str, keys: Sequence[str]) -> list[Doc | None]:
        return await self._run("reader", self._get_many, table, list(keys))

    def _get_many(self, table: str, keys: list[str]) -> list[Doc | None]:
        conn = self._conn()
        found: dict[str, Doc] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, text in conn.execute(
                    f"SELECT key, doc FROM docs WHERE tbl = ? AND key IN ({marks})",
                    (table, *chunk)):
                found[key] = json.loads(text)
        return [found.get(k) for k in keys]

    async def keys_by(self, table: str, index: str, value: str) -> list[str]:
        return await self._run("reader", self._keys_by, table, index, value)

    def _keys_by(self, table: str, index: str, value: str) -> list[str]:
        rows = self._conn().execute(
            "SELECT key FROM idx WHERE tbl = ? AND name = ? AND value = ? ORDER BY key",
            (table, index, value))
        return [row[0] for row in rows]

    async def scan(self, table: str, after: int, count: int) -> tuple[list[Doc], int]:
        return await self._run("reader", self._scan, table, after, count)

    def _scan(self, table: str, after: int, count: int) -> tuple[list[Doc], int]:
        rows = self._conn().execute(
            "SELECT seq, doc FROM docs WHERE tbl = ? AND seq > ? ORDER BY seq LIMIT ?",
            (table, after, count + 1)).fetchall()
        more = len(rows) > count
        rows = rows[:count]
        return [json.loads(doc) for _, doc in rows], (rows[-1][0] if more else 0)

    async def version(self) -> int:
        return await self._run("reader", self._version)

    def _version(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
        return int(row[0]) if row else 0

    # -- writes ------------------------------------------------------------------
    async def apply(self, ops: Sequence[Op], bump: bool = True) -> None:
        await self._run("writer", self._apply, list(ops), bump)

    def _apply(self, ops: list[Op], bump: bool) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                if isinstance(op, Put):
                    self._put(conn, op)
                elif isinstance(op, Delete):
                    self._delete(conn, op.table, op.key)
            if bump:
                conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def take(self, table: str, key: str, check: Callable[[Doc], bool],
                   bump: bool = True) -> Doc | None:
        return await self._run("writer", self._take, table, key, check, bump)

    def _take(self, table: str, key: str, check: Callable[[Doc], bool],
              bump: bool) -> Doc | None:
        # BEGIN IMMEDIATE holds the file's write lock from the read to the delete, and
        # in WAL mode it reads the latest commit: of several processes taking the same
        # key, one finds the document and the others find it gone.
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT doc FROM docs WHERE tbl = ? AND key = ?",
                               (table, key)).fetchone()
            doc: Doc | None = json.loads(row[0]) if row else None
            if doc is None or not check(doc):
                conn.execute("ROLLBACK")
                return None
            self._delete(conn, table, key)
            if bump:
                conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")
            conn.execute("COMMIT")
            return doc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _delete(conn: sqlite3.Connection, table: str, key: str) -> None:
        conn.execute("DELETE FROM docs WHERE tbl = ? AND key = ?", (table, key))
        conn.execute("DELETE FROM idx WHERE tbl = ? AND key = ?", (table, key))

    @staticmethod
    def _put(conn: sqlite3.Connection, op: Put) -> None:
        if op.if_absent and conn.execute("SELECT 1 FROM docs WHERE tbl = ? AND key = ?",
                                         (op.table, op.key)).fetchone():
            raise Clash(op.table, f"{op.key!r} exists")
        conn.execute("INSERT INTO docs (tbl, key, doc) VALUES (?, ?, ?) "
                     "ON CONFLICT (tbl, key) DO UPDATE SET doc = excluded.doc",
                     (op.table, op.key, json.dumps(op.doc, separators=(",", ":"))))
        conn.execute("DELETE FROM idx WHERE tbl = ? AND key = ?", (op.table, op.key))
        for name, values in op.index.items():
            uniq = int(name in op.unique)
            for value in dict.fromkeys(values):
                try:
                    conn.execute("INSERT INTO idx (tbl, name, value, key, uniq) "
                                 "VALUES (?, ?, ?, ?, ?)", (op.table, name, value, op.key, uniq))
                except sqlite3.IntegrityError:
                    raise Clash(op.table, f"{name} {value!r} is taken") from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        for pool in self._pools.values():
            await loop.run_in_executor(pool, self._close_local)
            pool.shutdown(wait=False)

    def _close_local(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
