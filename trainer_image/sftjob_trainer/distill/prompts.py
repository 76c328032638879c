"""Read what the teacher answers (prompt files, seed tasks) and what must not leak into training (evaluation texts).

Rows are read with the data pipeline's reader (jsonl, json, parquet, csv; a path or s3://), renamed with
`prompts.columnMap`, and mapped by `prompts.schema`:

- `prompt`: a string `prompt` column, sent as one user turn;
- `alpaca`: `instruction` plus an optional `input` (appended after a blank line), and an optional `system`;
- `messages`: a conversation of `{role, content}` turns with string content; turns after the last user turn are
  dropped, so an existing SFT dataset can be re-answered by a stronger model.

`auto` picks the first of messages, alpaca, prompt whose columns the row has.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.types import PromptsSpec, SFTJobSpec
from sftjob_trainer.data.problems import DataError
from sftjob_trainer.data.readers import Row, read_dataset
from sftjob_trainer.trainer_error import TrainerError

ROLES = ("system", "user", "assistant")
PROMPTS_FIELD = "distillation.prompts.uri"


@dataclass(frozen=True)
class PromptItem:
    """One prompt for the teacher, with what the filters need."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) turns, ending with a user turn; a system turn only if the row had one."""
    reference: str | None = None
    """The reference answer (the verifier's `referenceColumn`), if asked for."""
    line: int = 0
    """Line (row number) in the source file."""

    @property
    def text(self) -> str:
        """The user turns' text: what duplicates and contamination are judged on."""
        return "\n".join(content for role, content in self.messages if role == "user")

    def with_system(self, system_prompt: str | None) -> tuple[tuple[str, str], ...]:
        """The turns sent to the teacher: `system_prompt` first unless the row has its own system turn."""
        if not system_prompt or any(role == "system" for role, _ in self.messages):
            return self.messages
        return (("system", system_prompt), *self.messages)


class PromptError(ValueError):
    """A prompt row that does not fit its schema."""


def detect_prompt_schema(row: Mapping[str, Any]) -> str | None:
    """messages, alpaca or prompt: the first whose columns `row` has, or None."""
    for schema, column in (("messages", "messages"), ("alpaca", "instruction"), ("prompt", "prompt")):
        if column in row:
            return schema
    return None


def _string(row: Mapping[str, Any], column: str, optional: bool = False) -> str:
    value = row.get(column)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise PromptError(f"column '{column}' must be a string, got {type(value).__name__}")
    return value


def to_prompt(row: Mapping[str, Any], schema: str, line: int, reference_column: str | None) -> PromptItem:
    """Map one (renamed) row to a prompt (pure).

    Args:
        row: The row, after `columnMap`.
        schema: prompt, alpaca or messages.
        line: Its line in the file.
        reference_column: The column holding the reference answer, or None.

    Returns:
        The prompt.

    Raises:
        PromptError: A missing or mistyped column, or a conversation without a user turn.
    """
    if schema == "prompt":
        messages: list[tuple[str, str]] = [("user", _string(row, "prompt"))]
    elif schema == "alpaca":
        extra = _string(row, "input", optional=True)
        instruction = _string(row, "instruction")
        messages = [("user", f"{instruction}\n\n{extra}" if extra.strip() else instruction)]
        if _string(row, "system", optional=True):
            messages.insert(0, ("system", _string(row, "system")))
    elif schema == "messages":
        turns = row.get("messages")
        if not isinstance(turns, list):
            raise PromptError(f"column 'messages' must be a list of {{role, content}}, got {type(turns).__name__}")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, Mapping) or turn.get("role") not in ROLES or not isinstance(turn.get("content"),
                                                                                                str):
                raise PromptError(f"messages[{i}] must be {{role: system|user|assistant, content: string}}")
            messages.append((str(turn["role"]), str(turn["content"])))
        last_user = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=None)
        if last_user is None:
            raise PromptError("the conversation has no user turn to answer")
        messages = messages[:last_user + 1]
    else:
        raise PromptError(f"unknown prompts schema '{schema}'")
    if not any(content.strip() for role, content in messages if role == "user"):
        raise PromptError("the prompt is empty")
    reference = None
    if reference_column is not None:
        value = row.get(reference_column)
        if value is None or isinstance(value, (list, dict)):
            raise PromptError(f"no reference answer in column '{reference_column}' "
                              "(distillation.filters.verifier.referenceColumn)")
        reference = str(value)
    return PromptItem(messages=tuple(messages), reference=reference, line=line)


