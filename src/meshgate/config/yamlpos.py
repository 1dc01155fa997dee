"""YAML loading that remembers where every key and item came from.

Theory of operation
-------------------
``load_yaml(text, file)`` lets PyYAML's SafeLoader *compose* the document
into a node tree first (nodes carry their start marks), walks that tree once
to record ``path -> line`` for every mapping key and sequence item (1-based
lines; ``()`` is the document itself) and to reject duplicate keys, as
Express Gateway's js-yaml does; then it *constructs* the plain Python data
from the same nodes. The map is keyed by the path as written: mapping keys
as strings, sequence items as ints.

Keys brought in by a merge (``<<: *anchor``) are not in the map: an error
inside them is reported at the line of the mapping that merged them.

YAML syntax errors become a ``ConfigError`` with the line of the problem.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshgate.config.errors import ConfigError, Path, format_path

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_DEPTH = 200    # guards against recursive aliases


class PositionLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A SafeLoader whose documents come with a ``path -> line`` map."""

    def load_with_lines(self, file: str) -> tuple[Any, dict[Path, int]]:
        node = self.get_single_node()
        if node is None:
            return None, {}
        lines: dict[Path, int] = {(): node.start_mark.line + 1}
        _walk(node, (), lines, file, 0)
        return self.construct_document(node), lines


def _walk(node: Node, path: Path, lines: dict[Path, int], file: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = key_node.value
            here = (*path, key)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(file, line, format_path(here) or None,
                                  f"duplicate key {key!r}")
            seen.add(key)
            lines[here] = line
            _walk(value_node, here, lines, file, depth + 1)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            here = (*path, index)
            lines[here] = item.start_mark.line + 1
            _walk(item, here, lines, file, depth + 1)


def _tab_at(text: str, mark: Any) -> bool:
    """libyaml does not say when a tab broke the indentation; look for one."""
    if mark is None:
        return False
    lines = text.splitlines()
    return mark.line < len(lines) and "\t" in lines[mark.line][: mark.column + 1]


def load_yaml(text: str, file: str) -> tuple[Any, dict[Path, int]]:
    """Parse one YAML (or JSON) document: (data, path -> line)."""
    loader = PositionLoader(text)
    try:
        return loader.load_with_lines(file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        # At the end of the text libyaml may place its mark one line past the
        # last: name the last line instead.
        line = min(mark.line + 1, text.count("\n") + 1) if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            problem = f"{exc.context}, {exc.problem}"
        if "'\\t'" in problem or _tab_at(text, mark):
            problem += " (indent YAML with spaces, not tabs)"
        raise ConfigError(file, line, None, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, None, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
