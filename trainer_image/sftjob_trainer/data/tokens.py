"""Tokenize rendered text and derive labels from character offsets (pure: no I/O).

A token carries loss when its first character lies inside a trained span of the rendered
template. Offsets come from a fast tokenizer's offset mapping, so masks never depend on
`{% generation %}` markers. `ByteTokenizer` is the fallback of `sftjob data inspect` when no
tokenizer is given: one token per UTF-8 byte, with the usual chat special tokens kept whole.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100
# Keep the tokenizer's batch small enough that offsets of one batch stay a few MB of Python objects.
ENCODE_BATCH = 1024

BYTE_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<|pad|>", "<s>", "</s>",
)


class ByteTokenizer:
    """One token per UTF-8 byte, plus whole special tokens; a stand-in when no tokenizer is available."""

    is_fast = True
    chat_template: str | None = None
    bos_token = "<|begin_of_text|>"
    eos_token = "<|endoftext|>"
    pad_token = "<|pad|>"
    unk_token: str | None = None
    model_max_length = 1 << 30

    def __init__(self) -> None:
        self._special = {tok: 256 + i for i, tok in enumerate(BYTE_SPECIAL_TOKENS)}
        self._pattern = re.compile("|".join(re.escape(t) for t in BYTE_SPECIAL_TOKENS))
        self.bos_token_id = self._special[self.bos_token]
        self.eos_token_id = self._special[self.eos_token]
        self.pad_token_id = self._special[self.pad_token]

    def __len__(self) -> int:
        return 256 + len(self._special)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        """The id of a special token (None when unknown)."""
        return self._special.get(token)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and the character index each token starts at."""
        ids: list[int] = []
        starts: list[int] = []
        pos = 0
        for match in [*self._pattern.finditer(text), None]:
            end = match.start() if match else len(text)
            for index in range(pos, end):
                encoded = text[index].encode("utf-8")
                ids.extend(encoded)
                starts.extend([index] * len(encoded))
            if match:
                ids.append(self._special[match.group()])
                starts.append(match.start())
                pos = match.end()
        return ids, starts

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens are written out."""
        reverse = {v: k for k, v in self._special.items()}
        out, pending = [], bytearray()
        for i in ids:
            if i < 256:
                pending.append(i)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            out.append(reverse.get(i, ""))
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


def encode(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[int]]]:
    """Token ids and per-token start character of each text, batched through the fast tokenizer.

    Special tokens are not added: templates write BOS themselves where the model expects it. The
    Rust tokenizer is called directly when it has no truncation or padding configured (what the
    transformers wrapper would switch off anyway); that skips the wrapper's per-row conversions.
    """
    if isinstance(tokenizer, ByteTokenizer):
        return [tokenizer.encode_with_offsets(t) for t in texts]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    direct = backend is not None and backend.truncation is None and backend.padding is None
    out: list[tuple[list[int], list[int]]] = []
    for first in range(0, len(texts), ENCODE_BATCH):
        chunk = texts[first:first + ENCODE_BATCH]
        if direct and backend is not None:
            for enc in backend.encode_batch(chunk, add_special_tokens=False):
                out.append((enc.ids, [start for start, _ in enc.offsets]))
            continue
        batch = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
        for ids, offsets in zip(batch["input_ids"], batch["offset_mapping"], strict=True):
            out.append((list(ids), [start for start, _ in offsets]))
    return out


def mask_labels(ids: list[int], starts: list[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Labels: the token id where the token starts inside a span, else IGNORE_INDEX.

    Token starts are non-decreasing, so each span is one slice of tokens, found by bisection.
    """
    labels = [IGNORE_INDEX] * len(ids)
    for span_start, span_end in spans:
        lo, hi = bisect.bisect_left(starts, span_start), bisect.bisect_left(starts, span_end)
        labels[lo:hi] = ids[lo:hi]
    return labels


def first_token_at(starts: list[int], char: int) -> int:
    """Index of the first token that starts at or after character `char` (len(starts) if none)."""
    return bisect.bisect_left(starts, char)
