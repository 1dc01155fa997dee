"""What every auth policy does once it knows (or not) who is calling.

Theory of operation
-------------------
key-auth, basic-auth, jwt, oauth2 and oauth2-introspect each reduce a
request to an ``Identity`` or to nobody; a ``Gate`` turns that into EG's
outcome (``getCommonAuthCallback`` in EG's ``gateway/actionParams.js``):

* an Identity holding *every* scope of the matched apiEndpoint (EG's
  ``scopes.every``) is admitted: its ``view`` -- ``{id, name, type, scopes,
  credential_type}`` -- goes into ``ex.vars["consumer"]`` (read by the
  ``authenticated`` / ``anonymous`` conditions, ``${consumer.id}`` templates
  and CEL) and ``eg-consumer-id: <id>`` is added to the upstream request;
* an Identity missing a scope: 403; nobody: 401 with a ``WWW-Authenticate``
  challenge;
* with ``passThrough`` both of those go on anonymous instead, and the
  response carries ``eg-consumer-id: anonymous`` (EG set it there) -- unless
  an earlier auth policy of the pipeline already identified a consumer,
  who then stays;
* a store or introspection endpoint that cannot answer: 503 (EG's
  ``next(err)`` was a 500), whatever ``passThrough`` says -- an outage must
  not turn into anonymous access;
* a secret the store would not check now (``store.guard.Refused``: too many
  failed checks from this client or of this key id, or too many checks
  waiting for the slow hash): 429 or 503 with ``Retry-After``, whatever
  ``passThrough`` says.

An ``eg-consumer-id`` sent by the client is always dropped: only the gateway
says who the consumer is.

Hot path: the store's cache hands out the same frozen ``Credential`` /
``Token`` object until the store changes, so Identities are memoised by
that object (``Memo``) and an authenticated request builds no dict -- the
view is shared between requests and must be treated as read-only. Policies
return ``Gate.settle(ex, coroutine)`` only when they must wait (a cache
miss); everything else is answered synchronously.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_plus

from meshgate.store import open_store_for
from meshgate.store.guard import Refused

if TYPE_CHECKING:
    from meshgate.policies import BuildContext
    from meshgate.protocol.exchange import Exchange, Headers
    from meshgate.store.model import Credential

log = logging.getLogger("meshgate.auth")

CONSUMER_HEADER: Final = b"eg-consumer-id"
REALM = "Users"                       # passport-http's default realm, which EG kept
_ANONYMOUS: Final[Headers] = [(CONSUMER_HEADER, b"anonymous")]
_MEMO_SIZE: Final = 8192


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request authenticated as."""

    id: str
    view: dict[str, Any]                  # ex.vars["consumer"]; shared, read-only
    scopes: frozenset[str]
    header: tuple[bytes, bytes] | None    # ("eg-consumer-id", id) for the upstream


def identity(id_: str | None, name: str | None, type_: str, scopes: Any,
             credential_type: str) -> Identity:
    scope_list = [str(s) for s in scopes or ()]
    key = id_ or ""
    view = {"id": id_, "name": name, "type": type_, "scopes": scope_list,
            "credential_type": credential_type}
    header = (CONSUMER_HEADER, key.encode("latin-1", "replace")) if key else None
    return Identity(key, view, frozenset(scope_list), header)


def of_credential(cred: Credential, scopes: Any = None) -> Identity:
    """The Identity of a store Credential (its consumer; its scopes unless given)."""
    consumer = cred.consumer
    if consumer is None:
        return identity(cred.consumer_id, None, "user", cred.scopes if scopes is None
                        else scopes, cred.type)
    return identity(consumer.id, consumer.name, consumer.type,
                    cred.scopes if scopes is None else scopes, cred.type)


class Memo:
    """Identities keyed by the store answer they were made from.

    The source object is kept with its Identity, so its ``id()`` cannot be
    reused by another object while the entry lives; the key may add more
    (e.g. the scopes of a token) for answers that differ per request.
    """

    def __init__(self, size: int = _MEMO_SIZE) -> None:
        self.size = size
        self.items: dict[Hashable, tuple[object, Identity]] = {}

    def credential(self, cred: Credential) -> Identity:
        """The Identity of a store Credential (``get`` without a closure per call)."""
        entry = self.items.get(id(cred))
        if entry is not None and entry[0] is cred:
            return entry[1]
        made = of_credential(cred)
        if len(self.items) >= self.size:
            self.items.clear()
        self.items[id(cred)] = (cred, made)
        return made

    def get(self, source: object, make: Callable[[], Identity],
            extra: Hashable = None) -> Identity:
        key = id(source) if extra is None else (id(source), extra)
        entry = self.items.get(key)
        if entry is not None and entry[0] is source:
            return entry[1]
        made = make()
        if len(self.items) >= self.size:
            self.items.clear()
        self.items[key] = (source, made)
        return made


def shared_store(ctx: BuildContext) -> Any:
    """The worker's consumer store (one per process, shared by every policy)."""
    return ctx.services.get("store", lambda: open_store_for(ctx.system, ctx.config_dir))


