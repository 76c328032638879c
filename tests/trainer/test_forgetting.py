"""Forgetting on a reference set: reading it, scoring a model on it, the gate, and runs on Ray in both modes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftjob_api.codes import ErrorCode
from sftjob_api.progress import ProgressFile
from sftjob_api.types import EvaluationSpec, SFTJob
from sftjob_trainer.forgetting import (
    check_gate,
    forgetting_result,
    mean_token_loss,
    reference_rows,
    reference_tokens,
)
from sftjob_trainer.job_context import context_for
from sftjob_trainer.tiny import default_corpus
from sftjob_trainer.trainer_error import TrainerError

from .conftest import job_document, make_job

IGNORE = -100
# A gate no model meets: the tuned loss is never below 1% of the base loss.
STRICT = 0.01
# Relative tolerance between a loss the trainer measured and the same loss measured here on the reloaded model:
# the same float32 forward pass, only batched differently.
LOSS_RTOL = 1e-4


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _chat(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _job(model: Path, reference: Path, **evaluation: Any) -> SFTJob:
    from sftjob_api.types import parse_sftjob

    return parse_sftjob(job_document("forget", str(model), "train.jsonl", None, "out",
                                     evaluation={"reference": {"uri": str(reference), **evaluation}}))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve lines of the text the tiny tokenizer was trained on: the 'general knowledge' of the tiny model."""
    rows = [{"text": line} for line in default_corpus(lines=12, seed=5)]
    return _write_rows(tmp_path_factory.mktemp("reference") / "reference.jsonl", rows)


# ------------------------------------------------------------------------------------------- reading


def test_text_rows_carry_loss_on_every_token_but_the_first(tiny_model_dir: Path, tokenizer: Any,
                                                          tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "ref.jsonl", [{"text": "the red car is large"}, {"text": "two dogs"}])
    rows = reference_rows(_job(tiny_model_dir, path).spec, tokenizer, 512)
    assert [tokenizer.decode(r["input_ids"]) for r in rows] == ["the red car is large<|im_end|>", "two dogs<|im_end|>"]
    for row in rows:
        assert row["labels"] == [IGNORE, *row["input_ids"][1:]]
    assert reference_tokens(rows) == sum(len(r["input_ids"]) - 1 for r in rows)


def test_chat_rows_carry_loss_on_the_assistant_turns_only(tiny_model_dir: Path, tokenizer: Any,
                                                         tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "ref.jsonl", [_chat("what is the red car", "the red car is large")])
    (row,) = reference_rows(_job(tiny_model_dir, path).spec, tokenizer, 512)
    assert tokenizer.decode(row["input_ids"]) == ("<|im_start|>user\nwhat is the red car<|im_end|>\n"
                                                  "<|im_start|>assistant\nthe red car is large<|im_end|>\n")
    scored = [token for token, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE]
    assert tokenizer.decode(scored) == "the red car is large<|im_end|>"


def test_max_rows_max_tokens_and_max_seq_length_bound_the_set(tiny_model_dir: Path, tokenizer: Any,
                                                             tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "ref.jsonl", [{"text": line} for line in default_corpus(lines=20, seed=1)])
    every = reference_rows(_job(tiny_model_dir, path).spec, tokenizer, 512)
    assert len(every) == 20
    assert len(reference_rows(_job(tiny_model_dir, path, maxRows=3).spec, tokenizer, 512)) == 3
    budget = len(every[0]["input_ids"]) + len(every[1]["input_ids"]) + 3
    bounded = reference_rows(_job(tiny_model_dir, path, maxTokens=budget).spec, tokenizer, 512)
    assert [len(r["input_ids"]) for r in bounded] == [len(every[0]["input_ids"]), len(every[1]["input_ids"]), 3]
    assert bounded[2]["input_ids"] == every[2]["input_ids"][:3]
    cut = reference_rows(_job(tiny_model_dir, path).spec, tokenizer, 4)
    assert all(len(r["input_ids"]) == 4 for r in cut) and cut[0]["input_ids"] == every[0]["input_ids"][:4]


