"""Edit one entry of gateway.config.yml (or .json) in place, keeping the rest as written.

Theory of operation
-------------------
The Admin API changes one named thing at a time: an entry of a mapping
section (``apiEndpoints``, ``serviceEndpoints``, ``pipelines``) or an item of
the ``policies`` whitelist. ``read_document`` reads the file; ``set_entry``,
``delete_entry``, ``add_item`` and ``remove_item`` return the new text of
the file. Nothing here validates or writes: the caller validates the new
text with the loader and writes it atomically (``write_atomic``).

YAML files are edited as *lines*. The file is ``${VAR}``-substituted and
composed into PyYAML nodes only to learn where each top-level section and
each of its entries starts (``Substituted.source_line`` maps a line of the
substituted text back to the file). Then only the lines of the edited entry
are replaced, removed or inserted, rendered in block style at the indentation
of their neighbours. Every other line stays byte for byte: comments, quoting,
anchors and ``${VAR}`` placeholders, in other entries of the same section as
in other sections. Trailing comment lines of a section stay where they are.

Fallbacks, each limited to what cannot be edited line by line:

* a section written in flow style (``policies: [proxy, log]``), empty
  (``pipelines:``) or absent is rewritten (or appended) whole, in block
  style, from its substituted values: placeholders *in that section* give
  way to their values;
* a document that is not a block mapping is dumped whole from its
  substituted values.

JSON files are parsed as written (a placeholder inside a string,
``"url": "${BACKEND}"``, is just a string and survives) and re-serialised
with the file's indentation, so formatting is normalised but values are
kept. A file that is only JSON after substitution (``"port": ${PORT}``) is
re-serialised from its substituted values.

Values sent by a client are written as given; like Express Gateway, a
``${VAR}`` inside them is substituted when the file is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshgate.config.envsubst import Substituted
from meshgate.config.errors import ConfigError
from meshgate.config.loader import parse_document


@dataclass(frozen=True)
class Document:
    path: Path
    text: str               # as on disk
    data: dict[str, Any]    # parsed after substitution: what the loader sees
    sub: Substituted

    @property
    def is_json(self) -> bool:
        return self.path.suffix == ".json"


def read_document(path: Path) -> Document:
    """Read and parse the file; a ConfigError names file and line when it cannot."""
    file = str(path)
    try:
        text = path.read_bytes().decode("utf-8")     # newlines as they are (CRLF kept)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, None, None, f"cannot read: {exc}") from None
    is_json = path.suffix == ".json"
    sub, data, _ = parse_document(text, file, None, is_json)
    return Document(path, text, data, sub)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    A symlinked config file (a Kubernetes ConfigMap, say) is written at its
    target so the link survives; the file keeps its permission bits.
    """
    target = Path(os.path.realpath(path))
    try:
        mode: int | None = target.stat().st_mode & 0o7777
    except OSError:
        mode = None
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- the four edits ----------------------------------------------------------------
def set_entry(doc: Document, section: str, name: str, value: Any) -> str:
    """The text with ``section[name] = value`` (added at the end when new)."""
    def in_data(entries: dict[str, Any]) -> dict[str, Any]:
        return {**entries, name: value}

    if doc.is_json:
        return _edit_json(doc, section, lambda old: in_data(_as_mapping(old)))
    layout = _Layout.of(doc)
    block = layout.block_mapping(section)
    if block is None:
        return layout.rewrite_section(section, in_data(_as_mapping(doc.data.get(section))))
    entries, indent = block
    rendered = _render({name: value}, indent)
    for entry_name, start, end in entries:
        if entry_name == name:
            return layout.splice(start, end, rendered)
    at = entries[-1][2] if entries else layout.section_end(section)
    return layout.splice(at, at, rendered)


def delete_entry(doc: Document, section: str, name: str) -> str:
    def in_data(entries: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entries.items() if k != name}

    if doc.is_json:
        return _edit_json(doc, section, lambda old: in_data(_as_mapping(old)))
    layout = _Layout.of(doc)
    block = layout.block_mapping(section)
    if block is None:
        return layout.rewrite_section(section, in_data(_as_mapping(doc.data.get(section))))
    for entry_name, start, end in block[0]:
        if entry_name == name:
            return layout.splice(start, end, [])
    return doc.text


def add_item(doc: Document, section: str, item: str) -> str:
    """The text with ``item`` appended to the list ``section`` unless already there."""
    items = _as_list(doc.data.get(section))
    if item in items:
        return doc.text
    if doc.is_json:
        return _edit_json(doc, section, lambda old: [*_as_list(old), item])
    layout = _Layout.of(doc)
    block = layout.block_sequence(section)
    if block is None or not block[0]:
        return layout.rewrite_section(section, [*items, item])
    spans, indent = block
    at = spans[-1][2]
    return layout.splice(at, at, _render([item], indent))


def remove_item(doc: Document, section: str, item: str) -> str:
    items = _as_list(doc.data.get(section))
    if item not in items:
        return doc.text
    if doc.is_json:
        return _edit_json(doc, section, lambda old: [i for i in _as_list(old) if i != item])
    layout = _Layout.of(doc)
    block = layout.block_sequence(section)
    if block is None:
        return layout.rewrite_section(section, [i for i in items if i != item])
    return layout.remove([(start, end) for value, start, end in block[0] if value == item])


