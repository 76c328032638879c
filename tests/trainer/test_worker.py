"""The worker's evaluation helpers: a mixture's evaluation loss per source, on a real (tiny) model."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftjob_trainer.forgetting import mean_token_loss
from sftjob_trainer.hparams import Device, resolve, training_arguments
from sftjob_trainer.model_loading import load_model, load_tokenizer
from sftjob_trainer.worker import per_source_eval_loss

from .conftest import make_job


def test_per_source_eval_loss_scores_each_sources_rows_alone(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
            {"input_ids": [10, 11, 12], "labels": [-100, 11, 12]},
            {"input_ids": [5, 20, 21, 22], "labels": [-100, -100, 21, 22]}]
    losses = per_source_eval_loss(model, rows, [1, 0, 1], batch_size=2, pad_token_id=0)
    assert sorted(losses) == [0, 1]
    assert losses[0] == pytest.approx(mean_token_loss(model, [rows[1]], 2, 0))
    assert losses[1] == pytest.approx(mean_token_loss(model, [rows[0], rows[2]], 2, 0))
    assert losses[0] != pytest.approx(losses[1])


def test_the_fault_plan_exists_only_when_the_tests_ask_for_a_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from sftjob_trainer import faults

    for env in (faults.KILL_DRIVER_AT_STEP_ENV, faults.OOM_AT_STEP_ENV, faults.KILL_WORKER_AT_STEP_ENV):
        monkeypatch.delenv(env, raising=False)
    assert faults.fault_plan() is None and faults.fault_callbacks(None, 0, None) == []
    monkeypatch.setenv(faults.KILL_WORKER_AT_STEP_ENV, "3")
    plan = faults.fault_plan()
    assert plan is not None and (plan.kill_driver, plan.oom_at_step) == (None, None)
    assert plan.kill_worker is not None and (plan.kill_worker.step, plan.kill_worker.rank) == (3, faults.KILLED_RANK)
    assert pickle.loads(pickle.dumps(plan)) == plan  # noqa: S301 - Ray ships it inside WorkerConfig
    monkeypatch.setenv(faults.KILL_DRIVER_AT_STEP_ENV, "2")
    driver = faults.fault_plan()
    assert driver is not None and driver.kill_driver == faults.KillDriver(2, os.getpid())


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
    trainer = build_trainer(job.spec, model, tokenizer, args, "packed", rows, val, [])
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
