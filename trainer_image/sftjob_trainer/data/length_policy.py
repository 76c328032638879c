"""The length policy: `maxSeqLength` (given, or auto from the token lengths) and `overlong` (truncate or drop)."""

from __future__ import annotations

import math
from typing import Any

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data.encoding import Encoded
from sftjob_trainer.data.examples import Example
from sftjob_trainer.data.tokens import first_token_at

# maxSeqLength: auto without packing takes this percentile of the token lengths: the longest 1% are truncated
# or dropped instead of setting the padded size of every batch. With packing a long row costs only its own
# tokens, so auto keeps every row that fits the model's context.
AUTO_PERCENTILE = 99
# A tokenizer's model_max_length above this is transformers' "unset" sentinel (1e30), not a real limit.
UNSET_MODEL_LENGTH = 10_000_000


def percentile(sorted_values: list[int], pct: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def model_limit(tokenizer: Any, model_max_length: int | None) -> int | None:
    """The model's context length, else the tokenizer's `model_max_length` when it is a real limit."""
    if model_max_length:
        return model_max_length
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < UNSET_MODEL_LENGTH else None


def apply_length(item: Encoded, max_len: int, overlong: str, bos_id: int | None) -> tuple[Example | None, str]:
    """The example cut to `max_len` (or None when dropped) and what happened: kept, truncated or a drop reason."""
    ids, labels, starts = item.ids, item.labels, item.starts
    prompt_len = first_token_at(starts, item.rendered.prompt_end)
    line, reference, source = item.conversation.line, item.rendered.reference, item.conversation.source
    if len(ids) <= max_len:
        return Example(ids, labels, ids[:prompt_len], reference, line, source), "kept"
    if overlong == "drop":
        return None, "too_long"
    if item.conversation.kind == "text":
        # Plain text has no prompt side: keep the beginning.
        return Example(ids[:max_len], labels[:max_len], ids[:prompt_len], reference, line, source), "truncated"
    cut = len(ids) - max_len
    head = 1 if ids and bos_id is not None and ids[0] == bos_id else 0
    if prompt_len - head < cut:
        return None, "response_too_long"
    new_ids = ids[:head] + ids[head + cut:]
    new_labels = labels[:head] + labels[head + cut:]
    return Example(new_ids, new_labels, new_ids[:prompt_len - cut], reference, line, source), "truncated"


def choose_max_length(spec: DatasetSpec, lengths: list[int], limit: int | None, warnings: list[str]) -> int:
    """`maxSeqLength` for these ascending token lengths, capped at the model's limit (a warning when a given one is)."""
    if spec.max_seq_length == "auto":
        # Packed, a long row costs only its own tokens: keep every row the model's context holds.
        max_len = (lengths[-1] if spec.packing and lengths else percentile(lengths, AUTO_PERCENTILE)) or 1
        return min(max_len, limit) if limit else max_len
    max_len = int(spec.max_seq_length)
    if limit and max_len > limit:
        warnings.append(f"maxSeqLength {max_len} is above the model's limit {limit}; using {limit}")
        return limit
    return max_len
