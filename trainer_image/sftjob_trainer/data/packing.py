"""The batch collators of the trainer: packed (padding-free) and padded.

`PackedCollator` puts a micro-batch's examples back to back in one row; `position_ids` restart at 0 for every
example, which
transformers turns into a block-diagonal (per-example) causal mask for SDPA/flex attention and
into varlen boundaries for flash attention, so attention never crosses examples. The first label
of each packed example is -100: in a pack it would be predicted from the previous example's last
token, which an unpacked batch never does, so packed and unpacked losses are the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sftjob_trainer.data.tokens import IGNORE_INDEX


def _get(item: Any, key: str) -> Any:
    return item[key] if isinstance(item, Mapping) else getattr(item, key)


def _positions(item: Any) -> list[int]:
    if isinstance(item, Mapping):
        return list(item.get("position_ids") or range(len(item["input_ids"])))
    return list(getattr(item, "position_ids", None) or range(len(item.input_ids)))


class PackedCollator:
    """Flattens a batch of examples into one padding-free row: tensors of shape [1, T].

    Returns input_ids, labels and position_ids (restarting per example), and `use_cache=False`:
    transformers derives the per-example mask from position_ids only when the forward pass builds
    no KV cache, and a model whose config says use_cache=True would otherwise let attention run
    across examples without any error. With `flash_kwargs=True` also cu_seq_lens_q/k and
    max_length_q/k for flash-attention varlen kernels.
    """

    def __init__(self, flash_kwargs: bool = False) -> None:
        self.flash_kwargs = flash_kwargs

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        """Collate `items` (Examples, or dicts with input_ids/labels[/position_ids])."""
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for item in items:
            item_ids, item_labels = list(_get(item, "input_ids")), list(_get(item, "labels"))
            for start, end in _boundaries(_positions(item)):
                ids.extend(item_ids[start:end])
                labels.append(IGNORE_INDEX)
                labels.extend(item_labels[start + 1:end])
                positions.extend(range(end - start))
        batch: dict[str, Any] = {"input_ids": torch.tensor([ids], dtype=torch.long),
                 "labels": torch.tensor([labels], dtype=torch.long),
                 "position_ids": torch.tensor([positions], dtype=torch.long), "use_cache": False}
        if self.flash_kwargs:
            lengths = [end - start for start, end in _boundaries(positions)]
            cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
        return batch


def _boundaries(positions: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each sequence in a position_ids list (a new one wherever positions do not step by 1)."""
    starts = [i for i, p in enumerate(positions) if i == 0 or p != positions[i - 1] + 1]
    return [(s, e) for s, e in zip(starts, [*starts[1:], len(positions)], strict=True)]


class PaddedCollator:
    """Right-pads a batch to its longest example; attention_mask marks the real tokens."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        """Collate examples (or dicts with input_ids/labels) into [B, T] tensors."""
        import torch

        longest = max(len(_get(item, "input_ids")) for item in items)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids, labels, mask = [], [], []
        for item in items:
            item_ids = list(_get(item, "input_ids"))
            pad = longest - len(item_ids)
            ids.append(item_ids + [self.pad_token_id] * pad)
            labels.append(list(_get(item, "labels")) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(item_ids) + [0] * pad)
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long),
                "attention_mask": torch.tensor(mask, dtype=torch.long)}
