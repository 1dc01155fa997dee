"""Registry tokens: join tokens bound to one service, operator tokens, hashed at rest.

Theory of operation
-------------------
A token is ``mgt.<id>.<secret>``: ``id`` (12 hex digits) names it in lists,
logs and on every instance it registered (``registeredBy``); ``secret`` is 32
random bytes (base64url). Only ``sha256(secret)`` is kept: the secret has 256
bits of entropy, so a fast hash is enough (nothing to brute-force, unlike a
password), and the check is one lookup by id plus a constant-time compare of
digests. The token itself is shown once, when it is made.

A ``TokenRecord`` binds the token to a service identity (``service``), or to
none for an operator token. That binding is the identity the mesh's
certificates build on: a certificate request signed with a join token can be
given only its service's name.

Where records live is the store's business (``TokenSource``): in memory;
``FileTokens`` in ``tokens.json`` of the registry's data dir (mode 0600,
written to a temp name then renamed, read-modify-write under an ``flock`` so
the ``meshgate registry token`` commands and a running registry can both
write it; a running registry re-reads it when its stat changes, checked at
most every ``RECHECK`` seconds, so a revocation from the command line takes
effect within that); or keys in etcd (``etcd_store``).

The operator token a registry is started with (``--operator-token-file``,
``$MESHGATE_REGISTRY_TOKEN``) is not a record: the registry keeps its digest
in memory. ``operator_token_file()`` makes one (0600) on a first start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("meshgate.registry")
TOKENS_FILE = "tokens.json"
OPERATOR_TOKEN_FILE = "operator.token"
OPERATOR_ID = "operator"
RECHECK = 0.5
JOIN_TOKEN_ENV = "MESHGATE_JOIN_TOKEN"
REGISTRY_TOKEN_ENV = "MESHGATE_REGISTRY_TOKEN"
_TOKEN = re.compile(r"^mgt\.([0-9a-f]{12})\.([A-Za-z0-9_-]{43})$")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def split_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    match = _TOKEN.match(token)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    service: str | None         # None: an operator token
    sha256: str                 # of the secret part
    created: int                # ms since the epoch
    description: str = ""

    @property
    def operator(self) -> bool:
        return self.service is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """What lists show: everything but the digest."""
        return {"id": self.id, "service": self.service, "operator": self.operator,
                "created": self.created, "description": self.description}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenRecord:
        service = data.get("service")
        return cls(str(data["id"]), None if service is None else str(service),
                   str(data["sha256"]), int(data.get("created", 0)),
                   str(data.get("description", "")))


def new_token(service: str | None, description: str = "") -> tuple[TokenRecord, str]:
    """A fresh record and the token to hand out (shown once, never stored)."""
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    record = TokenRecord(token_id, service, digest(secret), int(time.time() * 1000),
                         description)
    return record, f"mgt.{token_id}.{secret}"


class TokenSource:
    """Token records held in memory (a registry without a data dir)."""

    def __init__(self) -> None:
        self._records: dict[str, TokenRecord] = {}

    def lookup(self, token_id: str) -> TokenRecord | None:
        return self._records.get(token_id)

    def records(self) -> list[TokenRecord]:
        return sorted(self._records.values(), key=lambda r: (r.created, r.id))

    async def add(self, record: TokenRecord) -> None:
        self._records[record.id] = record

    async def remove(self, token_id: str) -> bool:
        return self._records.pop(token_id, None) is not None

    def check(self, token: str) -> TokenRecord | None:
        """The record of a presented token, or None (unknown id or wrong secret)."""
        parts = split_token(token)
        if parts is None:
            return None
        record = self.lookup(parts[0])
        # A wrong id and a wrong secret both cost one sha256 and one compare.
        expected = record.sha256 if record is not None else "0" * 64
        if same_digest(digest(parts[1]), expected) and record is not None:
            return record
        return None


class FileTokens(TokenSource):
    """Token records in ``tokens.json`` of a data dir, shared with the command line."""

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__()
        self.path = Path(data_dir) / TOKENS_FILE
        self._stat: tuple[int, int, int] | None = None
        self._checked = 0.0

    def _current_stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RECHECK:
            return
        self._checked = now
        stat = self._current_stat()
        if stat == self._stat and not force:
            return
        self._records, self._stat = self._read(), stat

    def _read(self) -> dict[str, TokenRecord]:
        try:
            data = json.loads(self.path.read_bytes())
            return {r.id: r for r in map(TokenRecord.from_json, data.get("tokens", []))}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("cannot read the registry tokens %s: %s (keeping the last ones read)",
                      self.path, exc)
            return self._records

    def lookup(self, token_id: str) -> TokenRecord | None:
        self.refresh()
        return self._records.get(token_id)

    def records(self) -> list[TokenRecord]:
        self.refresh(force=True)
        return super().records()

    def update(self, change: Callable[[dict[str, TokenRecord]], Any]) -> Any:
        """Apply ``change`` to the records on disk, under the lock; returns its result."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.with_name(TOKENS_FILE + ".lock")):
            records = self._read() if self.path.exists() else {}
            result = change(records)
            body = json.dumps({"version": 1, "tokens": [r.to_json() for r in sorted(
                records.values(), key=lambda r: (r.created, r.id))]}, indent=1).encode()
            write_private(self.path, body)
            self._records, self._stat = records, self._current_stat()
        return result

    async def add(self, record: TokenRecord) -> None:
        self.update(lambda records: records.__setitem__(record.id, record))

    async def remove(self, token_id: str) -> bool:
        return bool(self.update(lambda records: records.pop(token_id, None) is not None))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_private(path: Path, body: bytes) -> None:
    """Write ``body`` to ``path`` atomically, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace removed); ``ValueError`` if empty."""
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path} holds no token")
    return token


def client_token(token_file: str | Path | None) -> str | None:
    """What a client sends: ``token_file``'s token, else ``$MESHGATE_JOIN_TOKEN``, else
    ``$MESHGATE_REGISTRY_TOKEN`` (the operator's), else None."""
    if token_file:
        return read_token_file(token_file)
    for name in (JOIN_TOKEN_ENV, REGISTRY_TOKEN_ENV):
        token = os.environ.get(name, "").strip()
        if token:
            return token
    return None


def operator_token_file(path: Path) -> tuple[str, bool]:
    """The operator token in ``path``, made (mode 0600) if missing; (token, created)."""
    if path.exists():
        return read_token_file(path), False
    path.parent.mkdir(parents=True, exist_ok=True)
    _, token = new_token(None, "operator")
    write_private(path, (token + "\n").encode())
    return token, True
