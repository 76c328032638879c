"""Fast checks without Ray: hyperparameter resolution, config, progress writing, model loading options, errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from sftjob_api.progress import ProgressFile
from sftjob_api.types import ModelSpec
from sftjob_trainer.config import load_context
from sftjob_trainer.driver import checkpoint_storage, plan_job, run_name
from sftjob_trainer.errors import TrainerError, is_out_of_memory, out_of_memory
from sftjob_trainer.hparams import DEFAULT_LR, Device, batch_split, resolve, training_arguments
from sftjob_trainer.model_loading import PAD_TOKEN, load_model, load_tokenizer, split_hf
from sftjob_trainer.reporting import ProgressWriter, read_metrics

from .conftest import job_document, make_job


def test_batch_split() -> None:
    assert batch_split(16, 1, None) == (8, 2)   # auto per-device is capped at 8, accumulation covers the rest
    assert batch_split(16, 2, None) == (8, 1)
    assert batch_split(12, 2, None) == (6, 1)
    assert batch_split(32, 2, 4) == (4, 4)
    with pytest.raises(TrainerError) as err:
        batch_split(8, 2, 8)
    assert err.value.field == "spec.hyperparameters.perDeviceBatchSize"


def test_total_steps(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    by_epochs = make_job("t", tiny_model_dir, copy_data, tmp_path, hyperparameters={"maxSteps": None, "epochs": 2,
                                                                                   "batchSize": 8})
    assert resolve(by_epochs.spec, Device(cuda=False), 0, 48).total_steps == 12  # 48 rows / 8 = 6 per epoch
    assert resolve(by_epochs.spec, Device(cuda=False), 0, 50).total_steps == 14  # a partial batch is a step
    by_steps = make_job("t", tiny_model_dir, copy_data, tmp_path, hyperparameters={"maxSteps": 3, "epochs": 5})
    assert resolve(by_steps.spec, Device(cuda=False), 0, 48).total_steps == 3


def test_precision_and_checkpointing(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    job = make_job("t", tiny_model_dir, copy_data, tmp_path)
    cpu = resolve(job.spec, Device(cuda=False), 2_000_000_000, 48).resolved
    assert (cpu.precision, cpu.gradient_checkpointing, cpu.device) == ("fp32", False, "cpu")
    gpu = resolve(job.spec, Device(cuda=True, bf16=True), 2_000_000_000, 48).resolved
    assert (gpu.precision, gpu.gradient_checkpointing) == ("bf16", True)
    small = resolve(job.spec, Device(cuda=True, bf16=False), 1_000, 48).resolved
    assert (small.precision, small.gradient_checkpointing) == ("fp32", False)
    forced = make_job("t", tiny_model_dir, copy_data, tmp_path,
                      hyperparameters={"precision": "fp16", "gradientCheckpointing": "on"})
    with pytest.raises(TrainerError) as err:
        resolve(forced.spec, Device(cuda=False), 0, 48)
    assert err.value.code == "UnsupportedDevice"
    assert resolve(forced.spec, Device(cuda=True), 0, 48).resolved.gradient_checkpointing is True


def test_training_arguments(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    hyper = {"maxSteps": 100, "learningRate": None, "lrScheduler": "constant_with_warmup", "warmupRatio": 0.1,
             "weightDecay": 0.2, "maxGradNorm": 0.5, "seed": 9, "logInterval": 5, "evalInterval": 20,
             "neftuneNoiseAlpha": 5.0}
    for method in ("lora", "full", "prompt_tuning"):
        job = make_job("t", tiny_model_dir, copy_data, tmp_path, method={"type": method}, hyperparameters=hyper)
        plan = resolve(job.spec, Device(cuda=False), 0, 48)
        args = training_arguments(job.spec, plan, "/tmp/x")
        assert args["learning_rate"] == DEFAULT_LR[method]
        assert (args["lr_scheduler_type"], args["warmup_steps"], args["weight_decay"], args["max_grad_norm"]) == (
            "constant_with_warmup", 10, 0.2, 0.5)
        assert (args["seed"], args["logging_steps"], args["eval_strategy"], args["eval_steps"]) == (9, 5, "steps", 20)
        assert args["neftune_noise_alpha"] == 5.0 and args["max_steps"] == 100
        assert (args["save_strategy"], args["save_steps"]) == ("steps", 2)


def test_batching_choice(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    from sftjob_trainer.data import prepare_dataset

    for method, packing, expected in (("lora", True, "packed"), ("lora", False, "length_grouped"),
                                      ("prompt_tuning", True, "length_grouped")):
        job = make_job("t", tiny_model_dir, copy_data, tmp_path, method={"type": method},
                       dataset={"packing": packing})
        tokenizer = load_tokenizer(tiny_model_dir, job.spec.model)
        prepared = prepare_dataset(job.spec.dataset, tokenizer, seed=1)
        plan, batching = plan_job(make_ctx(job), prepared, tokenizer, tiny_model_dir)
        assert batching == expected == plan.resolved.batching


def make_ctx(job: Any) -> Any:
    from sftjob_trainer.config import context_for

    return context_for(job, 1)


def test_run_config(tiny_model_dir: Path, copy_data: Path, tmp_path: Path, s3_env: Any) -> None:
    latest = make_ctx(make_job("job", tiny_model_dir, copy_data, tmp_path))
    assert run_name(latest) == "job"
    fresh = make_ctx(make_job("job", tiny_model_dir, copy_data, tmp_path, checkpointing={"resumeFrom": "none"}))
    assert run_name(fresh) == "job-a1"
    path, filesystem = checkpoint_storage("s3://bucket/out/job")
    assert path == "bucket/out/job/checkpoints" and type(filesystem).__name__ == "S3FileSystem"
    local_path, local_fs = checkpoint_storage(str(tmp_path / "job"))
    assert local_path == str(tmp_path / "job" / "checkpoints") and local_fs is None


def test_config_from_env_and_file(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    doc = job_document("env-job", "model", "data/train.jsonl", None, "out")
    ctx = load_context({"SFTJOB_CONFIG": json.dumps(doc), "SFTJOB_ATTEMPT": "3"})
    assert (ctx.name, ctx.attempt) == ("env-job", 3)
    assert ctx.output_uri == str(Path("out").absolute() / "env-job")  # relative paths resolved for Ray workers
    (tmp_path / "job.json").write_text(json.dumps({**doc, "metadata": {"name": "f", "namespace": "ns"}}))
    assert load_context({"SFTJOB_CONFIG_FILE": str(tmp_path / "job.json")}).output_uri.endswith("/out/ns/f")
    for env, field in (({}, None), ({"SFTJOB_CONFIG": "{"}, None),
                       ({"SFTJOB_CONFIG": json.dumps({**doc, "spec": {**doc["spec"], "method": {"type": "x"}}})},
                        "spec.method.type")):
        with pytest.raises(TrainerError) as err:
            load_context(env)
        assert err.value.code == "InvalidSpec" and err.value.field == field


def test_trainer_error_survives_pickling() -> None:
    data = pickle.dumps(TrainerError("ModelUnreadable", "gone", "spec.model.source"))
    err = pickle.loads(data)  # noqa: S301 - our own bytes, as Ray ships a worker's error to the driver
    assert (err.code, err.message, err.field, err.retryable) == ("ModelUnreadable", "gone", "spec.model.source", False)
    assert TrainerError("NodeLost", "x").retryable is True


def test_real_allocation_failure_maps_to_out_of_memory() -> None:
    with pytest.raises(RuntimeError) as raised:
        torch.empty(2**62, dtype=torch.uint8)  # far beyond any machine's memory: the allocator refuses at once
    assert is_out_of_memory(raised.value)
    error = out_of_memory("training step 1", str(raised.value))
    assert error.code == "OutOfMemory" and not error.retryable and "perDeviceBatchSize" in error.message


def test_progress_writer_throttles_and_keeps_metrics(tmp_path: Path) -> None:
    writer = ProgressWriter(str(tmp_path), attempt=2, interval_s=3600)
    writer.set_phase("Running")
    writer.update(step=5)  # within the interval: not written yet
    assert ProgressFile.model_validate_json((tmp_path / "progress.json").read_text()).step == 0
    writer.update(force=True, step=6, total_steps=10, percentage=60.0)
    written = ProgressFile.model_validate_json((tmp_path / "progress.json").read_text())
    assert (written.phase, written.step, written.attempt) == ("Running", 6, 2)
    for step in (1, 2, 3):
        writer.append_metrics({"step": step, "loss": float(step), "bad": float("nan")})
    writer.truncate_metrics_after(2)
    assert read_metrics(str(tmp_path)) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]


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


def test_early_stopping_stops(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    from sftjob_trainer.data import prepare_dataset
    from sftjob_trainer.methods import apply_method
    from sftjob_trainer.worker import build_trainer

    # A learning rate too small to move the eval loss by minDelta: the second evaluation stops the run.
    job = make_job("t", tiny_model_dir, copy_data, tmp_path, hyperparameters={
        "maxSteps": 10, "learningRate": 1e-9, "evalInterval": 1,
        "earlyStopping": {"patience": 1, "metric": "eval_loss", "minDelta": 0.1}})
    tokenizer = load_tokenizer(tiny_model_dir, job.spec.model)
    prepared = prepare_dataset(job.spec.dataset, tokenizer, seed=1)
    model = apply_method(load_model(tiny_model_dir, job.spec.model, tokenizer, "fp32"), job.spec.method,
                         str(tiny_model_dir))
    plan = resolve(job.spec, Device(cuda=False), 0, len(prepared.train))
    args = {**training_arguments(job.spec, plan, str(tmp_path / "hf")), "save_strategy": "no"}
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in prepared.train]
    val = [{"input_ids": e.input_ids, "labels": e.labels} for e in prepared.validation]
    trainer = build_trainer(job.spec, model, tokenizer, args, str(tmp_path / "hf"), "packed", rows, val, [])
    trainer.train()
    assert trainer.state.global_step == 2
    assert args["metric_for_best_model"] == "eval_loss" and args["greater_is_better"] is False


_SINGLE_WORKER = """
import json, os, socket
import torch.distributed as dist
from transformers import TrainingArguments
from sftjob_trainer.worker import train_as_single_process

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
# What Ray Train's torch backend sets up for a lone worker.
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                  LOCAL_WORLD_SIZE="1")
dist.init_process_group("gloo")
before = str(TrainingArguments("out", use_cpu=True, report_to=[]).parallel_mode)
from accelerate.state import AcceleratorState
AcceleratorState._reset_state(reset_partial_state=True)
train_as_single_process()
after = str(TrainingArguments("out", use_cpu=True, report_to=[]).parallel_mode)
left = sorted(k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE") if k in os.environ)
print(json.dumps({"before": before, "after": after, "group": dist.is_initialized(), "env": left}))
"""


def test_a_lone_worker_trains_without_ddp(tmp_path: Path) -> None:
    """Ray Train's one-member process group would make the Trainer wrap the model in DDP; the worker leaves it."""
    out = subprocess.run([sys.executable, "-c", _SINGLE_WORKER], cwd=tmp_path, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {"before": "ParallelMode.DISTRIBUTED", "after": "ParallelMode.NOT_PARALLEL", "group": False,
                    "env": []}
