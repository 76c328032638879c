"""Turn pydantic validation errors into `field: message` problems a user can act on.

Used by `sftjob validate` (with file:line) and by the operator (the `error.field` and
`error.message` of an InvalidSpec status), so both say the same thing.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from sftjob_api.types import API_VERSION, KIND, SFTJob, parse_sftjob

# Model validators report cross-field problems as "field: message" (see sftjob_api/types/).
_FIELD_PREFIX = re.compile(r"^([a-zA-Z][a-zA-Z0-9]*): (.*)$", re.DOTALL)


@dataclass(frozen=True)
class FieldProblem:
    """One problem with one field of a document."""

    path: tuple[str | int, ...]
    """The field, as keys and list indexes from the document root."""
    message: str
    """What is wrong and, where it helps, what is expected."""

    @property
    def field(self) -> str:
        """The dotted field name, e.g. `spec.method.lora.r` or `spec.compute.tolerations[0].key`."""
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out or "(document)"


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The API type that holds the field at `path` (wire names), if the path stays inside the types."""
    model: Any = SFTJob
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        match = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if match is None:
            return None
        model = _inner_model(match.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _wire_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _describe(error: Any) -> FieldProblem:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "lax-or-strict"))))
    # Unions report the branch tried (e.g. "int", "literal['auto']"): not a field name.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"int", "str", "float"})))
    kind, message, value = error["type"], error["msg"], error.get("input")
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        prefixed = _FIELD_PREFIX.match(message)
        if prefixed and _model_at(loc) is not None and prefixed.group(1) in _wire_names(_model_at(loc)):  # type: ignore[arg-type]
            loc, message = (*loc, prefixed.group(1)), prefixed.group(2)
    elif kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        message = "unknown field"
        if parent is not None:
            names = _wire_names(parent)
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            message += f" (did you mean '{close[0]}'?)" if close else f"; fields here: {', '.join(names)}"
    elif kind == "missing":
        message = "required field is missing"
    elif kind in ("literal_error", "enum"):
        message = f"{message}, got {value!r}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"expected a mapping, got {type(value).__name__} {value!r}"[:300]
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"{message}, got {value!r}"[:300]
    return FieldProblem(path=loc, message=message)


def describe_validation_error(err: ValidationError) -> list[FieldProblem]:
    """One `FieldProblem` per pydantic error, with wire (camelCase) field paths.

    Args:
        err: The error raised by validating an SFTJob document.

    Returns:
        The problems, in document order of pydantic's report.
    """
    problems: list[FieldProblem] = []
    for error in err.errors(include_url=False):
        problem = _describe(error)
        if problem not in problems:
            problems.append(problem)
    return problems


def check_document(document: Any) -> tuple[SFTJob | None, list[FieldProblem]]:
    """Validate one decoded document as an SFTJob.

    Args:
        document: The decoded YAML/JSON object.

    Returns:
        The job (None when invalid) and the problems (empty when valid).
    """
    if not isinstance(document, dict):
        return None, [FieldProblem(path=(), message=f"expected a mapping (an SFTJob), got {type(document).__name__}")]
    problems = []
    if document.get("apiVersion") != API_VERSION:
        problems.append(
            FieldProblem(("apiVersion",), f"must be '{API_VERSION}', got {document.get('apiVersion')!r}")
        )
    if document.get("kind") != KIND:
        problems.append(FieldProblem(("kind",), f"must be '{KIND}', got {document.get('kind')!r}"))
    if problems:
        return None, problems
    try:
        return parse_sftjob(document), []
    except ValidationError as err:
        return None, describe_validation_error(err)
