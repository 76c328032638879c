"""The collators: packed rows with per-example positions, exact against padded batches on a real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from data_helpers import write_jsonl

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import (
    Example,
    PackedCollator,
    PaddedCollator,
    prepare_dataset,
)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa",
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def examples(tiny_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Example]:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: what is {i} and {'two ' * i}?"},
                          {"role": "assistant", "content": f"It is {i * 7}. " * (1 + i % 3)},
                          {"role": "user", "content": "And then?"},
                          {"role": "assistant", "content": "Then the cat sat." if i % 2 else "Blue."}]}
            for i in range(12)]
    path = write_jsonl(tmp_path_factory.mktemp("pack") / "d.jsonl", rows)
    spec = DatasetSpec.model_validate({"train": {"uri": str(path)}, "maxSeqLength": 256})
    return prepare_dataset(spec, tiny_tokenizer, seed=0).train


def test_packed_and_unpacked_losses_agree(model: Any, tiny_tokenizer: Any, examples: list[Example]) -> None:
    padded = PaddedCollator(tiny_tokenizer.pad_token_id)(examples)
    packed = PackedCollator()(examples)
    assert packed["input_ids"].shape == (1, sum(len(e.input_ids) for e in examples))
    assert "attention_mask" not in packed  # padding-free: boundaries come from position_ids alone
    assert packed["use_cache"] is False
    with torch.no_grad():
        loss_padded = model(**padded).loss.item()
        loss_packed = model(**packed).loss.item()
    assert loss_packed == pytest.approx(loss_padded, abs=1e-5)


def test_attention_does_not_cross_examples(model: Any, examples: list[Example]) -> None:
    a, b = examples[0], examples[1]
    collate = PackedCollator()
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b.input_ids])).logits[0]
        packed = model(**collate([a, b])).logits[0, len(a.input_ids):]
        changed_a = Example([(t * 7 + 3) % 1000 for t in a.input_ids], a.labels, [], "")
        packed_changed = model(**collate([changed_a, b])).logits[0, len(a.input_ids):]
        # The check can fail: positions that run on across the boundary make B attend to A.
        batch = collate([a, b])
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)
        leaking = model(**batch).logits[0, len(a.input_ids):]
        # ... and so can a KV cache: transformers then ignores the restarting positions.
        cached = model(**{**collate([a, b]), "use_cache": True}).logits[0, len(a.input_ids):]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed_changed, packed, atol=1e-5, rtol=0)
    assert (leaking - alone).abs().max().item() > 1e-3
    assert (cached - alone).abs().max().item() > 1e-3


def test_flash_kwargs_mark_the_boundaries(examples: list[Example]) -> None:
    batch = PackedCollator(flash_kwargs=True)(examples[:3])
    lengths = [len(e.input_ids) for e in examples[:3]]
    assert batch["cu_seq_lens_q"].tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert batch["max_length_q"] == max(lengths)
