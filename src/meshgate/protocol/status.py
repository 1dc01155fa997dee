"""Reason phrases for status lines, as bytes, looked up once per status."""

from __future__ import annotations

from http import HTTPStatus

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")
