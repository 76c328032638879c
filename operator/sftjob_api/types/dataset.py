"""The training data (`spec.dataset`): files, globs over shards, weighted mixtures, templates."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sftjob_api.base import ApiModel, CelRule, Name, StorageUri, Text
from sftjob_api.types.common import MAX_JOB_NAME, DnsLabel, SecretReference

_JINJA = re.compile(r"\{[{%#]")
NAMED_CHAT_TEMPLATES = ("chatml", "llama3", "zephyr")


class DataSource(ApiModel):
    """A dataset file."""

    uri: StorageUri
    """`s3://bucket/key` or a filesystem path of the file."""

    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    """File format. `auto` uses the file extension (`.jsonl`, `.json`, `.parquet`, `.csv`)."""


# Sources of one training mixture: the status lists each, so the list stays short.
MAX_SOURCES = 32
_GLOB_CHARS = frozenset("*?[")


def is_glob(uri: str) -> bool:
    """Whether a dataset URI is a glob over shards (`*`, `?` or `[...]` in it)."""
    return any(c in _GLOB_CHARS for c in uri)


def _default_source_name(uri: str) -> str:
    """A short name for a source: its file name without extension, or the folder of a glob."""
    parts = [p for p in uri.removeprefix("s3://").split("/") if p]
    for part in reversed(parts):
        literal = part
        for i, char in enumerate(part):
            if char in _GLOB_CHARS:
                literal = part[:i]
                break
        literal = re.sub(r"[^a-z0-9]+", "-", literal.split(".", 1)[0].lower()).strip("-")[:MAX_JOB_NAME].strip("-")
        if literal:
            return literal
    return "source"


class MixtureSource(ApiModel):
    """One source of a training mixture: a file or a glob over shards, and its share of the mixture."""

    cel_rules = (
        CelRule(
            rule="!(has(self.weight) && has(self.samples))",
            message="set weight (a proportion of the mixture) or samples (an exact count), not both",
            field_path=".samples",
        ),
    )

    name: DnsLabel | None = None
    """A short name for the dataset stats and the per-source evaluation loss (default: the file name without
    its extension, or the last folder before a glob). Unique within the mixture."""

    uri: StorageUri
    """A file (`s3://bucket/key` or a filesystem path), or a glob over shards (`s3://bucket/data/*.parquet`,
    `dir/part-*.jsonl`; `*` and `?` stay within one path segment, `**` crosses folders). Shards are listed,
    then read one at a time, in name order."""

    format: Literal["auto", "jsonl", "json", "parquet", "csv"] | None = None
    """File format of this source (default: `train.format`, whose `auto` uses each file's extension)."""

    weight: float | None = Field(default=None, gt=0, le=1_000_000)
    """Relative proportion of this source among the weighted sources. The weighted sources together keep the
    size they have (the sum of their usable examples) and share it in proportion to their weights: a source
    smaller than its share is repeated (each example the same number of times, ±1), a larger one is sampled
    without replacement. Neither `weight` nor `samples`: every example of the source, once."""

    samples: int | None = Field(default=None, ge=1, le=1_000_000_000)
    """Exactly this many training examples from this source (before the length policy, which may drop
    overlong ones): sampled without replacement, or repeated when the source has fewer. Shards are read in a
    seeded order only until enough rows are read, so a small sample of a large glob reads a few shards."""

    data_schema: Literal["auto", "prompt_completion", "messages", "alpaca", "sharegpt", "text"] | None = Field(
        default=None, alias="schema"
    )
    """Row layout of this source (default: `dataset.schema`)."""

    column_map: dict[str, Name] | None = Field(default=None, max_length=32)
    """Column renames for this source (default: `dataset.columnMap`): `{fileColumn: expectedColumn}`."""

    @field_validator("weight", mode="before")
    @classmethod
    def _positive_weight(cls, value: Any) -> Any:
        # One message that says what to do, instead of pydantic's bound or type error.
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                             and 0 < value <= 1_000_000):
            return value
        raise ValueError(f"must be a positive number up to 1000000 (a relative proportion such as 0.3, or 3 "
                         f"for three times another source's 1), got {value!r}; to leave a source out, remove it")

    @field_validator("samples", mode="before")
    @classmethod
    def _positive_samples(cls, value: Any) -> Any:
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1_000_000_000):
            return value
        raise ValueError(f"must be a whole number of examples, at least 1, got {value!r}; for a proportion use "
                         "weight instead")

    @model_validator(mode="before")
    @classmethod
    def _no_chat_template(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("chatTemplate" in data or "chat_template" in data):
            raise ValueError(
                "chatTemplate: is set once for the whole dataset (dataset.chatTemplate), not per source: the "
                "model is trained and exported with one chat template, so every source is rendered with it; map "
                "each source to a common layout with its own schema and columnMap instead"
            )
        return data

    @model_validator(mode="after")
    def _weight_or_samples(self) -> MixtureSource:
        if self.weight is not None and self.samples is not None:
            raise ValueError("samples: set weight (a proportion of the mixture) or samples (an exact count), "
                             "not both")
        return self


class TrainingData(ApiModel):
    """The training data: one file, a glob over shards, or a weighted mixture of sources."""

    cel_rules = (
        CelRule(
            rule="has(self.uri) != has(self.sources)",
            message="set uri (one file or a glob over shards) or sources (a mixture), exactly one of them",
            field_path=".sources",
        ),
        CelRule(
            rule="!has(self.sources) || self.sources.all(s, has(s.name) ? "
            "self.sources.exists_one(t, has(t.name) ? t.name == s.name : false) : true)",
            message="source names must be unique within the mixture",
            field_path=".sources",
        ),
    )

    uri: StorageUri | None = None
    """The training file: `s3://bucket/key` or a filesystem path, or a glob over shards
    (`s3://bucket/data/*.parquet`, read one shard at a time). Mutually exclusive with `sources`."""

    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    """File format. `auto` uses the file extension (`.jsonl`, `.json`, `.parquet`, `.csv`). With `sources`,
    the format of every source that sets none."""

    sources: list[MixtureSource] | None = Field(default=None, min_length=1, max_length=MAX_SOURCES)
    """A mixture: several files or globs, each with a `weight` (relative proportion) or a `samples` count.
    The mixture is drawn with `hyperparameters.seed` (the same seed gives the same examples in the same order)
    and shuffled; its realised proportions appear in `status.dataset.sources`. Mutually exclusive with `uri`."""

    @model_validator(mode="after")
    def _one_kind(self) -> TrainingData:
        if (self.uri is None) == (self.sources is None):
            raise ValueError("sources: set uri (one file or a glob over shards) or sources (a mixture), "
                             "exactly one of them")
        names = [s.name for s in self.sources or () if s.name]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"sources: source names must be unique within the mixture; repeated: "
                             f"{', '.join(repeated)}")
        return self

    def mixture(self) -> list[MixtureSource]:
        """The sources, with names and formats resolved; one source (no weight) for `uri`."""
        if self.sources is None:
            return [MixtureSource(name=_default_source_name(self.uri or ""), uri=self.uri or "", format=self.format)]
        taken: set[str] = {s.name for s in self.sources if s.name}
        out = []
        for source in self.sources:
            name = source.name
            if name is None:
                base = _default_source_name(source.uri)
                name, n = base, 1
                while name in taken:
                    n += 1
                    name = f"{base}-{n}"
                taken.add(name)
            out.append(source.model_copy(update={"name": name, "format": source.format or self.format}))
        return out

    def describe(self) -> str:
        """One line for humans: the file or glob, or the sources with their weights or counts."""
        if self.sources is None:
            return str(self.uri)
        parts = []
        for source in self.mixture():
            share = (f" weight {source.weight:g}" if source.weight is not None
                     else f" samples {source.samples}" if source.samples is not None else "")
            parts.append(f"{source.name} ({source.uri}{share})")
        return f"mixture of {len(parts)}: " + ", ".join(parts)


