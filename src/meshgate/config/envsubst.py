"""``${VAR}`` / ``${VAR:-default}`` substitution in config text, as Express Gateway does.

Theory of operation
-------------------
EG replaces environment references in the *text* of a config file before
parsing it, so a variable can supply any YAML value (``port:
${EG_HTTP_PORT:-8080}`` is a number, ``emulate: ${EMULATE:-true}`` a
boolean). meshgate does the same, line by line, with EG's own pattern: a
name is only an environment variable if it is made of letters, digits and
``_``. Policy templates such as ``${req.ip}`` or ``${consumer.id}`` contain
a dot, so they are left for the policy to evaluate.

Differences from EG, all on the side of saying so instead of guessing:

* an unset variable with no default is an error naming file and line (EG
  silently substituted the string ``null``);
* ``$${VAR}`` is an escape that yields a literal ``${VAR}``;
* references inside YAML comments are left alone (so commented-out lines
  cannot fail the load);
* ``${VAR:-}`` means "empty if unset"; as in the shell, ``${VAR:-default}``
  also takes the default when ``VAR`` is set but empty.

A substituted value may contain newlines; ``Substituted.source_line`` maps a
line of the output back to the line of the file the user wrote.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from meshgate.config.errors import ConfigError

_REFERENCE = re.compile(r"(\$?)\$\{([A-Za-z0-9_]+)(?::-(.*?))?\}")
_QUOTE_OPENERS = " \t[{,:-"


@dataclass(frozen=True)
class Substituted:
    text: str
    # output line (1-based) -> source line; None when no value spanned lines
    line_map: tuple[int, ...] | None = None

    def source_line(self, line: int) -> int:
        if self.line_map is None or not 0 < line <= len(self.line_map):
            return line
        return self.line_map[line - 1]


def comment_start(line: str) -> int:
    """Index where a YAML comment starts on ``line`` (len(line) if none)."""
    quote = ""
    prev = " "
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                if quote == "'" and line[i + 1:i + 2] == "'":
                    i += 1
                else:
                    quote = ""
        elif ch in "'\"" and prev in _QUOTE_OPENERS:
            quote = ch
        elif ch == "#" and prev in " \t":
            return i
        prev = ch
        i += 1
    return len(line)


def substitute(text: str, env: Mapping[str, str], file: str,
               yaml_comments: bool = True) -> Substituted:
    """Replace environment references in ``text``; see the module docstring."""
    out: list[str] = []
    line_map: list[int] = []
    multiline = False
    for number, line in enumerate(text.split("\n"), start=1):
        if "${" not in line:
            out.append(line)
            line_map.append(number)
            continue
        limit = comment_start(line) if yaml_comments else len(line)
        new = _substitute_line(line, limit, env, file, number)
        extra = new.count("\n")
        multiline = multiline or extra > 0
        out.append(new)
        line_map.extend([number] * (extra + 1))
    return Substituted("\n".join(out), tuple(line_map) if multiline else None)


def _substitute_line(line: str, limit: int, env: Mapping[str, str], file: str,
                     number: int) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.start() >= limit:
            return match.group(0)
        escape, name, default = match.group(1), match.group(2), match.group(3)
        if escape:
            return match.group(0)[1:]
        value = env.get(name)
        if value or (value is not None and default is None):
            return value
        if default is not None:          # as the shell's ':-': unset or empty
            return default
        raise ConfigError(file, number, None,
                          f"environment variable {name} is not set "
                          f"(write ${{{name}:-default}} to give a default)")

    return _REFERENCE.sub(replace, line)
