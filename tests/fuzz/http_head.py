"""atheris: bytes from a client -> the downstream codec -> Exchanges, checked in-process.

``python -m tests.fuzz.http_head -max_total_time=300``. The first input byte
picks how the rest is cut into reads; ``tests/fuzz/inprocess.py`` runs the
codec and states the checks. A violated check raises, and libFuzzer keeps
the input in ``.fuzz/http_head/crashes/``. ``MESHGATE_FUZZ_SKIP`` (words
separated by ``|``) ignores the violations that contain one of them, to look
past a known failure while it is being fixed.
"""

from __future__ import annotations

import asyncio
import os

import atheris

with atheris.instrument_imports(include=["meshgate"]):
    from tests.fuzz.inprocess import check, run

SPLITS = (0, 1, 2, 3, 7, 16, 64, 512)
LOOP = asyncio.new_event_loop()
SKIP = [w for w in os.environ.get("MESHGATE_FUZZ_SKIP", "").split("|") if w]


def chunks(data: bytes) -> tuple[bytes, list[bytes]]:
    """(payload, its reads): the first byte picks the read size (0: one read)."""
    if not data:
        return b"", []
    size, payload = SPLITS[data[0] % len(SPLITS)], data[1:]
    if not size:
        return payload, [payload] if payload else []
    return payload, [payload[i:i + size] for i in range(0, len(payload), size)]


def test_one_input(data: bytes) -> None:
    # Answers to HEAD carry no body whatever their Content-Length says, and the
    # client side of the check cannot tell which answer is whose: no HEAD here.
    payload, reads = chunks(data.replace(b"HEAD", b"HEAP"))
    bad = [b for b in check(payload, run(reads, LOOP)) if not any(w in b for w in SKIP)]
    if bad:
        raise AssertionError(f"{payload[:300]!r}\n" + "\n".join(bad))


if __name__ == "__main__":
    from tests.fuzz._harness import main
    from tests.test_smuggling import VECTORS

    main("http_head", test_one_input, (b"\x00" + v for v in VECTORS.values()))
