"""The data pipeline's product: tokenized examples and the prepared dataset (`pipeline.prepare_dataset`).

Their own module so that the pipeline's helpers (cache, mixture) and the pipeline share them without an
import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sftjob_trainer.data.report import DataReport


@dataclass
class Example:
    """One tokenized training example."""

    input_ids: list[int]
    """Token ids of the rendered conversation."""
    labels: list[int]
    """Same length as input_ids; -100 where no loss is taken."""
    prompt_ids: list[int]
    """Tokens up to and including the header of the last assistant turn (the prompt for generation)."""
    reference: str
    """The text of the last assistant turn (or completion)."""
    line: int = 0
    """Line of the source row."""
    source: int = 0
    """Index of the mixture source (`dataset.train.sources`) the row came from: 0 for a single file or glob,
    -1 for an example of the `dataset.validation` file. Validation examples split from the training data keep
    their source, so the evaluation loss can be reported per source (`mixture.per_source_eval_loss`)."""
    served: str = ""
    """Untruncated validation examples only: the conversation before its last answer as a server receives it, JSON
    `{"messages": [...], "tools": [...] | null}` (`sftjob_trainer.serving` renders it with the exported template
    and compares with `prompt_ids`); empty for training examples and rows without an assistant turn."""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PreparedData:
    """The tokenized training and validation examples and the report about them."""

    train: list[Example]
    """Training examples, in file order (shuffling is the trainer's); a mixture comes drawn and shuffled."""
    validation: list[Example]
    """Held-out examples (empty when no validation is configured)."""
    report: DataReport
    """Statistics, problems and samples."""
    max_seq_length: int
    """The resolved maxSeqLength ("auto" → the 99th percentile of lengths, capped at the model limit)."""
    chat_template: str
    """tokenizer, chatml, llama3, zephyr, inline or none (plain join)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """EOS and single-token end-of-turn markers: where generation should stop."""