def _rows(uri: str, fmt: str, field: str) -> list[Row]:
    try:
        return read_dataset(uri, fmt).rows
    except DataError as err:
        raise TrainerError(err.code, str(err), field) from None


def load_prompts(spec: PromptsSpec, reference_column: str | None) -> list[PromptItem]:
    """Read the prompts file of `spec` (the first `limit` rows).

    Args:
        spec: `distillation.prompts` (with `uri`).
        reference_column: The verifier's reference column, or None.

    Returns:
        The prompts, in file order.

    Raises:
        TrainerError: DatasetUnreadable, InvalidDataset (naming file:line and the column) or a storage code.
    """
    assert spec.uri is not None
    rows = _rows(spec.uri, spec.format, PROMPTS_FIELD)
    if spec.limit is not None:
        rows = rows[:spec.limit]
    items = []
    for row in rows:
        data = {spec.column_map.get(k, k): v for k, v in row.data.items()}
        schema = spec.prompt_schema if spec.prompt_schema != "auto" else detect_prompt_schema(data)
        try:
            if schema is None:
                raise PromptError(f"cannot tell the prompt from the columns ({', '.join(sorted(data)) or 'none'}); "
                                  "expected messages, instruction or prompt: set distillation.prompts.schema or "
                                  "rename a column with distillation.prompts.columnMap")
            items.append(to_prompt(data, schema, row.line, reference_column))
        except PromptError as err:
            raise TrainerError(ErrorCode.INVALID_DATASET, f"{spec.uri}:{row.line}: {err}", PROMPTS_FIELD) from None
    return items


def load_seed_tasks(uri: str) -> list[str]:
    """The instructions of a Self-Instruct seed file (`instruction` [+ `input`] or `prompt` column).

    Raises:
        TrainerError: As `load_prompts`, naming `distillation.prompts.generate.seedTasks`.
    """
    field = "distillation.prompts.generate.seedTasks"
    tasks = []
    for row in _rows(uri, "auto", field):
        schema = detect_prompt_schema(row.data)
        try:
            if schema not in ("alpaca", "prompt"):
                raise PromptError("a seed task needs an instruction or prompt column")
            tasks.append(to_prompt(row.data, schema, row.line, None).text)
        except PromptError as err:
            raise TrainerError(ErrorCode.INVALID_DATASET, f"{uri}:{row.line}: {err}", field) from None
    return tasks


def strings(value: Any) -> Iterator[str]:
    """Every string inside a decoded row (nested lists and mappings included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        for item in value:
            yield from strings(item)


def contamination_sources(spec: SFTJobSpec) -> list[tuple[str, str]]:
    """(uri, field) of every file to decontaminate against.

    They are the validation file, the files of custom evaluation tasks and `filters.decontaminate.uris`.
    """
    distillation = spec.distillation
    assert distillation is not None
    sources = []
    if spec.dataset.validation is not None:
        sources.append((spec.dataset.validation.uri, "dataset.validation.uri"))
    sources += [(task.uri, f"evaluation.tasks[{i}].uri") for i, task in enumerate(spec.evaluation.tasks) if task.uri]
    sources += [(uri, f"distillation.filters.decontaminate.uris[{i}]")
                for i, uri in enumerate(distillation.filters.decontaminate.uris)]
    return sources


def load_texts(sources: Sequence[tuple[str, str]]) -> list[str]:
    """Every string of every row of the source files.

    Raises:
        TrainerError: As `load_prompts`, naming the field of the unreadable file.
    """
    texts: list[str] = []
    for uri, field in sources:
        for row in _rows(uri, "auto", field):
            texts.extend(strings(row.data))
    return texts