class Gate:
    """Admit, refuse or pass through, the same way for every auth policy."""

    def __init__(self, policy: str, pass_through: bool, challenge: str,
                 invalid_challenge: str | None = None, strip: bytes | None = None) -> None:
        self.policy = policy
        self.pass_through = pass_through
        self.challenge: Headers = [(b"www-authenticate", challenge.encode("latin-1"))]
        self.invalid: Headers = (self.challenge if invalid_challenge is None else
                                 [(b"www-authenticate", invalid_challenge.encode("latin-1"))])
        self.strip = strip              # a request header to drop once admitted
        self._warned = 0.0

    def admit(self, ex: Exchange, who: Identity) -> bool | None:
        route = ex.route
        needed = route.scopes if route is not None else ()
        if needed:
            have = who.scopes
            for scope in needed:
                if scope not in have:
                    return self.forbid(ex)
        ex.scratch()["consumer"] = who.view
        _set_consumer_header(ex, who.header, self.strip)
        return None

    def deny(self, ex: Exchange, presented: bool = False) -> bool | None:
        """Nobody authenticated: 401, or on anonymous with passThrough."""
        if self.pass_through:
            self.anonymous(ex)
            return None
        ex.respond(401, b"Unauthorized", self.invalid if presented else self.challenge)
        return True

    def forbid(self, ex: Exchange) -> bool | None:
        if self.pass_through:
            self.anonymous(ex)
            return None
        ex.respond(403, b"Forbidden")
        return True

    def anonymous(self, ex: Exchange) -> None:
        found = ex.vars
        if found is not None and found.get("consumer") is not None:
            return                        # an earlier auth policy already identified one
        _set_consumer_header(ex, None, None)
        extra = ex.response_headers_extra
        if extra is None or _ANONYMOUS[0] not in extra:    # once, however many policies
            ex.add_response_headers(_ANONYMOUS)

    def unavailable(self, ex: Exchange, exc: BaseException) -> bool:
        now = time.monotonic()
        if now - self._warned > 10.0:         # at most one line per 10 s per policy
            self._warned = now
            log.warning("%s: cannot authenticate, answering 503: %r", self.policy, exc)
        if not ex.done:
            ex.respond(503, b"Service Unavailable")
        return True

    def refuse(self, ex: Exchange, exc: Refused) -> bool:
        """The check was not run (``store.guard``): 429 / 503 with ``Retry-After``."""
        if not ex.done:
            reason = b"Too Many Requests" if exc.status == 429 else b"Service Unavailable"
            ex.respond(exc.status, reason,
                       [(b"retry-after", str(exc.retry_after).encode("latin-1"))])
        return True

    def settle(self, ex: Exchange, pending: Awaitable[Identity | None],
               presented: bool = True) -> Awaitable[bool | None]:
        """The outcome once ``pending`` (a store or network look-up) has answered."""
        return self._settle(ex, pending, presented)

    async def _settle(self, ex: Exchange, pending: Awaitable[Identity | None],
                      presented: bool) -> bool | None:
        try:
            who = await pending
        except Refused as refused:        # too many failures, or checks waiting
            return self.refuse(ex, refused)
        except Exception as exc:          # store / endpoint unreachable
            return self.unavailable(ex, exc)
        if ex.done:
            return True
        if who is None:
            return self.deny(ex, presented)
        return self.admit(ex, who)


def _set_consumer_header(ex: Exchange, header: tuple[bytes, bytes] | None,
                         strip: bytes | None) -> None:
    headers = ex.headers
    for item in headers:
        name = item[0]
        if name in (CONSUMER_HEADER, strip):
            headers = ex.headers = [h for h in headers
                                    if h[0] != CONSUMER_HEADER and h[0] != strip]
            break
    if header is not None:
        headers.append(header)


# -- reading credentials off a request -------------------------------------------------

def query_param(target: bytes, name: str) -> str | None:
    """The first value of query parameter ``name`` in a request target, decoded."""
    q = target.find(b"?")
    if q < 0:
        return None
    wanted = name.encode("latin-1")
    for pair in target[q + 1:].split(b"&"):
        key, sep, value = pair.partition(b"=")
        if key == wanted or unquote_plus(key.decode("latin-1")) == name:
            return unquote_plus(value.decode("latin-1")) if sep else ""
    return None


def auth_scheme_value(ex: Exchange, scheme: bytes, header: bytes = b"authorization"
                      ) -> bytes | None:
    """The credentials after ``scheme`` (lower-case) in ``header``, e.g. a Bearer token."""
    value = ex.header(header)
    if value is None:
        return None
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != scheme:
        return None
    return parts[1]


def bearer_token(ex: Exchange) -> str | None:
    """A Bearer token from ``Authorization`` or the ``access_token`` query parameter."""
    token = auth_scheme_value(ex, b"bearer")
    if token is not None:
        return token.decode("latin-1")
    return query_param(ex.path, "access_token") if b"access_token" in ex.path else None


def basic_credentials(value: bytes | None) -> tuple[str, str] | None:
    """(user, password) from a ``Basic`` Authorization value, or None."""
    if value is None:
        return None
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(parts[1], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password:
        return None
    return user, password
