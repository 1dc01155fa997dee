"""An optional shared key for the Admin API: ``MESHGATE_ADMIN_KEY``.

Theory of operation
-------------------
The Admin API listens on localhost by default, as EG's did. When the
environment variable ``MESHGATE_ADMIN_KEY`` is set for ``meshgate run``,
every admin request except ``GET /ready`` and ``GET /metrics`` (probes and
scrapers) must carry ``Authorization: Bearer <key>``; anything else gets
``401 {"error": ...}`` with ``WWW-Authenticate: Bearer``. The comparison
takes constant time. A pure ASGI middleware, so it guards every router the
admin app mounts, present and future.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]

OPEN_PATHS = frozenset({"/ready", "/metrics"})
ENV = "MESHGATE_ADMIN_KEY"


class AdminKeyMiddleware:
    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "the Admin API needs Authorization: Bearer <key> "
                                    f"(the {ENV} of this gateway)"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="meshgate-admin"')]})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                return hmac.compare_digest(value.strip(), self.expected)
        return False


def install_admin_key(app: Any, env: MutableMapping[str, str] | None = None) -> bool:
    """Guard ``app`` when ``MESHGATE_ADMIN_KEY`` is set; whether it was."""
    key = (os.environ if env is None else env).get(ENV, "")
    if not key:
        return False
    app.add_middleware(AdminKeyMiddleware, key=key)
    return True