# -- helpers -----------------------------------------------------------------------
def _as_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):         # EG's list form of pipelines: names are indices
        return {str(i): v for i, v in enumerate(value)}
    return {}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


class _IndentedDumper(yaml.SafeDumper):
    """Block style with list items indented under their key (as people write them)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _render(value: Any, indent: int) -> list[str]:
    text = yaml.dump(value, Dumper=_IndentedDumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=10_000)
    pad = " " * indent
    return [pad + line + "\n" if line else "\n" for line in text.splitlines()]


def _edit_json(doc: Document, section: str, change: Callable[[Any], Any]) -> str:
    try:
        data = json.loads(doc.text)
    except json.JSONDecodeError:
        data = json.loads(json.dumps(doc.data))     # placeholders outside strings
    if not isinstance(data, dict):
        data = dict(doc.data)
    data[section] = change(data.get(section))
    return json.dumps(data, indent=_json_indent(doc.text), ensure_ascii=False) + "\n"


def _json_indent(text: str) -> int | str:
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) < len(line):
            lead = line[: len(line) - len(stripped)]
            return "\t" if "\t" in lead else len(lead)
    return 2


def _is_filler(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


@dataclass
class _Layout:
    """Where the top-level sections of a block-style YAML file start and end (0-based)."""

    doc: Document
    lines: list[str]
    newline: str
    root: MappingNode | None
    starts: dict[str, int]          # section -> line of its key
    ends: dict[str, int]            # section -> end (exclusive), trailing comments trimmed
    values: dict[str, Node]

    @classmethod
    def of(cls, doc: Document) -> _Layout:
        newline = "\r\n" if "\r\n" in doc.text else "\n"
        # Lines end at "\n" only, as for envsubst's line numbers (not str.splitlines).
        lines = [line + "\n" for line in doc.text.split("\n")]
        last = lines.pop()[:-1]
        if last:            # no newline at the end of the file: give it one
            lines.append(last.removesuffix("\r") + newline)
        node = yaml.compose(doc.sub.text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        layout = cls(doc, lines, newline, None, {}, {}, {})
        if isinstance(node, MappingNode) and not node.flow_style:
            layout.root = node
            layout._index(node)
        return layout

    def _line(self, node: Node) -> int:
        return self.doc.sub.source_line(node.start_mark.line + 1) - 1

    def _index(self, root: MappingNode) -> None:
        keys = [(k, v) for k, v in root.value if isinstance(k, ScalarNode)]
        for i, (key, value) in enumerate(keys):
            start = self._line(key)
            end = self._line(keys[i + 1][0]) if i + 1 < len(keys) else len(self.lines)
            self.starts[key.value] = start
            self.ends[key.value] = self._trim(start + 1, end)
            self.values[key.value] = value

    def _trim(self, floor: int, end: int) -> int:
        while end > floor and _is_filler(self.lines[end - 1]):
            end -= 1
        return end

    def section_end(self, section: str) -> int:
        return self.ends[section]

    def _spans(self, section: str, nodes: list[Node]) -> list[tuple[int, int]]:
        starts = [self._line(n) for n in nodes]
        ends = [*starts[1:], self.ends[section]]
        return [(s, self._trim(s + 1, e)) for s, e in zip(starts, ends, strict=True)]

    def block_mapping(self, section: str) -> tuple[list[tuple[str, int, int]], int] | None:
        """(entries as (name, start, end), indent), or None if not a non-empty block mapping."""
        value = self.values.get(section)
        if self.root is None or not isinstance(value, MappingNode) or value.flow_style:
            return None
        keys = [k for k, _ in value.value]
        if not keys or not all(isinstance(k, ScalarNode) for k in keys):
            return None
        spans = self._spans(section, keys)
        entries = [(str(k.value), s, e) for k, (s, e) in zip(keys, spans, strict=True)]
        return entries, keys[0].start_mark.column

    def block_sequence(self, section: str) -> tuple[list[tuple[Any, int, int]], int] | None:
        """(items as (value, start, end), indent of the dash), or None if not block style."""
        value = self.values.get(section)
        if self.root is None or not isinstance(value, SequenceNode) or value.flow_style:
            return None
        spans = self._spans(section, list(value.value))
        items: list[tuple[Any, int, int]] = []
        for node, (start, end) in zip(value.value, spans, strict=True):
            line = self.lines[start]
            if not line.lstrip().startswith("-"):
                return None     # more than one item on a line, or an odd layout
            scalar = node.value if isinstance(node, ScalarNode) else None
            items.append((scalar, start, end))
        if not items:
            return None
        first = self.lines[items[0][1]]
        return items, len(first) - len(first.lstrip(" "))

    def splice(self, start: int, end: int, new: list[str]) -> str:
        lines = self.lines[:start] + [line.replace("\n", self.newline) if self.newline != "\n"
                                      else line for line in new] + self.lines[end:]
        return "".join(lines)

    def remove(self, spans: list[tuple[int, int]]) -> str:
        drop = {i for start, end in spans for i in range(start, end)}
        return "".join(line for i, line in enumerate(self.lines) if i not in drop)

    def rewrite_section(self, section: str, value: Any) -> str:
        rendered = _render({section: value}, 0)
        if self.root is None:
            data = {**self.doc.data, section: value}
            return "".join(_render(data, 0))
        if section in self.starts:
            return self.splice(self.starts[section], self.ends[section], rendered)
        at = len(self.lines)
        return self.splice(at, at, rendered)
