"""Express Gateway's config routes: /api-endpoints, /service-endpoints, /pipelines, ..."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter


def router(master: Any) -> APIRouter:
    return APIRouter()
