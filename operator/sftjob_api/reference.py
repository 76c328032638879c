"""Render `docs/sftjob-reference.md`: every spec and status field with type, default and description."""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sftjob_api.types import SFTJob, SFTJobSpec, SFTJobStatus


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see type"
        return f"`{json.dumps(value)}`"
    if info.default is None or info.default is PydanticUndefined:
        return ""
    return f"`{json.dumps(info.default)}`"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for info in model.model_fields.values():
            for candidate in _nested(info.annotation):
                visit(candidate)

    visit(root)
    return seen


def _nested(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _nested(arg)]


def _table(model: type[BaseModel]) -> list[str]:
    lines = [f"### {model.__name__}", "", (model.__doc__ or "").strip().splitlines()[0], ""]
    lines += ["| Field | Type | Default | Description |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        description = " ".join((info.description or "").split()).replace("|", "\\|")
        lines.append(
            f"| `{info.alias or name}` | {_type_name(info.annotation)} | {_default(info)} | {description} |"
        )
    return [*lines, ""]


def render_reference() -> str:
    """The reference page as Markdown.

    Returns:
        The page text (the content of docs/sftjob-reference.md).
    """
    out = [
        "# SFTJob reference",
        "",
        "Generated from `operator/sftjob_api/types/` by `sftjob reference`; do not edit by hand",
        "(a test fails when this page is stale). Wire names are camelCase.",
        "",
        "## Spec",
        "",
    ]
    for model in _models(SFTJobSpec):
        out += _table(model)
    out += ["## Status", "", "Written by the operator only.", ""]
    for model in _models(SFTJobStatus):
        out += _table(model)
    out += ["## Resource", ""]
    out += _table(SFTJob)
    return "\n".join(out).rstrip() + "\n"
