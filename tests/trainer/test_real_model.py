"""The real pretrained model (SmolLM2-135M-Instruct from its GGUF file) through sftjob: masks, learning, exports.

One conversion and one GGUF-loaded copy of the model are shared by the whole run (tests/conftest.py). The task
is the demo's order extraction (`sftjob_trainer.demo`), with held-out customers and cities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sftjob_api.progress import ProgressFile
from sftjob_api.types import DatasetSpec, ModelSpec, parse_sftjob
from sftjob_trainer.artifacts import generate_answers
from sftjob_trainer.demo import ORDER_INSTRUCTION, write_order_task
from sftjob_trainer.driver import run_job
from sftjob_trainer.job_context import context_for
from sftjob_trainer.model_loading import load_model, load_tokenizer

from .conftest import job_document

pytestmark = pytest.mark.slow

# ChatML's end-of-turn token: trained after every assistant answer, and nothing after it (not the newline).
END_OF_TURN = "<|im_end|>"
CONVERSATIONS = [
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name a prime."},
     {"role": "assistant", "content": "7"},
     {"role": "user", "content": "And an even one?"},
     {"role": "assistant", "content": "2, the only even prime."}],
    # No system turn: SmolLM2's template inserts its own default system prompt.
    [{"role": "user", "content": "Say hi."},
     {"role": "assistant", "content": "Hi!"},
     {"role": "user", "content": "Again, in French."},
     {"role": "assistant", "content": "Salut !"},
     {"role": "user", "content": "Thanks."},
     {"role": "assistant", "content": "You're welcome."}],
]


def oracle_labels(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) from transformers' own rendering: each assistant content and the end-of-turn after it."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, cursor = [], 0
    for message in messages:
        header = f"<|im_start|>{message['role']}\n"
        start = text.index(header, cursor) + len(header)
        end = start + len(message["content"])
        assert text[end : end + len(END_OF_TURN)] == END_OF_TURN
        cursor = end + len(END_OF_TURN)
        if message["role"] == "assistant":
            spans.append((start, cursor))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [tok if any(a <= lo and hi <= b for a, b in spans) else -100
              for tok, (lo, hi) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)]
    return encoded["input_ids"], labels


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` rendered by the model's template, ending with the assistant header."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_the_real_template_masks_multi_turn_chats_exactly(tmp_path: Path, smollm2_gguf: Path,
                                                         smollm2_dir: Path) -> None:
    from sftjob_trainer.data import prepare_dataset

    tokenizer = load_tokenizer(smollm2_dir, ModelSpec(source=str(smollm2_gguf)))
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS))
    spec = DatasetSpec.model_validate({"train": {"uri": str(data)}, "schema": "messages", "packing": False,
                                       "dedup": False})
    prepared = prepare_dataset(spec, tokenizer, seed=0)
    assert len(prepared.train) == len(CONVERSATIONS)
    expected = {tuple(ids): labels for ids, labels in (oracle_labels(tokenizer, m) for m in CONVERSATIONS)}
    for example in prepared.train:
        assert tuple(example.input_ids) in expected, "sftjob rendered a conversation differently from transformers"
        assert list(example.labels) == expected[tuple(example.input_ids)]
    trained = [tokenizer.decode([t for t in e.labels if t != -100]) for e in prepared.train]
    assert sorted(trained) == sorted(["7<|im_end|>2, the only even prime.<|im_end|>",
                                      "Hi!<|im_end|>Salut !<|im_end|>You're welcome.<|im_end|>"])


def test_batched_generation_answers_as_one_prompt_at_a_time(smollm2_gguf: Path, smollm2_dir: Path) -> None:
    spec = ModelSpec(source=str(smollm2_gguf))
    tokenizer = load_tokenizer(smollm2_dir, spec)
    model = load_model(smollm2_dir, spec, tokenizer, "fp32")
    questions = ["What is the capital of France?", "Name three colours of the rainbow, please.", "Hi",
                 "Write the number seven as a digit."]
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    stop = [tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    batched = generate_answers(model, tokenizer, prompts, 12, stop, batch_size=4)
    single = generate_answers(model, tokenizer, prompts, 12, stop, batch_size=1)
    assert batched == single
    assert batched[0].startswith("The capital of France is Paris")


@pytest.fixture(scope="module")
def order_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's order-extraction task, small: 48 training rows, 8 held out."""
    return write_order_task(tmp_path_factory.mktemp("orders"), 48, 8, seed=11)


def real_job(name: str, source: Path, data: Path, output: Path, **sections: Any) -> Any:
    """An SFTJob on the real model over the order data."""
    document = job_document(name, str(source), str(data / "train.jsonl"), str(data / "validation.jsonl"), str(output),
                            dataset={"schema": "messages"}, **sections)
    return parse_sftjob(document)


