"""JavaScript regular expressions from EG configs, as Python ones.

Theory of operation
-------------------
EG hands ``pathRegex``, ``hostRegex`` and the ``pathMatch`` condition's
``pattern`` to ``new RegExp(...)``. Python's ``re`` accepts almost all of that
syntax unchanged; the few JavaScript-only spellings that have a direct
Python equivalent are rewritten here, once, at load time:

* named groups ``(?<name>...)`` -> ``(?P<name>...)`` (look-behinds
  ``(?<=`` / ``(?<!`` are left alone);
* named back-references ``\\k<name>`` -> ``(?P=name)``;
* the match-anything class ``[^]`` -> ``[\\s\\S]``.

``to_python_regex`` returns the rewritten pattern after checking that it
compiles, or raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import re

_NAMED_GROUP = re.compile(r"(?<!\\)\(\?<(?![=!])")
_NAMED_BACKREF = re.compile(r"\\k<([A-Za-z_][A-Za-z0-9_]*)>")


def to_python_regex(pattern: str) -> str:
    """The Python spelling of a JavaScript regex body; ValueError if invalid."""
    converted = _NAMED_GROUP.sub("(?P<", pattern)
    converted = _NAMED_BACKREF.sub(r"(?P=\1)", converted)
    converted = converted.replace("[^]", r"[\s\S]")
    try:
        re.compile(converted)
    except re.error as exc:
        raise ValueError(
            f"invalid regular expression {pattern!r}: {exc.msg} at position {exc.pos}"
        ) from None
    return converted
