"""Express Gateway's consumer routes: /users, /apps, /credentials, /scopes, /tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter


def router(master: Any) -> APIRouter:
    return APIRouter()
