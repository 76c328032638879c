"""What the pipeline made of a dataset: the `sftjob data inspect --json` object and the status stats."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sftjob_api.types import DatasetStats, SourceStats


@dataclass
class Sample:
    """One rendered example for humans: text segments and whether each carries loss."""

    line: int
    """Line of the source row."""
    segments: list[tuple[str, bool]]
    """Consecutive pieces of the decoded tokens, each with its trained flag."""


@dataclass
class SourceReport:
    """One source of a training mixture: what was read, requested and drawn."""

    name: str
    """The source's name."""
    uri: str
    """The file or glob."""
    format: str = "unknown"
    """The schema detected or configured for this source."""
    files: int = 0
    """Files read."""
    files_matched: int = 0
    """Files the URI matched."""
    rows: int = 0
    """Rows read."""
    available: int = 0
    """Usable distinct training examples the draw started from (after checks, filters, de-duplication and the
    validation hold-out)."""
    weight: float | None = None
    """The requested weight."""
    samples: int | None = None
    """The requested count."""
    target: int = 0
    """Examples drawn (weight share, samples count, or every available example)."""
    train_examples: int = 0
    """Training examples from this source after the length policy."""
    proportion: float = 0.0
    """train_examples / all training examples."""
    tokens: int = 0
    """Training tokens from this source."""
    validation_examples: int = 0
    """Held-out examples of this source."""

    def to_stats(self) -> SourceStats:
        """The status form."""
        return SourceStats(name=self.name, format=self.format, files=self.files, files_matched=self.files_matched,
                           rows=self.rows, available=self.available, weight=self.weight, samples=self.samples,
                           train_examples=self.train_examples, proportion=self.proportion, tokens=self.tokens,
                           validation_examples=self.validation_examples)


@dataclass
class DataReport:
    """Everything `sftjob data inspect --json` prints; `to_stats()` gives the SFTJob status part."""

    file: str
    """The training file or glob; for a mixture, `N sources: uri, uri, ...`."""
    format: str
    """Detected or configured schema (prompt_completion, messages, alpaca, sharegpt, text); `+`-joined when the
    sources or shards of a mixture differ."""
    rows: int = 0
    """Rows read from the training file."""
    train_examples: int = 0
    """Examples left for training."""
    validation_examples: int = 0
    """Held-out examples."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Dropped training rows by reason: invalid, empty_text, empty_response, no_assistant_turn, no_trained_turn,
    duplicate, too_long, response_too_long."""
    truncated: int = 0
    """Training examples cut from the prompt side to maxSeqLength."""
    duplicates: int = 0
    """Exact duplicate rows found (after normalisation), dropped when dedup is on."""
    validation_overlap: int = 0
    """Validation examples whose normalised text also occurs in the training data."""
    tokens: int = 0
    """Tokens in the training examples, after the length policy."""
    trainable_tokens: int = 0
    """Tokens that carry loss."""
    trainable_fraction: float = 0.0
    """trainable_tokens / tokens."""
    length_percentiles: dict[str, int] = field(default_factory=dict)
    """p50, p95, p99 and max of the training examples' token lengths before the length policy."""
    max_seq_length: int = 0
    """The resolved maxSeqLength."""
    chat_template: str = ""
    """tokenizer, chatml, llama3, zephyr, inline or none."""
    train_on: str = "assistant"
    """assistant, last_assistant or all."""
    tokenizer: str = ""
    """The tokenizer used; `byte-level fallback` when none was given (counts are then bytes)."""
    eos_trained: bool = False
    """Whether an EOS or end-of-turn token carries loss anywhere."""
    sha256: str = ""
    """Digest of the training file."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    """Problems that block the job: {file, line, field, message}."""
    warnings: list[str] = field(default_factory=list)
    """Findings that do not block the job."""
    samples: list[Sample] = field(default_factory=list)
    """Up to two rendered training examples."""
    cache: str = ""
    """The data cache: `hit <key12>` (loaded, nothing re-tokenized), `miss <key12>` (prepared and stored),
    or empty when no cache was used."""
    sources: list[SourceReport] = field(default_factory=list)
    """Per source of a mixture (`dataset.train.sources`); empty for a single file or glob."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (samples as lists of [text, trained])."""
        out = asdict(self)
        out["samples"] = [{"line": s.line, "segments": [[t, f] for t, f in s.segments]} for s in self.samples]
        return out

    def to_stats(self) -> DatasetStats:
        """The dataset part of the SFTJob status."""
        return DatasetStats(format=self.format, rows=self.rows, train_examples=self.train_examples,
                            validation_examples=self.validation_examples, dropped=dict(self.dropped),
                            truncated=self.truncated, tokens=self.tokens, trainable_tokens=self.trainable_tokens,
                            sha256=self.sha256 or None, cache=self.cache or None,
                            sources=[s.to_stats() for s in self.sources] or None)
