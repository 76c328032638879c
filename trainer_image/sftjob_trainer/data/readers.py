"""Read a dataset file (jsonl, json array, parquet, csv) from a local path or `s3://` into rows.

This is the only module of the data pipeline that does I/O. Every row keeps the 1-based line it
started on (the row number for parquet), so later errors can name `file:line`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

from sftjob_trainer import storage
from sftjob_trainer.data.errors import DataError, Problem

# No sane SFT example is this large (4 MiB of text is ~1M tokens, beyond any model's context); a bigger
# row is a broken file (an unterminated line, a base64 blob), refused before it is parsed.
MAX_ROW_BYTES = 4 * 1024 * 1024
# Stop collecting row errors after this many: the first few say what is wrong with a broken file.
MAX_PROBLEMS = 50
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Row:
    """One record of a dataset file."""

    line: int
    """1-based line the record starts on (row number for parquet)."""
    data: dict[str, Any]
    """The decoded record."""


@dataclass(frozen=True)
class RawDataset:
    """The rows of one file and the digest of its bytes."""

    uri: str
    """Where the file was read from."""
    format: str
    """jsonl, json, parquet or csv."""
    rows: list[Row]
    """Every record, in file order."""
    sha256: str
    """Hex digest of the file's bytes."""


def detect_file_format(uri: str, declared: str = "auto") -> str:
    """The file format: `declared` unless it is `auto`, else from the file extension.

    Raises:
        DataError: InvalidDataset when the extension is unknown.
    """
    if declared != "auto":
        return declared
    name = uri.rsplit("/", 1)[-1].lower()
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise DataError("InvalidDataset", f"cannot tell the file format from the name '{name}'; use a .jsonl, .json, "
                    ".parquet or .csv extension or set dataset.train.format", file=uri, field="format")


def read_dataset(uri: str, declared_format: str = "auto") -> RawDataset:
    """Read every row of a dataset file.

    Args:
        uri: A filesystem path or `s3://bucket/key` (credentials from the AWS environment variables).
        declared_format: `auto` (from the extension) or jsonl/json/parquet/csv.

    Returns:
        The rows with their lines and the file's sha256.

    Raises:
        DataError: DatasetUnreadable (missing file), a storage code, or InvalidDataset (malformed content).
    """
    fmt = detect_file_format(uri, declared_format)
    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as err:
        code = "DatasetUnreadable" if err.code == "NotFound" else err.code
        raise DataError(code, f"cannot read the dataset: {err}", file=uri) from None
    return parse_bytes(data, uri, fmt)


def parse_bytes(data: bytes, uri: str, fmt: str) -> RawDataset:
    """Decode the bytes of a dataset file (pure: no I/O).

    Raises:
        DataError: InvalidDataset naming file:line for the first problems found.
    """
    digest = hashlib.sha256(data).hexdigest()
    if not data.strip():
        raise DataError("InvalidDataset", "the file is empty: expected at least one row", file=uri, line=1)
    parser = {"jsonl": _parse_jsonl, "json": _parse_json, "csv": _parse_csv, "parquet": _parse_parquet}[fmt]
    rows, problems = parser(data, uri)
    if problems:
        raise DataError.from_problems("InvalidDataset", problems)
    if not rows:
        raise DataError("InvalidDataset", "the file holds no rows", file=uri, line=1)
    return RawDataset(uri=uri, format=fmt, rows=rows, sha256=digest)


def _too_big(size: int) -> str:
    return (f"the row is {size / 1e6:.1f} MB, more than the {MAX_ROW_BYTES // (1024 * 1024)} MiB limit per row; "
            "is a line break missing?")


def _decode(raw: bytes, uri: str, line: int) -> tuple[str | None, Problem | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as err:
        return None, Problem(f"byte {err.start + 1} of the line ({raw[err.start:err.start + 1]!r}) is not valid "
                             "UTF-8; save the file as UTF-8", uri, line)


def _parse_jsonl(data: bytes, uri: str) -> tuple[list[Row], list[Problem]]:
    rows: list[Row] = []
    problems: list[Problem] = []
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if len(problems) >= MAX_PROBLEMS:
            break
        if len(raw) > MAX_ROW_BYTES:
            problems.append(Problem(_too_big(len(raw)), uri, number))
            continue
        if not raw.strip():
            continue
        text, problem = _decode(raw, uri, number)
        if problem is not None or text is None:
            problems.append(problem or Problem("unreadable line", uri, number))
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            problems.append(Problem(f"invalid JSON at column {err.colno}: {err.msg}", uri, number))
            continue
        if not isinstance(value, dict):
            problems.append(Problem(f"expected a JSON object per line, got {_json_type(value)}", uri, number))
            continue
        rows.append(Row(number, value))
    return rows, problems


def _parse_json(data: bytes, uri: str) -> tuple[list[Row], list[Problem]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return [], [Problem("the file is not valid UTF-8 here; save the file as UTF-8", uri, line)]
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        return [], [Problem("expected a JSON array of objects ([{...}, ...]); for one object per line use .jsonl",
                            uri, text.count("\n", 0, pos) + 1)]
    rows: list[Row] = []
    pos = _skip_ws(text, pos + 1)
    line, counted = 1, 0
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            return rows, [Problem(f"invalid JSON at column {err.colno}: {err.msg}", uri, err.lineno)]
        if len(text[pos:end].encode("utf-8")) > MAX_ROW_BYTES:
            return rows, [Problem(_too_big(len(text[pos:end].encode("utf-8"))), uri, line)]
        if not isinstance(value, dict):
            return rows, [Problem(f"expected an object as array element, got {_json_type(value)}", uri, line)]
        rows.append(Row(line, value))
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] != "]":
            lineno = text.count("\n", 0, pos) + 1
            return rows, [Problem("invalid JSON: expected ',' or ']' between array elements", uri, lineno)]
    if pos >= len(text):
        return rows, [Problem("invalid JSON: the array is not closed with ']'", uri, text.count("\n") + 1)]
    return rows, []


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parse_csv(data: bytes, uri: str) -> tuple[list[Row], list[Problem]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return [], [Problem("the file is not valid UTF-8 here; save the file as UTF-8", uri, line)]
    csv.field_size_limit(MAX_ROW_BYTES)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    try:
        header = next(reader)
    except csv.Error as err:
        return [], [Problem(f"invalid CSV header: {err}", uri, 1)]
    except StopIteration:
        return [], []
    if len(set(header)) != len(header):
        return [], [Problem(f"duplicate column names in the header: {header}", uri, 1)]
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            message = str(err)
            if "field larger than field limit" in message:
                message = _too_big(MAX_ROW_BYTES + 1)
            return rows, [Problem(f"invalid CSV: {message}", uri, start)]
        if not values:
            continue
        if len(values) != len(header):
            return rows, [Problem(f"expected {len(header)} columns ({', '.join(header)}), got {len(values)}",
                                  uri, start)]
        rows.append(Row(start, dict(zip(header, values, strict=True))))
    return rows, []


def _parse_parquet(data: bytes, uri: str) -> tuple[list[Row], list[Problem]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as err:
        return [], [Problem(f"not a readable parquet file: {err}", uri, 1)]
    return [Row(i, value) for i, value in enumerate(table.to_pylist(), start=1)], []


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
