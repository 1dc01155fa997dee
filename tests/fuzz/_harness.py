"""What the atheris harnesses share: a seeded corpus folder and libFuzzer's arguments.

``main(name, test_one_input, seeds)`` keeps the corpus in ``.fuzz/NAME/``
(seeded once), writes crashing inputs to ``.fuzz/NAME/crashes/``, and passes
any other arguments (``-max_total_time=300``, ``-runs=N``) to libFuzzer.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(name: str, test_one_input: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    import atheris

    corpus = ROOT / ".fuzz" / name
    crashes = corpus / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    if not any(p.is_file() for p in corpus.iterdir()):
        for seed in seeds:
            (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    argv = [sys.argv[0], f"-artifact_prefix={crashes}/", *sys.argv[1:], str(corpus)]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
