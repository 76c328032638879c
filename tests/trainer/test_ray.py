"""Ray Train runs: 2 workers against a moto S3 server, 1-vs-2-worker loss equality, resume after the driver dies.

Field → test (every SFTJob field that concerns training):

| field | test |
|---|---|
| model.source (s3://, local), bad path | test_two_workers_on_s3, test_errors::test_bad_base_model_path |
| model.revision, hf:// | test_model_loading::test_hf_source_and_revision |
| model.dtype, allowUnsafeWeights | test_model_loading::test_model_load_options |
| dataset.* (formats, templates, masks) | tests/data (the pipeline) |
| dataset.packing | test_preparation::test_batching_choice |
| dataset.train unreadable, credentials | test_errors::test_unreadable_dataset, test_missing_credentials |
| method.type lora, lora.* (r, alpha, dropout, targetModules, useDora, useRslora) | test_methods::test_lora_* |
| method.type full | test_methods::test_full_fine_tuning_changes_every_block |
| method.type freeze, freeze.trainableLayers, trainEmbeddings | test_methods::test_freeze_* |
| method.type prompt_tuning, promptTuning.* | test_methods::test_prompt_tuning_* |
| method.type qlora, quantization | test_methods::test_qlora_without_cuda_fails_with_unsupported_device |
| hyperparameters.batchSize, perDeviceBatchSize | test_hparams::test_batch_split, test_one_and_two_workers_* |
| hyperparameters.epochs, maxSteps | test_hparams::test_total_steps |
| hyperparameters.learningRate, lrScheduler, warmupRatio | test_hparams::test_training_arguments |
| hyperparameters.weightDecay, maxGradNorm | test_hparams::test_training_arguments |
| hyperparameters.seed, logInterval, evalInterval, neftuneNoiseAlpha | test_hparams::test_training_arguments |
| hyperparameters.precision, gradientCheckpointing | test_hparams::test_precision_and_checkpointing |
| hyperparameters.earlyStopping | test_worker::test_early_stopping_stops |
| compute.numWorkers, gpusPerWorker | test_two_workers_on_s3 |
| checkpointing.interval, keep, resumeFrom | test_resume_after_the_driver_is_killed, test_driver::test_run_config |
| evaluation.numSamples, maxNewTokens, metrics, duringTraining | test_two_workers_on_s3 |
| evaluation.reference (maxRows, maxTokens), maxForgetting, onForgetting | test_forgetting (a degrade, a fail run) |
| output.uri, saveAdapter, mergeAdapter | test_two_workers_on_s3 |
| runPolicy.backoffLimit | FailureConfig(max_failures) in driver.py (no test kills a worker within a run) |
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sftjob_api.progress import ProgressFile
from sftjob_trainer import object_store
from sftjob_trainer.driver import run_job
from sftjob_trainer.job_context import context_for
from sftjob_trainer.reporting import read_metrics

from .conftest import job_document, make_job

pytestmark = pytest.mark.slow

# Relative tolerance of the 1-vs-2-worker loss comparison: the same examples and the same token-weighted
# mean, only float32 reductions happen in a different order (measured differences are ~1e-7).
LOSS_RTOL = 1e-4
GLOBAL_BATCH = 8
STEPS = 4


def _upload_tree(local: Path, uri: str) -> None:
    object_store.upload_dir(local, uri)


@pytest.fixture(scope="module")
def s3_two_worker_run(ray_cluster: None, s3_server: Any, tiny_model_dir: Path, copy_data: Path,
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 2-worker run reading model and data from S3 and writing checkpoints and artifacts to it."""
    old = {k: os.environ.get(k) for k in s3_server.env}
    os.environ.update(s3_server.env)
    try:
        bucket = s3_server.create_bucket("sft-it")
        _upload_tree(tiny_model_dir, f"{bucket}/models/tiny")
        _upload_tree(copy_data, f"{bucket}/data")
        # An lm-eval multiple-choice task read from S3, scored on rank 0 before and after training.
        task = "".join(json.dumps({"input": f"Repeat after me: {w}\n", "choices": [w, "seven"], "label": 0}) + "\n"
                       for w in ("red", "cat", "tree"))
        object_store.write_bytes(f"{bucket}/data/repeat_task.jsonl", task.encode())
        doc = job_document("two-workers", f"{bucket}/models/tiny", f"{bucket}/data/train.jsonl",
                           f"{bucket}/data/validation.jsonl", f"{bucket}/out",
                           compute={"numWorkers": 2}, hyperparameters={"maxSteps": STEPS, "batchSize": GLOBAL_BATCH,
                                                                       "evalInterval": 2},
                           output={"mergeAdapter": True},
                           evaluation={"metrics": ["exact_match", "chrf"], "duringTraining": True,
                                       "tasks": [{"name": "repeat", "uri": f"{bucket}/data/repeat_task.jsonl",
                                                  "type": "multiple_choice"}]})
        from sftjob_api.types import parse_sftjob

        result = run_job(context_for(parse_sftjob(doc), 1))
        local = tmp_path_factory.mktemp("s3-out")
        object_store.download_dir(result.output_uri, local)
        return {"result": result, "local": local, "metrics": read_metrics(result.output_uri)}
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_two_workers_on_s3(s3_two_worker_run: dict[str, Any], tiny_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, local = s3_two_worker_run["result"], s3_two_worker_run["local"]
    assert result.output_uri.startswith("s3://sft-it/out/two-workers")
    progress = ProgressFile.model_validate_json((local / "progress.json").read_text())
    assert progress.phase == "Succeeded" and progress.step == STEPS and progress.total_steps == STEPS
    assert progress.resolved is not None and progress.resolved.num_workers == 2
    assert progress.resolved.global_batch_size == GLOBAL_BATCH
    assert progress.trained_tokens > 0 and progress.metrics.eval_loss is not None
    assert [c.step for c in progress.checkpoints] == [2, 4]  # interval 2, keep 2
    assert all(c.uri.startswith("s3://sft-it/out/two-workers/checkpoints/two-workers/") for c in progress.checkpoints)
    # manifest.json: every listed file exists with that digest
    manifest = json.loads((local / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (local / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"], name
    assert {"adapter/adapter_model.safetensors", "model/model.safetensors", "eval_samples.jsonl", "loss.png",
            "eval_report.md", "eval_metrics.png", "README.md", "metrics.jsonl"} <= set(manifest["files"])
    assert (local / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = [json.loads(line) for line in (local / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"prompt", "reference", "base", "finetuned", "scores"} <= set(samples[0])
    # evaluation: both metrics on both models, the headline, its time; the task metric at every evaluation
    evaluation = progress.evaluation
    assert evaluation is not None and [m.name for m in evaluation.metrics] == ["exact_match", "chrf"]
    assert all(m.samples == 2 for m in evaluation.metrics) and evaluation.seconds and evaluation.seconds > 0
    exact = sum(r["scores"]["exact_match"]["finetuned"] for r in samples) / 2
    assert evaluation.metrics[0].tuned == exact and evaluation.score is not None
    assert evaluation.score.startswith(f"exact_match {exact:.2f} (base ")
    assert manifest["evaluation"]["metrics"] == [m.to_wire() for m in evaluation.metrics]
    [task] = evaluation.tasks  # the lm-eval task on both models, with lm-eval's accuracy and its stderr
    assert (task.task, task.metric, task.samples) == ("repeat", "acc", 3)
    assert task.base is not None and task.tuned is not None and 0 <= task.base <= 1 and 0 <= task.tuned <= 1
    assert task.base_stderr is not None and task.tuned_stderr is not None
    during = [r["step"] for r in s3_two_worker_run["metrics"] if "eval_task_exact_match" in r]
    assert during == [2, 4]  # evalInterval 2, on rank 0 only
    # the merged model/ is what a server loads: the exported template renders the trained prompts, every trained
    # stop token is in its generation_config.json (a random tiny model never stops: stopping is shown on SmolLM2)
    serving = manifest["servingCheck"]
    assert serving["prompts"] == serving["templateMatches"] > 0 and serving["missingStopIds"] == []
    report = (local / "eval_report.md").read_text()
    assert report.startswith("# Evaluation of two-workers")
    assert "![task metrics during training](eval_metrics.png)" in report
    card = (local / "README.md").read_text()
    assert "lora" in card and "globalBatchSize" in card and "AutoPeftModelForCausalLM" in card
    # the adapter reloads with PeftModel.from_pretrained, changed the weights, and generates
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(local / "adapter")
    tuned = PeftModel.from_pretrained(base, local / "adapter")
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().sum()) > 0 for p in lora_b)
    ids = tokenizer(samples[0]["prompt"], return_tensors="pt").input_ids
    out = tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 4
    # the merged model equals base + adapter
    merged = AutoModelForCausalLM.from_pretrained(local / "model", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, tuned(ids).logits, atol=1e-4)


def test_one_and_two_workers_have_equal_loss(s3_two_worker_run: dict[str, Any], ray_cluster: None,
                                             tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    job = make_job("two-workers", tiny_model_dir, copy_data, tmp_path,
                   hyperparameters={"maxSteps": STEPS, "batchSize": GLOBAL_BATCH, "evalInterval": 2},
                   output={"mergeAdapter": True})
    result = run_job(context_for(job, 1))
    assert result.progress.resolved is not None and result.progress.resolved.num_workers == 1
    two_resolved = s3_two_worker_run["result"].progress.resolved
    assert (result.progress.resolved.per_device_batch_size, two_resolved.per_device_batch_size) == (8, 4)
    one = {m["step"]: m["loss"] for m in read_metrics(result.output_uri) if "loss" in m}
    two = {m["step"]: m["loss"] for m in s3_two_worker_run["metrics"] if "loss" in m}
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert one[step] == pytest.approx(two[step], rel=LOSS_RTOL), step
    assert result.progress.trained_tokens == s3_two_worker_run["result"].progress.trained_tokens


def test_resume_after_the_driver_is_killed(ray_cluster: None, tiny_model_dir: Path, copy_data: Path,
                                           tmp_path: Path) -> None:
    import ray

    doc = job_document("resume", str(tiny_model_dir), str(copy_data / "train.jsonl"),
                       str(copy_data / "validation.jsonl"), str(tmp_path),
                       hyperparameters={"maxSteps": 6}, checkpointing={"interval": 2, "keep": 3})
    env = {**os.environ, "SFTJOB_CONFIG": json.dumps(doc), "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "SFTJOB_PROGRESS_INTERVAL": "0"}
    out = tmp_path / "resume"
    killed = subprocess.run([sys.executable, "-m", "sftjob_trainer"],
                            env={**env, "SFTJOB_FAULT_KILL_DRIVER_AT_STEP": "3"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    first = ProgressFile.model_validate_json((out / "progress.json").read_text())
    assert first.phase == "Running" and first.step == 3
    assert not (out / "manifest.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "sftjob_trainer"], env={**env, "SFTJOB_ATTEMPT": "2"},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = ProgressFile.model_validate_json((out / "progress.json").read_text())
    assert final.phase == "Succeeded" and final.attempt == 2
    assert final.resumed_from_step == 2 and final.step == 6
    steps = [m["step"] for m in read_metrics(str(out)) if "loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 3 of the killed attempt replaced, not duplicated
    assert [c.step for c in final.checkpoints] == [2, 4, 6]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 6 and "adapter/adapter_model.safetensors" in manifest["files"]
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"], name


def test_sftjob_eval_and_chat_reload_the_output_alone(s3_two_worker_run: dict[str, Any], s3_env: Any,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from sftjob_cli.main import main

    result = s3_two_worker_run["result"]
    report = tmp_path / "again.md"
    assert main(["eval", result.output_uri, "--report", str(report)]) == 0
    out = capsys.readouterr().out
    # the same metrics and lm-eval task as the job's evaluation, from manifest.json's spec and eval_samples.jsonl
    assert [line.split(":")[0] for line in out.splitlines()[:2]] == ["exact_match", "chrf"]
    assert "(2 prompts)" in out and "lm-eval repeat acc: base " in out
    assert report.read_text().startswith("# Evaluation of two-workers\n")
    turns = iter(["Repeat after me: red", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(turns))
    assert main(["chat", result.output_uri, "--max-new-tokens", "4"]) == 0
    chat = capsys.readouterr().out
    assert chat.startswith("two-workers: the fine-tuned model, as a server loads it.")
    assert chat.count("model> ") == 1  # one turn answered, then the empty line ended the chat
    assert main(["eval", str(tmp_path / "nothing-here")]) == 2  # not an output: a clear error, exit 2
    assert "not a finished sftjob output" in capsys.readouterr().err
