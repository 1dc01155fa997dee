"""The Admin API client behind ``meshgate users|apps|credentials|...`` (EG's ``eg`` CLI).

Theory of operation
-------------------
``find_admin_url`` decides where the Admin API is, in this order:

1. ``--admin-url``;
2. ``$MESHGATE_ADMIN_URL``, then ``$EG_ADMIN_URL``;
3. in the config folder (``--config``, else ``$MESHGATE_CONFIG_DIR`` /
   ``$EG_CONFIG_DIR``): ``cli.url`` of system.config.yml, else the ``admin``
   host and port of gateway.config.yml (as ``eg`` does);
4. ``http://localhost:9876``.

``AdminClient.call`` sends one request and returns the decoded JSON (or
None for an empty body). Anything else raises ``CliError`` carrying a
one-line message and the exit status: 1 when the API refused (``HTTP 404:
user not found``: the status and the API's own message, whatever shape it
came in) or could not be reached (the message names the URL), 2 for usage
errors found before any request was sent.

``$MESHGATE_ADMIN_KEY``, when set, is sent as ``Authorization: Bearer``;
``-H 'Name: value'`` adds headers as in ``eg``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://localhost:9876"
URL_VARS = ("MESHGATE_ADMIN_URL", "EG_ADMIN_URL")
CONFIG_VARS = ("MESHGATE_CONFIG_DIR", "EG_CONFIG_DIR")
TIMEOUT = float(os.environ.get("MESHGATE_ADMIN_TIMEOUT", "30"))


class CliError(Exception):
    """A failure to report on one line, with the process exit status."""

    def __init__(self, message: str, code: int = 1, fatal: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.fatal = fatal      # no point trying the next item (the API is unreachable)


def segment(value: str) -> str:
    """One URL path segment (ids and names may hold '/' or spaces)."""
    return quote(value, safe="")


def find_admin_url(option: str | None, config_dir: str | None,
                   env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    url = option or next((env[v] for v in URL_VARS if env.get(v)), None)
    if not url:
        directory = config_dir or next((env[v] for v in CONFIG_VARS if env.get(v)), None)
        url = _url_from_config(Path(directory)) if directory else None
    return (url or DEFAULT_URL).rstrip("/")


def _url_from_config(directory: Path) -> str | None:
    # Imported here: most commands never read a config folder.
    from meshgate.config.loader import (
        GATEWAY_FILES,
        SYSTEM_FILES,
        ConfigError,
        load_gateway_file,
        load_system_file,
    )

    system = next((directory / n for n in SYSTEM_FILES if (directory / n).is_file()), None)
    gateway = next((directory / n for n in GATEWAY_FILES if (directory / n).is_file()), None)
    try:
        if system is not None:
            url = load_system_file(system).cli.url
            if url:
                return str(url)
        if gateway is not None:
            admin = load_gateway_file(gateway).admin
            if admin is not None:
                host = "localhost" if admin.host in ("", "0.0.0.0", "::") else admin.host
                host = f"[{host}]" if ":" in host else host
                return f"http://{host}:{admin.port}"
    except ConfigError as exc:
        print(f"meshgate: ignoring the config folder for the admin URL: {exc}", file=sys.stderr)
    return None


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    """``-H 'Name: value'`` (or ``Name:value``) -> headers; CliError(2) when malformed."""
    headers: dict[str, str] = {}
    for raw in values:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip() or not value.strip():
            raise CliError(f"invalid header {raw!r}: expected NAME:VALUE", 2)
        headers[name.strip()] = value.strip()
    return headers


def api_message(response: httpx.Response) -> str:
    """The API's own explanation, whatever shape it came in."""
    text = response.text.strip()
    try:
        body = response.json()
    except ValueError:
        return text[:500]
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, str):
                return value
            if value is not None:
                return json.dumps(value)
    return text[:500]


class AdminClient:
    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None,
                 verbose: bool = False) -> None:
        self.base_url = base_url
        self.verbose = verbose
        sent = dict(headers or {})
        key = os.environ.get("MESHGATE_ADMIN_KEY")
        if key:
            sent.setdefault("Authorization", f"Bearer {key}")
        self.http = httpx.Client(base_url=base_url, headers=sent, timeout=TIMEOUT)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: Any = None,
             params: Mapping[str, Any] | None = None) -> Any:
        if self.verbose:
            print(f"> {method} {self.base_url}{path}"
                  + (f" {json.dumps(body)}" if body is not None else ""), file=sys.stderr)
        try:
            response = self.http.request(method, path, json=body, params=params)
        except httpx.ConnectError as exc:
            raise CliError(f"cannot reach the Admin API at {self.base_url}: "
                           f"{_reason(exc)}", fatal=True) from None
        except httpx.TimeoutException:
            raise CliError(f"the Admin API at {self.base_url} did not answer "
                           f"within {TIMEOUT:g}s", fatal=True) from None
        except httpx.HTTPError as exc:
            raise CliError(f"Admin API request to {self.base_url} failed: {exc}",
                           fatal=True) from None
        if self.verbose:
            print(f"< {response.status_code} {response.text[:2000]}", file=sys.stderr)
        if response.status_code >= 400:
            status = f"HTTP {response.status_code} {response.reason_phrase or ''}".rstrip()
            detail = api_message(response)
            raise CliError(f"{status}: {detail}" if detail else status)
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            return response.text


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__
