"""Read YAML documents and remember where every field was written, for `file:line` errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FieldPath = tuple[str | int, ...]


class SourceError(Exception):
    """A file that cannot be read or parsed; the message names file:line:column."""


@dataclass
class YamlDocument:
    """One document of a YAML file, with the line of each field path."""

    data: Any
    """The decoded document."""
    index: int
    """Position of the document in the file, from 1."""
    lines: dict[FieldPath, int] = field(default_factory=dict)
    """1-based line of each field path (mapping keys and sequence items)."""

    def line_of(self, path: FieldPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that was written in the file."""
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None


def _index_lines(node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                _index_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), lines)


def read_text(path: str) -> str:
    """Read a UTF-8 file or standard input (`-`).

    Raises:
        SourceError: When the file is missing, unreadable or not UTF-8.
    """
    import sys

    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory, expected a YAML file") from None
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: byte {err.start} is not valid UTF-8; save the file as UTF-8") from None


def load_documents(text: str, name: str) -> list[YamlDocument]:
    """Parse every document of a YAML stream.

    Args:
        text: The YAML text.
        name: The file name used in messages.

    Returns:
        The non-empty documents, in order.

    Raises:
        SourceError: On a syntax error, naming line and column.
    """
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        datas = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        problem = err.problem or err.context or "invalid YAML"
        raise SourceError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as err:
        raise SourceError(f"{name}: YAML error: {err}") from None
    documents = []
    for index, (node, data) in enumerate(zip(nodes, datas, strict=True), start=1):
        if node is None:
            continue
        lines: dict[FieldPath, int] = {}
        _index_lines(node, (), lines)
        documents.append(YamlDocument(data=data, index=index, lines=lines))
    return documents
