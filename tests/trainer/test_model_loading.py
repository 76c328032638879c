"""Loading the base model and tokenizer: the pad token, load options, Hub sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sftjob_api.types import ModelSpec
from sftjob_trainer.model_loading import PAD_TOKEN, load_model, load_tokenizer, split_hf
from sftjob_trainer.trainer_error import TrainerError


def test_pad_token_is_never_eos(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.eos_token  # what many hub tokenizers ship with
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    loaded = load_tokenizer(tmp_path, ModelSpec(source=str(tmp_path)))
    assert loaded.pad_token == PAD_TOKEN and loaded.pad_token_id != loaded.eos_token_id


def test_model_load_options(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = ModelSpec(source=str(tiny_model_dir), dtype="bfloat16")
    tokenizer = load_tokenizer(tiny_model_dir, spec)
    assert load_model(tiny_model_dir, spec, tokenizer, "bf16").dtype == torch.bfloat16
    pickled = tmp_path / "pickled"  # weights only as a pickle (pytorch_model.bin), as old checkpoints ship
    pickled.mkdir()
    torch.save(load_model(tiny_model_dir, spec, tokenizer, "fp32").state_dict(), pickled / "pytorch_model.bin")
    (pickled / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(TrainerError) as err:
        load_model(pickled, ModelSpec(source=str(pickled)), tokenizer, "fp32")
    assert err.value.code == "ModelUnreadable" and "allowUnsafeWeights" in err.value.message
    assert load_model(pickled, ModelSpec(source=str(pickled), allow_unsafe_weights=True), tokenizer, "fp32")


def test_hf_source_and_revision() -> None:
    assert split_hf("hf://org/name@v1", None) == ("org/name", "v1")
    assert split_hf("hf://org/name@v1", "main") == ("org/name", "main")  # model.revision wins
    assert split_hf("hf://org/name", None) == ("org/name", None)
