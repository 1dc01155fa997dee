"""atheris: any bytes as a path -> ``protocol/path.normalize``, under every option.

``python -m tests.fuzz.path_normalize -max_total_time=300``. A result must be
absolute, free of dot segments and stable under a second pass; under the
defaults it must also be a fixed point of an independent RFC 3986 resolver
(``tests/support/recorder_reference.normalise``) and equal that resolver's
reading of the input.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["meshgate"]):
    from meshgate.protocol.path import SLASH_MODES, BadPath, normalize

from tests.support.recorder_reference import normalise

MODES = tuple(SLASH_MODES.values())


def test_one_input(data: bytes) -> None:
    path = b"/" + data.split(b"?", 1)[0].split(b"#", 1)[0]
    for mode in MODES:
        for merge in (False, True):
            try:
                out = normalize(path, mode, merge_slashes=merge)
            except BadPath:
                continue
            segments = out.split(b"/")[1:]
            assert out.startswith(b"/"), (path, out)
            assert b"." not in segments and b".." not in segments, (path, out)
            assert normalize(out, mode, merge_slashes=merge) == out, (path, out)
            if merge:
                assert b"//" not in out, (path, out)
            if mode == SLASH_MODES["reject"] and not merge:
                text = out.decode("latin-1")
                assert normalise(text) == text, (path, out)
                assert normalise(path.decode("latin-1")) == text, (path, out)


if __name__ == "__main__":
    from tests.fuzz._harness import main

    main("path_normalize", test_one_input, [b"public/../admin", b"a/%2e%2E/b", b"%41/./c//d",
                                            b"..%2f..%5cx", b"a\\b", b"%zz", b"~%7e%7E"])
