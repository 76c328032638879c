"""The training health guards: a non-finite loss or gradient stops the run before the optimizer applies it; a
loss spike skips its batch (weights and optimizer state untouched) and training goes on.

Single-process (no Ray): `build_trainer` with a Trainer class that mixes in `HealthGuardMixin` and a test hook
on the loss of a chosen step, on the tiny model and the copy-task rows.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from sftjob_api.codes import ErrorCode
from sftjob_api.layout import PROGRESS_FILE
from sftjob_api.progress import ProgressFile
from sftjob_api.types import LossSpikeSpec
from sftjob_trainer import worker
from sftjob_trainer.health import HealthGuard, HealthGuardMixin, SpikeDetector, non_finite_error
from sftjob_trainer.reporting import ProgressWriter, now_rfc3339
from sftjob_trainer.trainer_error import TrainerError

from .conftest import make_job

# What the hook does to the loss of step `step` (1-based) before the backward pass.
Inject = Callable[[Any, int, torch.Tensor], torch.Tensor]


def _no_injection(trainer: Any, step: int, loss: torch.Tensor) -> torch.Tensor:
    return loss


class Probe:
    """Snapshots of the trainable weights and the optimizer state around each step, and the logged losses."""

    def __init__(self) -> None:
        self.before: dict[int, tuple[dict[str, torch.Tensor], Any]] = {}
        self.after: dict[int, tuple[dict[str, torch.Tensor], Any]] = {}
        self.logged: dict[int, float] = {}

    def callback(self) -> Any:
        from transformers import TrainerCallback

        probe = self

        def snapshot(model: Any, optimizer: Any) -> tuple[dict[str, torch.Tensor], Any]:
            weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            return weights, copy.deepcopy(optimizer.state_dict()["state"])

        class ProbeCallback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                              **kwargs: Any) -> None:
                probe.before[state.global_step + 1] = snapshot(model, optimizer)

            def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                            **kwargs: Any) -> None:
                probe.after[state.global_step] = snapshot(model, optimizer)

            def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                       **kwargs: Any) -> None:
                if logs and "loss" in logs:
                    probe.logged[state.global_step] = logs["loss"]

        return ProbeCallback()


def _train(tiny_model_dir: Path, copy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inject: Inject,
           progress: ProgressFile | None = None, **hyper: Any) -> tuple[Any, HealthGuard, Probe, ProgressWriter]:
    """Build the production trainer (with the mixin and `inject`), train, and return what the test inspects."""
    from transformers import Trainer
    from trl import SFTTrainer

    from sftjob_trainer.data import prepare_dataset
    from sftjob_trainer.hparams import Device, resolve, training_arguments
    from sftjob_trainer.methods import apply_method
    from sftjob_trainer.model_loading import load_model, load_tokenizer

    class GuardedTrainer(HealthGuardMixin, SFTTrainer):
        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss = Trainer.compute_loss(self, model, inputs, False, num_items_in_batch)  # the lean path
            return inject(self, self.state.global_step + 1, cast(torch.Tensor, loss))

    # Two micro-batches per step: the guard must judge the accumulated step, not a micro-batch.
    job = make_job("h", tiny_model_dir, copy_data, tmp_path / "out", hyperparameters={
        "maxSteps": 6, "batchSize": 8, "perDeviceBatchSize": 4, "learningRate": 1e-2, "logInterval": 1, **hyper})
    spec = job.spec
    tokenizer = load_tokenizer(tiny_model_dir, spec.model)
    prepared = prepare_dataset(spec.dataset, tokenizer, seed=1)
    model = apply_method(load_model(tiny_model_dir, spec.model, tokenizer, "fp32"), spec.method, str(tiny_model_dir))
    plan = resolve(spec, Device(cuda=False), 0, len(prepared.train), batching="packed")
    args = {**training_arguments(spec, plan, str(tmp_path / "hf")), "save_strategy": "no", "eval_strategy": "no"}
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in prepared.train]
    writer = ProgressWriter(str(tmp_path / "out"), attempt=1, interval_s=3600)
    guard = HealthGuard(spec.hyperparameters.loss_spike,
                        progress or ProgressFile(phase="Running", updated_at=now_rfc3339()), writer)
    probe = Probe()
    monkeypatch.setattr(worker, "lean_sft_trainer_class", lambda: GuardedTrainer)
    trainer = worker.build_trainer(spec, model, tokenizer, args, "packed", rows, None,
                                   [guard.callback(), probe.callback()])
    trainer.health_guard = guard
    return trainer, guard, probe, writer


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_state(a: Any, b: Any) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def _written(writer: ProgressWriter) -> dict[str, Any]:
    return dict(json.loads((Path(writer.output_uri) / PROGRESS_FILE).read_text()))


def test_nan_loss_stops_before_the_optimizer_applies_it(tiny_model_dir: Path, copy_data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_at_3(trainer: Any, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step == 3 else loss

    trainer, guard, probe, writer = _train(tiny_model_dir, copy_data, tmp_path, monkeypatch, nan_at_3)
    with pytest.raises(TrainerError) as caught:
        trainer.train()
    err = caught.value
    assert (err.code, err.field, err.retryable) == (ErrorCode.NON_FINITE_LOSS, "spec.hyperparameters.learningRate",
                                                    True)
    assert "the training loss became nan at step 3 of 6" in err.message
    assert trainer.state.global_step == 2
    # The weights and the optimizer state are those after step 2: step 3's NaN gradients never reached them.
    weights, state = probe.before[3]
    now = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert _same(weights, now) and all(bool(torch.isfinite(p).all()) for p in now.values())
    assert _same_state(state, trainer.optimizer.state_dict()["state"])
    assert _same(probe.after[2][0], weights)
    assert guard.non_finite_steps == [3] and _written(writer)["nonFiniteSteps"] == [3]


def test_infinite_gradient_with_a_finite_loss_stops(tiny_model_dir: Path, copy_data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    earlier = ProgressFile(phase="Failed", updated_at=now_rfc3339(), non_finite_steps=[2])

    def inf_grad_at_2(trainer: Any, step: int, loss: torch.Tensor) -> torch.Tensor:
        if step != 2:
            return loss
        lora_b = next(p for n, p in trainer.model.named_parameters() if "lora_B" in n)
        # The loss keeps its value (lora_B starts at zero); the backward pass gives lora_B an infinite gradient.
        return loss + _InfGrad.apply(lora_b).sum() * 0.0

    trainer, _, _, _ = _train(tiny_model_dir, copy_data, tmp_path, monkeypatch, inf_grad_at_2, progress=earlier)
    with pytest.raises(TrainerError) as caught:
        trainer.train()
    assert caught.value.code == ErrorCode.NON_FINITE_LOSS
    assert caught.value.message.startswith(
        "the gradient norm became non-finite (a NaN or infinite gradient) at step 2 of 6")
    # A second occurrence in the job (the earlier attempt's, from progress.json) is not retried.
    assert caught.value.retryable is False
    assert "already happened at step 2 in an earlier attempt" in caught.value.message


class _InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (a finite loss with a non-finite gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, math.inf)


def test_loss_spike_skips_the_batch_and_training_goes_on(tiny_model_dir: Path, copy_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def spike_at_5(trainer: Any, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 100 if step == 5 else loss

    trainer, guard, probe, writer = _train(tiny_model_dir, copy_data, tmp_path, monkeypatch, spike_at_5,
                                           lossSpike={"factor": 3, "window": 3})
    trainer.train()
    assert trainer.state.global_step == 6  # training went on to the end
    assert guard.skipped_steps == [5] and _written(writer)["skippedSteps"] == [5]
    # Step 5 applied nothing: weights and AdamW moments equal to before it; steps 4 and 6 did update.
    assert _same(probe.before[5][0], probe.after[5][0])
    assert _same_state(probe.before[5][1], probe.after[5][1])
    assert not _same(probe.before[4][0], probe.after[4][0])
    assert not _same(probe.before[6][0], probe.after[6][0])
    # The guard judged the loss the Trainer logs for a step (two micro-batches accumulated): the spike is 100x.
    assert guard.detector is not None
    assert list(guard.detector.losses) == pytest.approx([probe.logged[s] for s in (4, 5, 6)], rel=1e-5)
    assert probe.logged[5] > 50 * probe.logged[4]


def test_without_a_spike_nothing_is_skipped(tiny_model_dir: Path, copy_data: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, guard, probe, _ = _train(tiny_model_dir, copy_data, tmp_path, monkeypatch, _no_injection,
                                      lossSpike={"factor": 3, "window": 3})
    trainer.train()
    assert trainer.state.global_step == 6 and guard.skipped_steps == []
    # Every step updated the weights but the first, whose warmup learning rate is 0.
    assert all(not _same(probe.before[s][0], probe.after[s][0]) for s in range(2, 7))


def test_spike_detector_median_window() -> None:
    detector = SpikeDetector(LossSpikeSpec(factor=3, window=4))
    # Not armed until the window is full, however large the loss.
    assert [detector.observe(x) for x in (2.0, 50.0, 2.0, 2.0)] == [None, None, None, None]
    # The median (2.0) ignores the earlier outlier: 6.5 > 3 x 2 is a spike, 5.9 is not.
    assert detector.observe(6.5) == 2.0
    assert detector.observe(5.9) is None
    # A lasting new level is accepted once it fills half the window.
    lasting = SpikeDetector(LossSpikeSpec(factor=2, window=4))
    results = [lasting.observe(x) for x in (1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0)]
    assert results == [None, None, None, None, 1.0, 1.0, None, None]


def test_non_finite_error_is_retryable_only_the_first_time() -> None:
    first = non_finite_error("the training loss became nan", 7, 100, [])
    assert (first.code, first.retryable) == (ErrorCode.NON_FINITE_LOSS, True)
    assert first.message.startswith("the training loss became nan at step 7 of 100; the optimizer did not apply")
    assert "resumes from the last checkpoint" in first.message
    again = non_finite_error("the training loss became inf", 7, None, [7])
    assert again.retryable is False and "at step 7;" in again.message and "not retried" in again.message
    assert again.to_status().retryable is False


def test_a_resumed_run_counts_a_replayed_skip_once() -> None:
    progress = ProgressFile(phase="Running", updated_at=now_rfc3339(), skipped_steps=[3, 9, 13])
    guard = HealthGuard(LossSpikeSpec(factor=3, window=3), progress)
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param])
    for step, loss in zip(range(9, 14), (1.0, 1.0, 1.0, 1.0, 10.0), strict=True):  # resumed from step 8
        param.grad = torch.ones(2)
        guard.record_loss(torch.tensor(loss))
        assert guard.check_step(step, 20, optimizer) is (step == 13)
    # Steps after the checkpoint are replayed: 9 (not a spike this time) is dropped, the replayed 13 counts once.
    assert guard.skipped_steps == [3, 13] and param.grad is None
