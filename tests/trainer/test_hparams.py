"""Hyperparameter resolution: batch split, total steps, precision, the Trainer's arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftjob_trainer.hparams import DEFAULT_LR, Device, batch_split, resolve, training_arguments
from sftjob_trainer.trainer_error import TrainerError

from .conftest import make_job


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
