"""Read a dataset file (jsonl, json array, parquet, csv) from a local path or `s3://` into rows.

This is the only module of the data pipeline that does I/O. Every row keeps the 1-based line it
started on (the row number for parquet), so later errors can name `file:line`.

A URI with `*`, `?` or `[...]` is a glob over shards (`s3://bucket/data/*.parquet`, `dir/part-*.jsonl`):
`list_shards` lists the folder before the first wildcard (one S3 listing, or a directory walk) and keeps
the names the pattern matches; `read_source` then reads the shards one file at a time, in name order,
or, when a `samples` count needs only some rows, in a seeded order until enough rows are read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from dataclasses import dataclass
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.types import is_glob
from sftjob_trainer import object_store
from sftjob_trainer.data.problems import DataError, Problem

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
    raise DataError(ErrorCode.INVALID_DATASET,
                    f"cannot tell the file format from the name '{name}'; use a .jsonl, .json, "
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
    return _read_file(uri, declared_format, allow_empty=False)


def _read_file(uri: str, declared_format: str, *, allow_empty: bool) -> RawDataset:
    fmt = detect_file_format(uri, declared_format)
    try:
        data = object_store.read_bytes(uri)
    except object_store.StorageError as err:
        code = ErrorCode.DATASET_UNREADABLE if err.code == object_store.NOT_FOUND else err.code
        raise DataError(code, f"cannot read the dataset: {err}", file=uri) from None
    return parse_bytes(data, uri, fmt, allow_empty=allow_empty)


def parse_bytes(data: bytes, uri: str, fmt: str, *, allow_empty: bool = False) -> RawDataset:
    """Decode the bytes of a dataset file (pure: no I/O).

    Args:
        data: The file's bytes.
        uri: The file, for problems.
        fmt: jsonl, json, parquet or csv.
        allow_empty: Accept a file without rows (a shard of a glob: writers such as Spark leave empty parts).

    Raises:
        DataError: InvalidDataset naming file:line for the first problems found.
    """
    digest = hashlib.sha256(data).hexdigest()
    if not data.strip():
        if allow_empty:
            return RawDataset(uri=uri, format=fmt, rows=[], sha256=digest)
        raise DataError(ErrorCode.INVALID_DATASET, "the file is empty: expected at least one row", file=uri, line=1)
    parser = {"jsonl": _parse_jsonl, "json": _parse_json, "csv": _parse_csv, "parquet": _parse_parquet}[fmt]
    rows, problems = parser(data, uri)
    if problems:
        raise DataError.from_problems(ErrorCode.INVALID_DATASET, problems)
    if not rows and not allow_empty:
        raise DataError(ErrorCode.INVALID_DATASET, "the file holds no rows", file=uri, line=1)
    return RawDataset(uri=uri, format=fmt, rows=rows, sha256=digest)


@dataclass(frozen=True)
class SourceData:
    """One training source as read: a file, or the shards of a glob that were read."""

    name: str
    """The source's name (`sources[].name` or derived from the URI)."""
    uri: str
    """The file or glob, as configured."""
    files: list[RawDataset]
    """The files read, in read order."""
    files_matched: int
    """How many files the URI matched (more than `len(files)` when a `samples` count needed only some)."""

    @property
    def row_count(self) -> int:
        """Rows read, over every file."""
        return sum(len(f.rows) for f in self.files)

    @property
    def sha256(self) -> str:
        """The file's digest; for a glob, a digest over the name and digest of every shard read."""
        if not is_glob(self.uri) and len(self.files) == 1:
            return self.files[0].sha256
        lines = "".join(f"{f.uri}\0{f.sha256}\n" for f in self.files)
        return hashlib.sha256(f"{self.uri}\n{lines}".encode()).hexdigest()


def split_glob(uri: str) -> tuple[str, str]:
    """(the folder before the first wildcard, the pattern relative to it); the folder is "" for a bare pattern."""
    first = min(i for i, c in enumerate(uri) if c in "*?[")
    cut = uri.rfind("/", 0, first)
    if cut < 0:
        return "", uri
    return (uri[:cut] or "/"), uri[cut + 1:]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a glob over `/`-separated names: `*` and `?` stay within one segment, `**` crosses them."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[" and (end := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1:end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out))


def list_shards(uri: str, field: str) -> list[str]:
    """The files a URI names: itself, or every file a glob matches, in name order.

    Args:
        uri: A file or a glob (`s3://bucket/data/*.parquet`, `dir/**/*.jsonl`).
        field: The spec field the URI came from, for errors.

    Raises:
        DataError: DatasetUnreadable when a glob matches nothing; a storage code when the listing fails.
    """
    if not is_glob(uri):
        return [uri]
    base, pattern = split_glob(uri)
    try:
        names = object_store.list_files(base or ".")
    except object_store.StorageError as err:
        raise DataError(err.code, f"cannot list the shards of the glob: {err}", file=uri, field=field) from None
    regex = glob_regex(pattern)
    matched = [object_store.join(base, name) if base else name for name in names if regex.fullmatch(name)]
    if not matched:
        where = f"{len(names)} file{'' if len(names) == 1 else 's'} there" if names else "no file there at all"
        raise DataError(ErrorCode.DATASET_UNREADABLE,
                        f"the glob matches no file under {base or '.'} ({where}); check the pattern (`*` and `?` "
                        "stay within one folder, `**` crosses folders), the bucket and prefix, and that the "
                        "shards were written", file=uri, field=field)
    return matched


def read_source(name: str, uri: str, declared_format: str, *, field: str, min_rows: int | None = None,
                seed: int = 0) -> SourceData:
    """Read a source: one file, or the shards of a glob one file at a time.

    Args:
        name: The source's name.
        uri: A file or a glob.
        declared_format: `auto` (each file's extension) or jsonl/json/parquet/csv.
        field: The spec field of the URI, for errors.
        min_rows: Stop once this many rows are read (the shards then go in an order seeded by `seed`, so a
            sample does not always come from the first shards); None reads every file.
        seed: The job's seed.

    Raises:
        DataError: As `list_shards` and `read_dataset`.
    """
    files = list_shards(uri, field)
    order = list(files)
    if min_rows is not None and len(order) > 1:
        random.Random(f"{seed}:shards:{uri}").shuffle(order)  # noqa: S311 - a seeded order, not cryptography
    read: list[RawDataset] = []
    rows = 0
    for file in order:
        if min_rows is not None and rows >= min_rows:
            break
        raw = _read_file(file, declared_format, allow_empty=is_glob(uri))
        read.append(raw)
        rows += len(raw.rows)
    return SourceData(name=name, uri=uri, files=read, files_matched=len(files))


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