class DatasetSpec(ApiModel):
    """The instruction/response data and how it becomes token sequences."""

    cel_rules = (
        CelRule(
            rule="!(has(self.validation) && has(self.validationSplit))",
            message="set either validation or validationSplit, not both",
            field_path=".validationSplit",
        ),
    )

    train: TrainingData
    """The training data: `{uri}` (one file, or a glob over shards) or `{sources: [...]}` (a weighted mixture)."""

    validation: DataSource | None = None
    """A held-out file (or a glob over shards). Mutually exclusive with `validationSplit`. With a mixture,
    `validationSplit` holds out rows of every source, so the evaluation loss can be reported per source."""

    validation_split: float | None = Field(default=None, gt=0, lt=0.5)
    """Fraction of the training rows held out for validation (split with `hyperparameters.seed`; in a
    mixture, of each source's rows before the mixture is drawn, so no repeated example is on both sides).
    Mutually exclusive with `validation`. Neither set: no evaluation."""

    data_schema: Literal["auto", "prompt_completion", "messages", "alpaca", "sharegpt", "text"] = Field(
        default="auto", alias="schema"
    )
    """Row layout. `auto` detects it from the columns: `prompt`+`completion` (or `response`),
    `messages`, `instruction`+`output` (Alpaca), `conversations` (ShareGPT) or `text`."""

    column_map: dict[str, Name] = Field(default_factory=dict, max_length=32)
    """Renames applied to every row before the schema is detected: `{fileColumn: expectedColumn}`."""

    chat_template: Text = "auto"
    """`auto` (the tokenizer's own template, else ChatML), a named template (`chatml`, `llama3`,
    `zephyr`), or an inline Jinja template."""

    train_on: Literal["assistant", "last_assistant", "all"] = "assistant"
    """Which tokens carry loss: every assistant turn (`assistant`), only the last assistant turn
    (`last_assistant`), or every token (`all`). A trained turn is its content (reasoning and tool calls
    included, as the chat template renders them) and the end-of-turn token right after it. An assistant
    message with `weight: 0` carries no loss."""

    reasoning: Literal["keep", "drop"] = "keep"
    """Reasoning of assistant turns (`reasoning_content`, `reasoning`, `thinking`, or a leading
    `<think>` block): `keep` renders it through the chat template and trains it with the turn (a template
    that shows only the last turn's reasoning keeps only that one; one that cannot render it fails
    preflight); `drop` removes it, so only the answers are trained."""

    max_seq_length: int | Literal["auto"] = Field(
        default="auto",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == string ? self == 'auto' : self >= 16",
                    "message": "must be 'auto' or an integer of at least 16",
                }
            ]
        },
    )
    """Longest example in tokens. `auto`: with `packing`, the longest example (every row the model's context
    holds is kept whole); without, the 99th percentile of the token lengths. Capped at the model's limit."""

    overlong: Literal["truncate_prompt", "drop"] = "truncate_prompt"
    """What happens to an example longer than `maxSeqLength`: cut from the start of the prompt
    (`truncate_prompt`) or `drop` it. Both are counted and reported."""

    max_dropped_fraction: float = Field(default=0.1, ge=0, le=1)
    """Preflight fails when more than this fraction of rows is dropped or truncated."""

    packing: bool = True
    """Pack examples into padding-free sequences whose attention never crosses example boundaries.
    When false, batches are length-grouped and padded."""

    dedup: bool = True
    """Drop exact duplicate rows (after whitespace and case normalisation)."""

    secret_ref: SecretReference | None = None
    """Secret with credentials to read the data (AWS keys, `AWS_ENDPOINT_URL`)."""

    @field_validator("max_seq_length", mode="before")
    @classmethod
    def _seq_length_floor(cls, value: Any) -> Any:
        # One clear message instead of one per union branch.
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 16):
            return value
        raise ValueError(f"must be 'auto' or an integer of at least 16, got {value!r}")

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value == "auto" or value in NAMED_CHAT_TEMPLATES or _JINJA.search(value):
            return value
        raise ValueError(
            f"'{value}' is neither 'auto', a named template ({', '.join(NAMED_CHAT_TEMPLATES)}) nor Jinja"
        )

    @model_validator(mode="after")
    def _one_validation_source(self) -> DatasetSpec:
        if self.validation is not None and self.validation_split is not None:
            raise ValueError("validationSplit: set either validation or validationSplit, not both")
        return self

    def with_uris(self, change: Callable[[str], str]) -> DatasetSpec:
        """A copy with `change` applied to every dataset URI (the training file or each source, the validation).

        Args:
            change: Maps one URI to another (e.g. a relative path to an absolute one).

        Returns:
            The changed copy; this spec is left as it is.
        """
        train = self.train
        if train.uri is not None:
            train = train.model_copy(update={"uri": change(train.uri)})
        if train.sources is not None:
            train = train.model_copy(update={"sources": [s.model_copy(update={"uri": change(s.uri)})
                                                         for s in train.sources]})
        validation = self.validation
        if validation is not None:
            validation = validation.model_copy(update={"uri": change(validation.uri)})
        return self.model_copy(update={"train": train, "validation": validation})
