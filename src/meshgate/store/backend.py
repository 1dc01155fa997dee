"""The storage interface under the consumer store: JSON documents, indexes, a version.

Theory of operation
-------------------
Everything the consumer store keeps (users, apps, credentials, scopes,
tokens) is a JSON document in a *table*, under a string *key*, with optional
secondary *index* entries (``username -> user id``, ``consumerId ->
credential keys``, ...). A ``Backend`` offers only what both engines do well:

* ``get`` / ``get_many`` one or several documents by key;
* ``keys_by(table, index, value)`` the keys an index value points at;
* ``scan(table, after, count)`` documents in insertion order after a cursor
  (EG's ``start`` / ``nextKey`` pagination; the cursor is an opaque positive
  integer, ``0`` starts and means "no more");
* ``apply(ops)`` an atomic batch of ``Put`` / ``Delete``. A ``Put`` may
  demand its key be new (``if_absent``) and name index values that must be
  unique; a clash rolls the whole batch back and raises ``Clash``;
* ``take(table, key, check)`` read a document and delete it in one atomic
  step if ``check(doc)`` holds (single-use things: of several processes
  taking the same key at once, exactly one gets the document);
* ``version()`` a counter bumped by every batch applied with ``bump=True``.
  Readers in other processes poll it to learn that their caches are stale.

The EG semantics (validation, cascades, secrets) live above, in
``meshgate.store.service``, once for both engines: ``sqlite.SqliteBackend``
(embedded, one file) and ``redis.RedisBackend`` (shared).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Doc = dict[str, Any]


class Clash(Exception):
    """A batch broke a precondition: an existing key or a taken unique value."""

    def __init__(self, table: str, what: str) -> None:
        super().__init__(f"{table}: {what}")
        self.table = table
        self.what = what


@dataclass(frozen=True)
class Put:
    table: str
    key: str
    doc: Doc
    # index name -> values this document is found under (replaces older entries)
    index: Mapping[str, Sequence[str]] = field(default_factory=dict)
    unique: frozenset[str] = frozenset()    # index names whose values must be unique
    if_absent: bool = False                 # fail if the key already holds a document


@dataclass(frozen=True)
class Delete:
    table: str
    key: str


Op = Put | Delete


class Backend(Protocol):
    async def get(self, table: str, key: str) -> Doc | None: ...

    async def get_many(self, table: str, keys: Sequence[str]) -> list[Doc | None]: ...

    async def keys_by(self, table: str, index: str, value: str) -> list[str]: ...

    async def scan(self, table: str, after: int, count: int) -> tuple[list[Doc], int]: ...

    async def apply(self, ops: Sequence[Op], bump: bool = True) -> None: ...

    async def take(self, table: str, key: str, check: Callable[[Doc], bool],
                   bump: bool = True) -> Doc | None: ...

    async def version(self) -> int: ...

    async def close(self) -> None: ...
