"""Who may write (and read) the registry: bearer tokens, service scopes, limits.

Theory of operation
-------------------
Every write carries ``Authorization: Bearer <token>``. ``RegistryAuth``
turns the token into a ``Principal``: the operator (the token the registry
was started with, or a stored operator token), or a join token bound to one
service. No token, or one that is unknown or revoked: 401. A join token for
``users`` may register, heartbeat and deregister instances of ``users`` only
(any of them, whoever registered it): 403 for every other service, and for
the token routes, which are the operator's. Reads (lists, blocking queries,
watches) are open unless ``require_token_for_reads``: then any valid token
reads. ``/v1/health`` is always open.

The principal's token id is recorded on each instance it registers
(``registeredBy``): the per-token cap counts them, and later credentials for
the instance (a certificate) can be tied to the service its token names.

``Limits`` bound what one registration may cost: a request body of
``max_body`` bytes (413), metadata of ``max_metadata`` bytes serialized
(413), ``max_per_service`` instances per service and ``max_per_token``
instances registered through one join token (429; operator tokens have no
per-token cap). Re-registering an instance that exists never hits a cap.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from fastapi import HTTPException, Request

from meshgate.registry.tokens import OPERATOR_ID, TokenSource, same_digest

BEARER = "bearer "
log = logging.getLogger("meshgate.registry.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    service: str | None         # None: the operator

    @property
    def operator(self) -> bool:
        return self.service is None

    def may_write(self, service: str) -> bool:
        return self.service is None or self.service == service


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int = 64 * 1024
    max_metadata: int = 4096
    max_per_service: int = 1024
    max_per_token: int = 256


class RegistryAuth:
    """Checks presented tokens against the operator token and the store's records."""

    def __init__(self, tokens: TokenSource, operator_tokens: list[str], *,
                 require_token_for_reads: bool = False) -> None:
        self.tokens = tokens
        self._operator = [hashlib.sha256(t.encode()).hexdigest() for t in operator_tokens]
        self.require_token_for_reads = require_token_for_reads

    def identify(self, token: str) -> Principal | None:
        presented = hashlib.sha256(token.encode()).hexdigest()
        # Every operator digest is compared (no early exit), then the records.
        operator = False
        for expected in self._operator:
            operator |= same_digest(presented, expected)
        if operator:
            return Principal(OPERATOR_ID, None)
        record = self.tokens.check(token)
        if record is None:
            return None
        return Principal(record.id, record.service)

    def principal(self, request: Request) -> Principal:
        """The caller's identity, or 401."""
        header = request.headers.get("authorization", "")
        if header[:len(BEARER)].lower() != BEARER or not header[len(BEARER):].strip():
            _refused(request, 401, "no token")
            raise HTTPException(401, "the registry needs a token: Authorization: Bearer "
                                     "<token> (meshgate registry token create)",
                                headers={"WWW-Authenticate": 'Bearer realm="meshgate-registry"'})
        found = self.identify(header[len(BEARER):].strip())
        if found is None:
            _refused(request, 401, "unknown or revoked token")
            raise HTTPException(401, "unknown or revoked registry token",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return found

    def writer(self, request: Request, service: str) -> Principal:
        """A principal allowed to change instances of ``service``: else 401/403."""
        found = self.principal(request)
        if not found.may_write(service):
            _refused(request, 403, f"token {found.token_id} is for {found.service!r}")
            raise HTTPException(403, f"token {found.token_id} is for service "
                                     f"{found.service!r}, not {service!r}")
        return found

    def operator(self, request: Request) -> Principal:
        found = self.principal(request)
        if not found.operator:
            _refused(request, 403, f"token {found.token_id} is not an operator token")
            raise HTTPException(403, f"token {found.token_id} is a join token for "
                                     f"{found.service!r}; this needs an operator token")
        return found

    def reader(self, request: Request) -> None:
        if self.require_token_for_reads:
            self.principal(request)


def _refused(request: Request, status: int, why: str) -> None:
    client = request.client.host if request.client is not None else "?"
    log.debug("%d %s %s from %s: %s", status, request.method, request.url.path, client, why)
