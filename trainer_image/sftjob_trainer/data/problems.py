"""Errors of the data pipeline: one clear paragraph that names file:line and the field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem with one row (or the whole file) of a dataset."""

    message: str
    """What is wrong and, where it helps, what to do."""
    file: str | None = None
    """The dataset file (path or s3:// URI)."""
    line: int | None = None
    """1-based line (jsonl, json, csv) or row number (parquet)."""
    field: str | None = None
    """The column or nested field at fault, e.g. `messages[2].content`."""

    def location(self) -> str:
        """`file:line: field` as far as known (without the message)."""
        where = self.file or "(dataset)"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.field}" if self.field else where

    def __str__(self) -> str:
        return f"{self.location()}: {self.message}"

    def to_json(self) -> dict[str, object]:
        """The `{line, field, message}` object of `sftjob data inspect --json` (plus the file)."""
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


class DataError(Exception):
    """Bad input data that dooms a job.

    `code` is an SFTJob error code: `InvalidDataset` (rows that cannot be used), `DatasetUnreadable`
    (missing or unreadable file), `PreflightFailed` (the data as a whole cannot train a useful model),
    or a storage code (`AccessDenied`, `MissingCredentials`, `StorageUnavailable`).
    `str(err)` is one paragraph: the first problem at `file:line: field: message`, and how many more.
    """

    def __init__(self, code: str, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, problems: list[Problem] | None = None) -> None:
        self.code = code
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.problems = problems if problems is not None else [Problem(message, file, line, field)]
        super().__init__(self._paragraph())

    @classmethod
    def from_problems(cls, code: str, problems: list[Problem]) -> DataError:
        """One error for many problems; it reports the first and counts the rest."""
        first = problems[0]
        return cls(code, first.message, file=first.file, line=first.line, field=first.field, problems=problems)

    def _paragraph(self) -> str:
        text = str(Problem(self.message, self.file, self.line, self.field))
        if len(self.problems) > 1:
            text += f" (and {len(self.problems) - 1} more problem{'s' if len(self.problems) > 2 else ''})"
        return text