def held_out_loss(model: Any, tokenizer: Any, data: Path) -> float:
    """Mean token loss of the answers (and their end-of-turn) of validation.jsonl."""
    import torch

    total, count = 0.0, 0
    for line in (data / "validation.jsonl").read_text().splitlines():
        messages = json.loads(line)["messages"]
        ids, labels = oracle_labels(tokenizer, messages)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        tokens = sum(1 for label in labels[1:] if label != -100)
        total, count = total + float(out.loss) * tokens, count + tokens
    return total / count


def test_lora_on_the_real_model_lowers_held_out_loss_and_reloads_onto_the_gguf_base(
        ray_cluster: None, smollm2_gguf: Path, smollm2_dir: Path, smollm2_gguf_model: Any, order_data: Path,
        tmp_path: Path) -> None:
    from peft import PeftModel

    job = real_job("real-lora", smollm2_gguf, order_data, tmp_path,
                   method={"lora": {"r": 16, "alpha": 32}},
                   hyperparameters={"maxSteps": 8, "batchSize": 8, "learningRate": 1e-3, "logInterval": 2},
                   compute={"cpusPerWorker": 2}, checkpointing={"interval": 8},
                   evaluation={"numSamples": 2, "maxNewTokens": 48})
    result = run_job(context_for(job, 1))
    out = Path(result.output_uri)
    progress = ProgressFile.model_validate_json((out / "progress.json").read_text())
    assert progress.phase == "Succeeded" and progress.step == 8
    manifest = json.loads((out / "manifest.json").read_text())
    # It serves as trained: reloaded from adapter/ onto its base alone, the exported template renders the trained
    # prompt tokens and greedy generation stops on the exported stop tokens (<|im_end|>).
    assert manifest["servingCheck"] == {"passed": True, "prompts": 4, "templateMatches": 4, "stops": 4,
                                        "missingStopIds": [], "firstMismatch": None, "firstNoStop": None}
    exported = json.loads((out / "adapter" / "generation_config.json").read_text())
    end_of_turn = load_tokenizer(smollm2_dir, ModelSpec(source=str(smollm2_gguf))).convert_tokens_to_ids(END_OF_TURN)
    assert end_of_turn in ([exported["eos_token_id"]] if isinstance(exported["eos_token_id"], int)
                           else exported["eos_token_id"])
    assert manifest["baseModel"]["source"] == str(smollm2_gguf)
    assert manifest["baseModel"]["gguf"]["quantization"] == "Q4_1"
    converted_from = json.loads((smollm2_dir / "sftjob-gguf.json").read_text())
    assert manifest["baseModel"]["gguf"]["sha256"] == converted_from["sha256"]
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in (out / "README.md").read_text()

    tokenizer = load_tokenizer(smollm2_dir, ModelSpec(source=str(smollm2_gguf)))
    tuned = PeftModel.from_pretrained(smollm2_gguf_model, str(out / "adapter"))
    try:
        tuned.eval()
        with tuned.disable_adapter():
            base_loss = held_out_loss(tuned, tokenizer, order_data)
        tuned_loss = held_out_loss(tuned, tokenizer, order_data)
        assert tuned_loss < 0.5 * base_loss, (base_loss, tuned_loss)
        first_line = (order_data / "validation.jsonl").read_text().splitlines()[0]
        row = json.loads(first_line)["messages"]
        stop = [tokenizer.convert_tokens_to_ids(END_OF_TURN)]
        answer = generate_answers(tuned, tokenizer, [prompt_ids(tokenizer, row[:1])], 40, stop)[0]
        assert row[0]["content"].startswith(ORDER_INSTRUCTION)
        assert answer.startswith('{"customer": "'), answer  # the trained format, on a customer never seen
    finally:
        tuned.unload()  # the shared GGUF-loaded base without the adapter's layers again


def test_full_fine_tuning_exports_safetensors_that_from_pretrained_loads(
        ray_cluster: None, smollm2_gguf: Path, smollm2_dir: Path, order_data: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    job = real_job("real-full", smollm2_gguf, order_data, tmp_path, method={"type": "full"},
                   hyperparameters={"maxSteps": 1, "batchSize": 4, "learningRate": 1e-5, "warmupRatio": 0.0},
                   compute={"cpusPerWorker": 2}, checkpointing={"interval": 1000},
                   evaluation={"numSamples": 0})
    result = run_job(context_for(job, 1))
    exported = Path(result.output_uri) / "model"
    manifest = json.loads((Path(result.output_uri) / "manifest.json").read_text())
    assert "model/model.safetensors" in manifest["files"]
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    base = load_file(str(smollm2_dir / "model.safetensors"))
    tuned = load_file(str(exported / "model.safetensors"))
    changed = [name for name in base if name in tuned and not torch.equal(base[name], tuned[name])]
    assert len(changed) > 200, len(changed)  # one step of full fine-tuning moves (nearly) every tensor
