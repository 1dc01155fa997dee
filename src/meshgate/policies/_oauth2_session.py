"""Signed browser sessions and authorization transactions for the oauth2 policy.

Theory of operation
-------------------
Nothing is stored per login: a session is a cookie holding the user id and
its end, and a transaction (an authorization request waiting for the user's
decision) a hidden form field holding the request and the user it was shown
to, both signed with HMAC-SHA256 under a key made of system.config.yml's
``session.secret`` (EG's express-session secret; a list signs with the first
and accepts all; without one, ``crypto.cipherKey``) and 32 random bytes the
consumer store makes once (``shared_secret``). Every worker and every
gateway sharing the store and the secret accepts them; nobody can forge one
from the config alone, so EG's template secret (``keyboard cat``) left in
place is not a hole. Each value names its purpose, so a session cannot pass
for a transaction or the reverse.

Sessions last ``session.cookie.maxAge`` ms (default one hour, in a cookie
the browser drops when it closes); transactions ten minutes. The cookie is
``session.name`` (default ``meshgate.sid``), ``Path=/; HttpOnly;
SameSite=Lax``, plus ``Secure`` with ``session.cookie.secure: true``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange

SESSION_COOKIE = "meshgate.sid"
SESSION_SECONDS = 3600
TRANSACTION_SECONDS = 600


class Signer:
    """Signed, expiring JSON values: sessions ("s") and transactions ("t")."""

    def __init__(self, secrets: list[str], salt: bytes) -> None:
        self.keys = [hashlib.sha256(b"meshgate-oauth2-session\x00" + salt + s.encode()).digest()
                     for s in secrets]

    def sign(self, purpose: str, body: dict[str, Any], seconds: int) -> str:
        payload = json.dumps({**body, "p": purpose, "exp": int(time.time()) + seconds},
                             separators=(",", ":")).encode()
        data = _b64(payload)
        return f"{data}.{_b64(self._mac(self.keys[0], data))}"

    def open(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        """The body of a value this signer made for ``purpose``, if genuine and current."""
        if not value or "." not in value:
            return None
        data, _, mac = value.partition(".")
        try:
            given = _unb64(mac)
            if not any(hmac.compare_digest(given, self._mac(k, data)) for k in self.keys):
                return None
            body = json.loads(_unb64(data))
        except ValueError:
            return None
        if (not isinstance(body, dict) or body.get("p") != purpose
                or not isinstance(body.get("exp"), int) or body["exp"] < time.time()):
            return None
        return body

    @staticmethod
    def _mac(key: bytes, data: str) -> bytes:
        return hmac.new(key, data.encode(), hashlib.sha256).digest()


class Sessions:
    """The signed-in user of a browser, per system.config.yml ``session``."""

    def __init__(self, session: dict[str, Any], fallback_secret: str, store: Any) -> None:
        secret = session.get("secret") or fallback_secret
        self.secrets = [str(s) for s in secret] if isinstance(secret, list) else [str(secret)]
        self.store = store
        self._signer: Signer | None = None
        found = session.get("cookie")
        cookie: dict[str, Any] = found if isinstance(found, dict) else {}
        self.name = str(session.get("name") or SESSION_COOKIE)
        max_age = cookie.get("maxAge")
        self.max_age = int(max_age) // 1000 if isinstance(max_age, int) and max_age > 0 else 0
        self.seconds = self.max_age or SESSION_SECONDS
        self.secure = cookie.get("secure") is True

    async def signer(self) -> Signer:
        """The signer, its keys salted with the store's shared secret (read once)."""
        if self._signer is None:
            salt = await self.store.shared_secret("oauth2-session")
            self._signer = Signer(self.secrets, salt)
        return self._signer

    async def user_id(self, ex: Exchange) -> str | None:
        body = (await self.signer()).open("s", _cookie(ex, self.name))
        return str(body["u"]) if body is not None and body.get("u") else None

    async def start(self, user_id: str) -> tuple[bytes, bytes]:
        value = (await self.signer()).sign("s", {"u": user_id}, self.seconds)
        return (b"set-cookie", self._cookie(value, self.max_age).encode("latin-1"))

    def end(self) -> tuple[bytes, bytes]:
        return (b"set-cookie", self._cookie("", 0, expire=True).encode("latin-1"))

    def _cookie(self, value: str, max_age: int, expire: bool = False) -> str:
        parts = [f"{self.name}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
        if expire:
            parts.append("Max-Age=0")
        elif max_age:
            parts.append(f"Max-Age={max_age}")
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    async def transaction(self, request: dict[str, Any], user_id: str) -> str:
        return (await self.signer()).sign("t", {"r": request, "u": user_id},
                                          TRANSACTION_SECONDS)

    async def open_transaction(self, value: str | None, user_id: str
                               ) -> dict[str, Any] | None:
        """The authorization request of a transaction shown to ``user_id``."""
        body = (await self.signer()).open("t", value)
        if body is None or body.get("u") != user_id or not isinstance(body.get("r"), dict):
            return None
        request: dict[str, Any] = body["r"]
        return request


def _cookie(ex: Exchange, name: str) -> str | None:
    wanted = name.encode("latin-1")
    for key, value in ex.headers:
        if key != b"cookie":
            continue
        for pair in value.split(b";"):
            cname, sep, cvalue = pair.strip().partition(b"=")
            if sep and cname == wanted:
                return cvalue.decode("latin-1")
    return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("bad base64") from exc
