"""What every `sftjob` command shares: exit codes, YAML output, SFTJob document checks.

The commands import this module, never `main.py` (which imports the commands): no import cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import yaml

from sftjob_cli.yaml_source import YamlDocument

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INVALID = 2


class _Dumper(yaml.SafeDumper):
    """Block-style YAML with multi-line strings as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(data: object) -> str:
    """Dump as block YAML, keys in insertion order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def validate_documents(documents: list[YamlDocument], name: str) -> list[str]:
    """Check every document as an SFTJob.

    Args:
        documents: The parsed documents of one file.
        name: The file name used in messages.

    Returns:
        One `file:line: field: message` line per problem; empty when all are valid.
    """
    from sftjob_api.field_problems import check_document

    lines = []
    if not documents:
        return [f"{name}: the file holds no YAML document"]
    for document in documents:
        _, problems = check_document(document.data)
        prefix = f"document {document.index}: " if len(documents) > 1 else ""
        for problem in problems:
            line = document.line_of(problem.path)
            where = f"{name}:{line}" if line else name
            lines.append(f"{where}: {prefix}{problem.field}: {problem.message}")
    return lines


def read_valid_documents(
    path: str,
    prefix: str = "",
    pick: Callable[[list[YamlDocument]], list[YamlDocument] | str] | None = None,
) -> list[YamlDocument] | None:
    """Read a YAML file and check its documents as SFTJobs: what every command that takes an SFTJob file does first.

    Args:
        path: The file, or `-` for standard input.
        prefix: Put before every printed line (the command's name, where its messages carry one).
        pick: Chooses the documents to check among those read, or says why none fits (printed after the file
            name); every document is checked when None.

    Returns:
        The checked documents, or None after printing each problem on stderr as `file:line: field: message`
        (the command then exits with EXIT_INVALID).
    """
    from sftjob_cli.yaml_source import SourceError, load_documents, read_text

    try:
        documents = load_documents(read_text(path), path)
    except SourceError as err:
        problems = [str(err)]
    else:
        picked = pick(documents) if pick else documents
        if isinstance(picked, str):
            problems = [f"{path}: {picked}"]
        else:
            documents = picked
            problems = validate_documents(documents, path)
    for line in problems:
        print(f"{prefix}{line}", file=sys.stderr)
    return None if problems else documents


def load_job(path: str) -> Any:
    """The one valid SFTJob of a file, or None after printing why not (`file:line: field: message` on stderr)."""
    from sftjob_api.types import parse_sftjob

    documents = read_valid_documents(path)
    if documents is None:
        return None
    if len(documents) != 1:
        print(f"{path}: expected exactly one SFTJob document, found {len(documents)}", file=sys.stderr)
        return None
    return parse_sftjob(documents[0].data)
