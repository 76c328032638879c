"""Prepared data cached by content hash, so a retried job does not read, render and tokenize again.

The key is a sha256 over everything that decides the result: the bytes of the training and
validation files (every shard read, for a glob or a mixture), the tokenizer (its `tokenizer.json`,
chat template, special tokens and length limit), every `dataset` field but the credentials (a
mixture's weights and counts included), the seed, the model's length limit, and `PIPELINE_VERSION`.
An entry is a directory `<root>/<key>/`:

- `train.parquet`, `validation.parquet`: one row per example (`input_ids`, `labels`, `prompt_ids`
  as int32 lists, `reference`, `line`, `source`: the mixture source's index, `served`: a held-out row's
  conversation for the serving check);
- `entry.json`, written LAST: the key, the sha256 and size of each parquet file, the report,
  `max_seq_length`, `chat_template` and `stop_token_ids`.

A reader trusts an entry only when `entry.json` parses, names this key and version, and every data
file has the recorded size and digest; anything else is a miss and the entry is rebuilt. Nothing is
ever unpickled: a cache may be shared, and parquet and JSON cannot run code when read.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftjob_api.layout import DATA_CACHE_DIR
from sftjob_api.types import DatasetSpec
from sftjob_trainer import object_store
from sftjob_trainer.data.report import DataReport, Sample, SourceReport
from sftjob_trainer.data.tokens import ByteTokenizer

if TYPE_CHECKING:
    from sftjob_trainer.data.examples import Example, PreparedData

log = logging.getLogger(__name__)

# Bump whenever the pipeline's output for the same inputs changes (formats, templates, masks, length
# policy, filters, report fields): entries of another version are never read.
PIPELINE_VERSION = 5
ENTRY_FILE = "entry.json"
ENTRY_FORMAT = "sftjob-data-cache"
SPLITS = ("train", "validation")
CACHE_ENV = "SFTJOB_DATA_CACHE"
# Values of SFTJOB_DATA_CACHE that switch the local cache off.
DISABLED = frozenset({"", "off", "none", "0"})
KEY_PREFIX_CHARS = 12  # what logs and status show of the key: enough to tell entries apart by eye


def default_local_root() -> str | None:
    """The local cache directory: `$SFTJOB_DATA_CACHE`, else `~/.cache/sftjob/data`; None when set to `off`."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return str(Path.home() / ".cache" / "sftjob" / "data")
    return None if value.strip().lower() in DISABLED else value


