"""Per-example (varlen) attention for packed rows: same numbers as separate examples, no leaks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sftjob_trainer.attention import VARLEN_ATTENTION, register_varlen_attention, segment_lengths


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import AutoModelForCausalLM

    register_varlen_attention()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    varlen = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=VARLEN_ATTENTION).eval()
    return reference, varlen


def _pack(lengths: list[int], seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sequences = [torch.randint(5, 1000, (n,), generator=generator) for n in lengths]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    return sequences, torch.cat(sequences)[None], position_ids


def test_segment_lengths() -> None:
    assert segment_lengths(torch.tensor([0, 1, 2, 0, 0, 1])) == [3, 1, 2]
    assert segment_lengths(torch.tensor([0, 1, 2, 3])) == [4]


@pytest.mark.parametrize("use_cache", [True, False])
def test_packed_logits_equal_separate_examples(models: tuple, use_cache: bool) -> None:
    reference, varlen = models
    sequences, input_ids, position_ids = _pack([5, 17, 1, 9])
    with torch.no_grad():
        separate = torch.cat([reference(input_ids=s[None]).logits[0] for s in sequences])
        packed = varlen(input_ids=input_ids, position_ids=position_ids, use_cache=use_cache).logits[0]
    assert torch.allclose(packed, separate, atol=1e-5), (packed - separate).abs().max()


def test_no_attention_across_examples(models: tuple) -> None:
    _, varlen = models
    _, input_ids, position_ids = _pack([12, 12])
    changed = input_ids.clone()
    changed[0, :12] = torch.randint(5, 1000, (12,), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = varlen(input_ids=input_ids, position_ids=position_ids).logits[0, 12:]
        after = varlen(input_ids=changed, position_ids=position_ids).logits[0, 12:]
    assert torch.equal(before, after)


def test_gradients_match_separate_examples(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    register_varlen_attention()
    sequences, input_ids, position_ids = _pack([7, 20, 4], seed=3)
    grads = {}
    for impl in ("sdpa", VARLEN_ATTENTION):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl).train()
        if impl == "sdpa":
            loss = sum(model(input_ids=s[None], use_cache=False).logits.float().square().mean() for s in sequences)
        else:
            logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
            loss = sum(part.float().square().mean() for part in logits.split([7, 20, 4], dim=1))
        loss.backward()
        grads[impl] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(grads["sdpa"], grads[VARLEN_ATTENTION], atol=1e-5)


def test_padded_generation_is_unchanged(models: tuple) -> None:
    reference, varlen = models
    input_ids = torch.tensor([[0, 5, 6, 7], [1, 1, 8, 9]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 1}
    expected = reference.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    actual = varlen.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    assert torch.equal(expected, actual)