@pytest.mark.parametrize(
    ("rows", "code", "message"),
    [
        (None, "DatasetUnreadable", "cannot read the dataset"),
        ([{"question": "q"}], "InvalidDataset", "cannot detect the dataset format"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "InvalidDataset", "no row has a token to score"),
    ],
)
def test_a_bad_reference_set_names_the_field(tiny_model_dir: Path, tokenizer: Any, tmp_path: Path,
                                            rows: list[dict[str, Any]] | None, code: str, message: str) -> None:
    path = tmp_path / "ref.jsonl" if rows is None else _write_rows(tmp_path / "ref.jsonl", rows)
    with pytest.raises(TrainerError) as caught:
        reference_rows(_job(tiny_model_dir, path).spec, tokenizer, 512)
    assert (caught.value.code, caught.value.field) == (code, "spec.evaluation.reference")
    assert message in caught.value.message and caught.value.message.startswith("evaluation.reference: ")


# ------------------------------------------------------------------------------------------- scoring


def test_the_mean_is_over_tokens_and_does_not_depend_on_batching(tiny_model_dir: Path, tokenizer: Any,
                                                                 reference_file: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows = reference_rows(_job(tiny_model_dir, reference_file).spec, tokenizer, 512)
    assert len({len(r["input_ids"]) for r in rows}) > 1  # padding is exercised
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:  # one row at a time, no padding: the sum of -log p over the scored tokens
            logits = model(torch.tensor([row["input_ids"]])).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for t in range(1, len(row["labels"])):
                if row["labels"][t] != IGNORE:
                    total -= float(logp[t - 1, row["labels"][t]])
                    count += 1
    model.train()
    batched = mean_token_loss(model, rows, 5, tokenizer.pad_token_id)
    assert model.training  # the caller's mode is restored
    assert batched == pytest.approx(total / count, rel=1e-5)
    assert mean_token_loss(model, rows, 1, tokenizer.pad_token_id) == pytest.approx(batched, rel=1e-5)
    assert count == reference_tokens(rows)


def test_the_result_and_the_gate_both_ways() -> None:
    rows = [{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}]
    within = forgetting_result(2.0, 2.2, rows, 1.5)
    assert (within.ratio, within.tokens, within.rows, within.exceeded) == (pytest.approx(1.1), 2, 1, False)
    above = forgetting_result(2.0, 3.2, rows, 1.5)
    assert above.ratio == pytest.approx(1.6) and above.exceeded
    assert not forgetting_result(2.0, 3.2, rows, None).exceeded  # no gate, only the figure
    diverged = forgetting_result(2.0, math.nan, rows, 1.5)
    assert (diverged.base_loss, diverged.tuned_loss, diverged.ratio, diverged.exceeded) == (2.0, None, None, True)

    check_gate(EvaluationSpec(), within)
    check_gate(EvaluationSpec(), above)  # degrade: the outputs get marked, nothing raises
    with pytest.raises(TrainerError) as caught:
        check_gate(EvaluationSpec.model_validate({"onForgetting": "fail"}), above)
    assert (caught.value.code, caught.value.field, caught.value.retryable) == (
        ErrorCode.FORGETTING_EXCEEDED, "spec.evaluation.maxForgetting", False)
    assert "ratio 1.600, above evaluation.maxForgetting 1.5" in caught.value.message
    check_gate(EvaluationSpec.model_validate({"onForgetting": "fail"}), within)


# ------------------------------------------------------------------------------------- runs on Ray


def _measured_here(model_dir: Path, adapter: Path | None, rows: list[dict[str, list[int]]], pad: int) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return mean_token_loss(model, rows, 4, pad)


@pytest.mark.slow
def test_degrade_mode_keeps_the_outputs_and_marks_them(ray_cluster: None, tiny_model_dir: Path, copy_data: Path,
                                                       reference_file: Path, tokenizer: Any, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    from sftjob_cli.main import main

    doc = job_document("forget-degrade", str(tiny_model_dir), str(copy_data / "train.jsonl"), None, str(tmp_path),
                       hyperparameters={"maxSteps": 2},
                       evaluation={"reference": {"uri": str(reference_file)}, "maxForgetting": STRICT})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    code = main(["run", str(tmp_path / "job.yaml"), "--no-progress",
                 "--ray-address", ray.get_runtime_context().gcs_address])
    printed = capsys.readouterr().out
    assert code == 0, printed
    out = tmp_path / "forget-degrade"
    progress = ProgressFile.model_validate_json((out / "progress.json").read_text())
    assert progress.phase == "Succeeded" and progress.evaluation is not None
    result = progress.evaluation.forgetting
    assert result is not None and result.base_loss is not None and result.tuned_loss is not None
    assert progress.resolved is not None and progress.resolved.max_seq_length is not None
    rows = reference_rows(_job(tiny_model_dir, reference_file).spec, tokenizer, progress.resolved.max_seq_length)
    # The trainer scored exactly these rows, the base as loaded and the tuned model it exported.
    assert (result.rows, result.tokens) == (12, reference_tokens(rows))
    assert result.base_loss == pytest.approx(_measured_here(tiny_model_dir, None, rows, tokenizer.pad_token_id),
                                             rel=LOSS_RTOL)
    assert result.tuned_loss == pytest.approx(
        _measured_here(tiny_model_dir, out / "adapter", rows, tokenizer.pad_token_id), rel=LOSS_RTOL)
    assert result.tuned_loss != result.base_loss  # two steps at learning rate 1e-2 changed the model
    assert result.ratio == pytest.approx(result.tuned_loss / result.base_loss)
    assert (result.max_forgetting, result.exceeded) == (STRICT, True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["evaluation"]["forgetting"] == result.to_wire()
    assert manifest["evaluation"]["seconds"] > 0  # evaluation's own time, beside the forgetting figure
    assert manifest["degraded"] == [{"reason": ErrorCode.FORGETTING_EXCEEDED, "message": result.summary()}]
    assert "adapter/adapter_model.safetensors" in manifest["files"]
    card = (out / "README.md").read_text()
    assert f"> **Degraded ({ErrorCode.FORGETTING_EXCEEDED})**: {result.summary()}" in card and "## Forgetting" in card
    assert f"{result.summary()}\n" in printed
    assert result.summary().startswith(f"forgetting on the reference set ({result.tokens} tokens): base loss ")
    assert "DEGRADED: " in printed


@pytest.mark.slow
def test_fail_mode_fails_above_the_gate_without_a_manifest(ray_cluster: None, tiny_model_dir: Path,
                                                            copy_data: Path, reference_file: Path,
                                                            tmp_path: Path) -> None:
    from sftjob_trainer.driver import run_job

    job = make_job("forget-fail", tiny_model_dir, copy_data, tmp_path, hyperparameters={"maxSteps": 2},
                   evaluation={"reference": {"uri": str(reference_file)}, "maxForgetting": STRICT,
                               "onForgetting": "fail"})
    with pytest.raises(TrainerError) as caught:
        run_job(context_for(job, 1))
    assert (caught.value.code, caught.value.field) == (ErrorCode.FORGETTING_EXCEEDED, "spec.evaluation.maxForgetting")
    failed = tmp_path / "forget-fail"
    progress = ProgressFile.model_validate_json((failed / "progress.json").read_text())
    assert progress.phase == "Failed" and progress.error is not None
    assert progress.error.code == ErrorCode.FORGETTING_EXCEEDED
    assert not progress.error.retryable
    assert progress.evaluation is not None and progress.evaluation.forgetting is not None
    result = progress.evaluation.forgetting
    assert result.exceeded and result.base_loss is not None and result.tuned_loss is not None
    assert result.ratio == pytest.approx(result.tuned_loss / result.base_loss)
    assert result.summary() in caught.value.message
    assert not (failed / "manifest.json").exists()  # the weights rank 0 saved are there, but nobody trusts them
    assert (failed / "adapter" / "adapter_model.safetensors").exists()