@dataclass(frozen=True)
class DataCache:
    """Where prepared data is looked up and stored: local directories and/or `s3://` prefixes, in order."""

    roots: tuple[str, ...]
    """Cache roots; an entry is `<root>/<key>/`. Lookups try them in order."""

    @classmethod
    def for_job(cls, output_uri: str) -> DataCache:
        """The local cache (see `default_local_root`) and `<output_uri>/cache/data`."""
        local = default_local_root()
        return cls(tuple(r for r in (local, object_store.join(output_uri, DATA_CACHE_DIR)) if r))


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A digest of everything about a tokenizer that changes tokens or rendering; None when it cannot be known."""
    if isinstance(tokenizer, ByteTokenizer):
        return hashlib.sha256(json.dumps(["byte-level", sorted(tokenizer._special.items())]).encode()).hexdigest()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    import tokenizers

    described = {
        "class": type(tokenizer).__name__,
        "tokenizers": tokenizers.__version__,
        "tokenizer.json": hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest(),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {name: getattr(tokenizer, name, None)
                    for name in ("bos_token", "eos_token", "pad_token", "unk_token")},
        "model_max_length": getattr(tokenizer, "model_max_length", None),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def cache_key(spec: DatasetSpec, tokenizer: Any, train_sha256: str, validation_sha256: str | None, seed: int,
              model_max_length: int | None) -> str | None:
    """The content hash of a preparation; None when the tokenizer cannot be fingerprinted (no caching)."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        return None
    inputs = {
        "version": PIPELINE_VERSION,
        "train": train_sha256,
        "validation": validation_sha256,
        # Every dataset field but the credentials; a field added later joins the key by itself.
        "spec": spec.model_dump(mode="json", by_alias=True, exclude={"secret_ref"}),
        "seed": seed,
        "model_max_length": model_max_length,
        "tokenizer": fingerprint,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


class CorruptEntry(Exception):
    """A cache entry that is incomplete, of another version, or does not match its digests."""


def load(cache: DataCache, key: str) -> tuple[PreparedData, str] | None:
    """The prepared data stored under `key` and the root it came from, or None when no root has a sound entry.

    An entry found in a later root is copied to the earlier ones (best effort), so the next lookup
    is local.
    """
    for index, root in enumerate(cache.roots):
        entry_uri = object_store.join(root, key)
        try:
            prepared = _read_entry(entry_uri, key)
        except object_store.StorageError as err:
            if err.code != object_store.NOT_FOUND:
                log.warning("data cache: cannot read %s (%s); preparing the data again", entry_uri, err)
            continue
        except OSError as err:  # a local root that is not a directory, unreadable files
            log.warning("data cache: cannot read %s (%s); preparing the data again", entry_uri, err)
            continue
        except CorruptEntry as err:
            log.warning("data cache: ignoring the entry at %s: %s", entry_uri, err)
            continue
        for earlier in cache.roots[:index]:
            _store_quietly(earlier, key, prepared)
        return prepared, root
    return None


def store(cache: DataCache, key: str, prepared: PreparedData) -> list[str]:
    """Write `prepared` under `key` in every root; returns a warning per root that could not be written."""
    return [w for root in cache.roots if (w := _store_quietly(root, key, prepared))]


def _store_quietly(root: str, key: str, prepared: PreparedData) -> str:
    try:
        write_entry(object_store.join(root, key), key, prepared)
    except (object_store.StorageError, OSError, ValueError) as err:
        # A cache that cannot be written costs time on the next attempt, never the job. (ValueError: pyarrow's
        # ArrowInvalid, e.g. a token id beyond int32 from an exotic tokenizer.)
        log.warning("data cache: cannot write to %s: %s", root, err)
        return f"the data cache at {root} could not be written ({err}); a retry prepares the data again"
    return ""


def write_entry(entry_uri: str, key: str, prepared: PreparedData) -> None:
    """Write the data files, then `entry.json` (a reader trusts the entry only once that exists)."""
    files: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        examples: list[Example] = getattr(prepared, split)
        data = _to_parquet(examples)
        name = f"{split}.parquet"
        object_store.write_bytes(object_store.join(entry_uri, name), data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "examples": len(examples)}
    report = prepared.report.to_json()
    report["cache"] = ""  # hit or miss is a fact of each load, not of the stored entry
    entry = {"format": ENTRY_FORMAT, "version": PIPELINE_VERSION, "key": key, "files": files, "report": report,
             "max_seq_length": prepared.max_seq_length, "chat_template": prepared.chat_template,
             "stop_token_ids": list(prepared.stop_token_ids)}
    object_store.write_bytes(object_store.join(entry_uri, ENTRY_FILE),
                             json.dumps(entry, sort_keys=True).encode("utf-8"))


def _read_entry(entry_uri: str, key: str) -> PreparedData:
    from sftjob_trainer.data.examples import PreparedData

    raw = object_store.read_bytes(object_store.join(entry_uri, ENTRY_FILE))
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptEntry(f"{ENTRY_FILE} is not valid JSON ({err})") from None
    if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
        raise CorruptEntry(f"{ENTRY_FILE} is not a data cache entry")
    if entry.get("version") != PIPELINE_VERSION or entry.get("key") != key:
        raise CorruptEntry(f"written for pipeline version {entry.get('version')!r}, key {entry.get('key')!r}")
    try:
        splits = {split: _read_split(entry_uri, f"{split}.parquet", entry["files"][f"{split}.parquet"])
                  for split in SPLITS}
        report = _report_from_json(entry["report"])
        max_seq_length, chat_template = entry["max_seq_length"], entry["chat_template"]
        stops = entry["stop_token_ids"]
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptEntry(f"{ENTRY_FILE} lacks or mistypes {err}") from None
    if not (isinstance(max_seq_length, int) and isinstance(chat_template, str) and isinstance(stops, list)
            and all(isinstance(s, int) for s in stops)):
        raise CorruptEntry(f"{ENTRY_FILE} has fields of the wrong type")
    if (len(splits["train"]), len(splits["validation"])) != (report.train_examples, report.validation_examples):
        raise CorruptEntry("the example counts do not match the report")
    return PreparedData(splits["train"], splits["validation"], report, max_seq_length, chat_template, stops)


def _read_split(entry_uri: str, name: str, recorded: dict[str, Any]) -> list[Example]:
    data = object_store.read_bytes(object_store.join(entry_uri, name))
    if len(data) != recorded["bytes"] or hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        raise CorruptEntry(f"{name} does not match the size and sha256 recorded in {ENTRY_FILE}")
    examples = _from_parquet(data)
    if len(examples) != recorded["examples"]:
        raise CorruptEntry(f"{name} holds {len(examples)} examples, {ENTRY_FILE} says {recorded['examples']}")
    return examples


def _schema() -> Any:
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    return pa.schema([("input_ids", ids), ("labels", ids), ("prompt_ids", ids), ("reference", pa.string()),
                      ("line", pa.int64()), ("source", pa.int32()), ("served", pa.string())])


def _to_parquet(examples: list[Example]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict({
        "input_ids": [e.input_ids for e in examples],
        "labels": [e.labels for e in examples],
        "prompt_ids": [e.prompt_ids for e in examples],
        "reference": [e.reference for e in examples],
        "line": [e.line for e in examples],
        "source": [e.source for e in examples],
        "served": [e.served for e in examples],
    }, schema=_schema())
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _from_parquet(data: bytes) -> list[Example]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sftjob_trainer.data.examples import Example

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as err:
        raise CorruptEntry(f"unreadable parquet ({err})") from None
    if not table.schema.equals(_schema()):
        raise CorruptEntry(f"unexpected columns {table.schema.names}")
    columns = {name: _lists(table.column(name)) for name in ("input_ids", "labels", "prompt_ids")}
    references, lines = table.column("reference").to_pylist(), table.column("line").to_pylist()
    sources, served = table.column("source").to_pylist(), table.column("served").to_pylist()
    out = []
    for i, (ids, labels, prompt) in enumerate(zip(columns["input_ids"], columns["labels"], columns["prompt_ids"],
                                                  strict=True)):
        if (len(ids) != len(labels) or references[i] is None or lines[i] is None or sources[i] is None
                or served[i] is None):
            raise CorruptEntry(f"example {i} is inconsistent")
        out.append(Example(ids, labels, prompt, references[i], lines[i], sources[i], served[i]))
    return out


def _lists(column: Any) -> list[list[int]]:
    """A list<int32> column as Python lists, through one flat conversion (much faster than to_pylist)."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if array.null_count or array.values.null_count:
        raise CorruptEntry("a token list or token is null")
    if len(array) == 0:
        return []
    offsets = array.offsets.to_pylist()
    flat = array.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False).tolist()
    base = offsets[0]
    return [flat[start - base:end - base] for start, end in itertools.pairwise(offsets)]


def _report_from_json(data: dict[str, Any]) -> DataReport:
    hints = typing.get_type_hints(DataReport)
    if not isinstance(data, dict) or set(data) != {f.name for f in fields(DataReport)}:
        raise CorruptEntry("the stored report does not match this version's report fields")
    for name, value in data.items():
        expected = typing.get_origin(hints[name]) or hints[name]
        # JSON writes 1.0 as 1.0 but a hand-edited or foreign writer may not: an int is a fine float.
        accepted = (int, float) if expected is float else expected
        if not isinstance(value, accepted):
            raise CorruptEntry(f"the stored report's {name} is not a {expected.__name__}")
    values = dict(data)
    values["samples"] = [Sample(int(s["line"]), [(str(t), bool(f)) for t, f in s["segments"]])
                         for s in data["samples"]]
    values["sources"] = [SourceReport(**s) for s in data["sources"]]
    return DataReport(**values)
