"""The data pipeline: formats, chat templates, verified loss masks, length policy, packing, quality and preflight.

The trainer calls `prepare_dataset` once, then batches the examples with `PackedCollator` (padding-free rows) or
`PaddedCollator` (the Trainer's length-grouped sampler). A weighted mixture of sources (`dataset.train.sources`) is
drawn inside `prepare_dataset`; `mixture.per_source_eval_loss` scores its held-out examples per source.
`sftjob data inspect` and `sftjob validate` use `analyze` on data read with `read_training_data`.
"""

from sftjob_trainer.data.cache import DataCache
from sftjob_trainer.data.conversation import Conversation, Message
from sftjob_trainer.data.examples import Example, PreparedData
from sftjob_trainer.data.formats import SCHEMAS
from sftjob_trainer.data.packing import PackedCollator, PaddedCollator
from sftjob_trainer.data.pipeline import (
    analyze,
    encode_conversations,
    prepare_dataset,
    read_training_data,
)
from sftjob_trainer.data.problems import DataError, Problem
from sftjob_trainer.data.readers import RawDataset, SourceData, read_dataset
from sftjob_trainer.data.report import DataReport
from sftjob_trainer.data.tokens import IGNORE_INDEX, ByteTokenizer

__all__ = [
    "IGNORE_INDEX",
    "SCHEMAS",
    "ByteTokenizer",
    "Conversation",
    "DataCache",
    "DataError",
    "DataReport",
    "Example",
    "Message",
    "PackedCollator",
    "PaddedCollator",
    "PreparedData",
    "Problem",
    "RawDataset",
    "SourceData",
    "analyze",
    "encode_conversations",
    "prepare_dataset",
    "read_dataset",
    "read_training_data",
]
