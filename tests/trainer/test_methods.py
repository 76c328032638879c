"""Every fine-tuning method trains, saves, reloads, and then generates differently from the base model.

Single-process (no Ray): the same `build_trainer` the Ray workers use, a few steps each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sftjob_trainer.data import prepare_dataset
from sftjob_trainer.hparams import Device, resolve, training_arguments
from sftjob_trainer.methods import apply_method, check_device, transformer_blocks
from sftjob_trainer.model_loading import load_model, load_tokenizer, resolve_model_dir
from sftjob_trainer.trainer_error import TrainerError
from sftjob_trainer.worker import build_trainer

from .conftest import make_job

NEW_TOKENS = 8  # long enough that a changed model shows in greedy output


def _greedy(model: Any, prompt_ids: list[int], tokenizer: Any) -> list[int]:
    model.eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, len(prompt_ids):].tolist()


def _train(method: dict[str, Any], tiny_model_dir: Path, copy_data: Path, tmp_path: Path,
           **hyper: Any) -> tuple[Any, Any, Any, Any, list[int]]:
    job = make_job("m", tiny_model_dir, copy_data, tmp_path / "out", method=method,
                   hyperparameters={"maxSteps": 4, "batchSize": 8, **hyper})
    spec = job.spec
    model_dir = resolve_model_dir(spec.model)
    tokenizer = load_tokenizer(model_dir, spec.model)
    prepared = prepare_dataset(spec.dataset, tokenizer, seed=1)
    base = load_model(model_dir, spec.model, tokenizer, "fp32")
    prompt = prepared.validation[0].prompt_ids
    base_out = _greedy(base, prompt, tokenizer)
    model = apply_method(load_model(model_dir, spec.model, tokenizer, "fp32"), spec.method, str(model_dir))
    batching = "length_grouped" if method["type"] == "prompt_tuning" else "packed"
    plan = resolve(spec, Device(cuda=False), 0, len(prepared.train), batching=batching)
    args = training_arguments(spec, plan, str(tmp_path / "hf"))
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in prepared.train]
    args = {**args, "save_strategy": "no", "eval_strategy": "no"}
    trainer = build_trainer(spec, model, tokenizer, args, batching, rows, None, [])
    trainer.train()
    assert trainer.state.global_step == 4
    return trainer.model, tokenizer, base, prepared, base_out


def _changed(before: dict[str, torch.Tensor], model: Any) -> set[str]:
    after = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


@pytest.mark.parametrize("lora", [
    {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]},
    {"r": 4, "alpha": 8, "dropout": 0.1, "targetModules": ["q_proj", "v_proj"], "useDora": True, "useRslora": True},
], ids=["all-linear", "dora-rslora-qv"])
def test_lora_trains_saves_reloads_and_generates_differently(lora: dict[str, Any], tiny_model_dir: Path,
                                                             copy_data: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    model, tokenizer, _, prepared, base_out = _train({"type": "lora", "lora": lora}, tiny_model_dir, copy_data,
                                                        tmp_path)
    targets = {n.split(".")[-2] for n, _ in model.named_modules() if n.endswith("lora_A")}
    assert targets == ({"q_proj", "v_proj"} if lora["targetModules"] != ["all-linear"]
                       else {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_dora, config.use_rslora) == (
        lora["r"], lora["alpha"], lora.get("useDora", False), lora.get("useRslora", False))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().sum()) > 0 for p in lora_b)  # B starts at zero: non-zero means it trained
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_model(Path(tiny_model_dir), make_job(
        "m", tiny_model_dir, copy_data, tmp_path).spec.model, tokenizer, "fp32"), tmp_path / "adapter")
    prompt = prepared.validation[0].prompt_ids
    assert _greedy(reloaded, prompt, tokenizer) != base_out


def test_full_fine_tuning_changes_every_block(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    base_state = {k: v.clone() for k, v in
                  AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict().items()}
    model, tokenizer, _, prepared, base_out = _train({"type": "full"}, tiny_model_dir, copy_data, tmp_path,
                                                     learningRate=2e-2)
    changed = _changed(base_state, model)
    assert {k for k in base_state if k.startswith("model.layers.")} <= changed
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    assert _greedy(reloaded, prepared.validation[0].prompt_ids, tokenizer) != base_out


@pytest.mark.parametrize("embeddings", [False, True], ids=["blocks-only", "with-embeddings"])
def test_freeze_trains_only_the_top_blocks(embeddings: bool, tiny_model_dir: Path, copy_data: Path,
                                           tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    base_state = {k: v.clone() for k, v in
                  AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict().items()}
    method = {"type": "freeze", "freeze": {"trainableLayers": 1, "trainEmbeddings": embeddings}}
    model, tokenizer, _, prepared, base_out = _train(method, tiny_model_dir, copy_data, tmp_path, learningRate=2e-2)
    changed = _changed(base_state, model)
    top = len(transformer_blocks(model)) - 1
    assert any(k.startswith(f"model.layers.{top}.") for k in changed)
    assert not any(k.startswith("model.layers.0.") for k in changed)  # the lower block stayed frozen
    assert ("model.embed_tokens.weight" in changed) is embeddings
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    assert _greedy(reloaded, prepared.validation[0].prompt_ids, tokenizer) != base_out


def test_freeze_rejects_more_layers_than_the_model_has(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    method = {"type": "freeze", "freeze": {"trainableLayers": 9}}
    job = make_job("m", tiny_model_dir, copy_data, tmp_path, method=method)
    tokenizer = load_tokenizer(tiny_model_dir, job.spec.model)
    model = load_model(tiny_model_dir, job.spec.model, tokenizer, "fp32")
    with pytest.raises(TrainerError) as err:
        apply_method(model, job.spec.method, str(tiny_model_dir))
    assert err.value.code == "InvalidSpec" and err.value.field == "spec.method.freeze.trainableLayers"


def test_prompt_tuning_trains_and_changes_generation_after_reload(tiny_model_dir: Path, copy_data: Path,
                                                                  tmp_path: Path) -> None:
    from peft import PeftModel

    method = {"type": "prompt_tuning", "promptTuning": {"numVirtualTokens": 4, "initText": "Repeat after me"}}
    model, tokenizer, _, prepared, base_out = _train(method, tiny_model_dir, copy_data, tmp_path, learningRate=3e-1)
    assert model.peft_config["default"].num_virtual_tokens == 4
    model.save_pretrained(tmp_path / "adapter")
    spec = make_job("m", tiny_model_dir, copy_data, tmp_path).spec
    reloaded = PeftModel.from_pretrained(load_model(Path(tiny_model_dir), spec.model, tokenizer, "fp32"),
                                         tmp_path / "adapter")
    assert _greedy(reloaded, prepared.validation[0].prompt_ids, tokenizer) != base_out


def test_qlora_without_cuda_fails_with_unsupported_device(tiny_model_dir: Path, copy_data: Path,
                                                          tmp_path: Path) -> None:
    job = make_job("m", tiny_model_dir, copy_data, tmp_path, method={"type": "qlora", "quantization": {"bits": 4}})
    with pytest.raises(TrainerError) as err:
        check_device(job.spec.method, cuda=torch.cuda.is_available())
    assert err.value.code == "UnsupportedDevice" and "CUDA" in err.value.message
