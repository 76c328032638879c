"""Training health guards: stop at the first non-finite loss or gradient norm, skip batches whose loss spikes.

Both act in the Trainer's `on_pre_optimizer_step` event, after the backward passes of a step (gradients
accumulated, all-reduced and clipped) and before `optimizer.step()`, so a bad step never reaches the weights:

- **Non-finite**: a NaN or infinite loss or gradient norm raises `TrainerError(NonFiniteLoss)` naming the step.
  Every checkpoint therefore holds finite weights, and a retry resumes from the last one. The first occurrence
  in a job is retryable, the second is not: `ProgressFile.non_finite_steps` (written by rank 0 before it raises,
  carried across attempts by the driver) records them.
- **Loss spike** (`hyperparameters.lossSpike`): a step whose loss exceeds `factor` times the median loss of the
  last `window` steps applies no update. Its gradients are dropped (`grad = None`), and PyTorch's optimizers
  skip a parameter without a gradient entirely (no moment update, no weight decay, no step count), so the
  weights and optimizer state stay exactly as before the batch: what "roll back to the last checkpoint and
  skip the batch" ends in, without reloading the checkpoint or replaying the good steps since it. The
  learning-rate scheduler still steps: the step counts (`global_step` advances, the batch is consumed), and
  keeping the schedule a function of `global_step` makes a resume from any checkpoint reproduce it. The
  median (not the mean) so that one spike in the window does not raise the bar for the next; skipped losses
  enter the window too, so a lasting change of the loss level (e.g. a new data source) is accepted after about
  half a window instead of stalling training. The window restarts empty in every attempt (it is not
  checkpointed): the guard acts again after `window` steps.

The per-step loss comes from `HealthGuardMixin.training_step` (mixed into the Trainer class): the sum of the
micro-batch losses the Trainer backpropagated, averaged over the data-parallel ranks, i.e. the `loss` the
Trainer logs for a step. Every rank takes the same decision: the loss is all-reduced and the gradients are
identical after DDP's all-reduce. The gradient norm is recomputed from the (clipped) gradients of the
optimizer's parameters: clipping keeps a non-finite norm non-finite (it multiplies by max_norm / norm). One
device synchronisation per step reads both numbers. Sharded gradients (FSDP, DeepSpeed ZeRO) are not handled:
the norm would be a rank's shard's.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.progress import MAX_SKIPPED_STEPS, ProgressFile
from sftjob_api.types import LossSpikeSpec
from sftjob_trainer.trainer_error import TrainerError

log = logging.getLogger(__name__)

NON_FINITE_FIELD = "spec.hyperparameters.learningRate"


class SpikeDetector:
    """Whether a step's loss spikes above `factor` × the median of the last `window` step losses (pure)."""

    def __init__(self, spec: LossSpikeSpec) -> None:
        """Create a detector.

        Args:
            spec: `hyperparameters.lossSpike`.
        """
        self.factor = spec.factor
        self.losses: deque[float] = deque(maxlen=spec.window)

    def observe(self, loss: float) -> float | None:
        """Record a finite step loss and judge it against the losses before it.

        Args:
            loss: The step's loss.

        Returns:
            The median it spiked above (the step is to be skipped), else None (also while the window fills).
        """
        full = len(self.losses) == self.losses.maxlen
        median = statistics.median(self.losses) if full else None
        self.losses.append(loss)  # a skipped loss too: see the module docstring
        if median is not None and median > 0 and loss > self.factor * median:
            return median
        return None


def non_finite_error(problem: str, step: int, total_steps: int | None, earlier_steps: list[int]) -> TrainerError:
    """The `NonFiniteLoss` error of a step: retryable the first time in a job, not once an earlier one happened.

    Args:
        problem: What became non-finite, e.g. `the training loss became nan`.
        step: The optimizer step (1-based) that produced it.
        total_steps: Steps planned, for the message.
        earlier_steps: Steps of earlier non-finite stops in this job (attempts before this one).

    Returns:
        The error.
    """
    of = f" of {total_steps}" if total_steps else ""
    retryable = not earlier_steps
    if retryable:
        after = "the next attempt resumes from the last checkpoint (all checkpoints hold finite weights)"
    else:
        seen = ", ".join(str(s) for s in earlier_steps)
        after = f"it already happened at step {seen} in an earlier attempt, so the job is not retried"
    return TrainerError(
        ErrorCode.NON_FINITE_LOSS,
        f"{problem} at step {step}{of}; the optimizer did not apply it, and {after}. "
        "Lower hyperparameters.learningRate or raise warmupRatio, keep hyperparameters.maxGradNorm above 0, "
        "check the training rows of this step for empty or corrupt examples, and prefer precision bf16 or fp32 "
        "to fp16",
        NON_FINITE_FIELD,
        retryable=retryable,
    )


class HealthGuard:
    """The guards' state on one rank: the step's loss (from the mixin), the spike window, the skipped steps.

    Attributes:
        skipped_steps: Steps whose batch the spike guard skipped, ascending (this job, newest
            `MAX_SKIPPED_STEPS`).
        non_finite_steps: Steps at which a non-finite value stopped training in this job.
    """

    def __init__(self, loss_spike: LossSpikeSpec | None, progress: ProgressFile, writer: Any = None) -> None:
        """Create the guard.

        Args:
            loss_spike: `hyperparameters.lossSpike`; None checks only for non-finite values.
            progress: The attempt's progress at its start: its `skipped_steps` and `non_finite_steps` carry on.
            writer: Rank 0's `ProgressWriter` (None on other ranks): records both lists in progress.json.
        """
        self.detector = SpikeDetector(loss_spike) if loss_spike is not None else None
        self.skipped_steps = list(progress.skipped_steps)
        self.non_finite_steps = list(progress.non_finite_steps)
        self.writer = writer
        self._step_loss: Any = None
        self._started = False

    def record_loss(self, loss: Any) -> None:
        """Add a micro-batch's backpropagated loss (a detached tensor) to the current step's (no device sync)."""
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss

    def check_step(self, step: int, total_steps: int | None, optimizer: Any) -> bool:
        """Judge step `step` before the optimizer applies it; drop its gradients when its loss spiked.

        Args:
            step: The optimizer step being taken (1-based: the Trainer's `global_step + 1`).
            total_steps: Steps planned, for messages.
            optimizer: The optimizer about to step (its parameters' gradients are read and maybe dropped).

        Returns:
            Whether the step's batch was skipped.

        Raises:
            TrainerError: NonFiniteLoss when the loss or the gradient norm is NaN or infinite.
        """
        if not self._started:
            # A resumed run replays the steps after its checkpoint: their skips are counted again as they recur.
            self._started = True
            self.skipped_steps = [s for s in self.skipped_steps if s < step]
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        loss, grad_norm = self._read(params)
        problem = None
        if loss is not None and not math.isfinite(loss):
            problem = f"the training loss became {loss}"
        elif not math.isfinite(grad_norm):
            # Not its value: clipping turns an infinite norm into NaN gradients, so the value here says little.
            problem = "the gradient norm became non-finite (a NaN or infinite gradient)"
        if problem is not None:
            error = non_finite_error(problem, step, total_steps, self.non_finite_steps)
            self.non_finite_steps = [*self.non_finite_steps, step][-100:]
            self._record(non_finite_steps=self.non_finite_steps)
            raise error
        if self.detector is None:
            return False
        if loss is None:
            raise RuntimeError("hyperparameters.lossSpike needs HealthGuardMixin in the Trainer class")
        median = self.detector.observe(loss)
        if median is None:
            return False
        for p in params:
            p.grad = None  # the optimizer skips parameters without a gradient: no update, no state change
        self.skipped_steps = [*self.skipped_steps, step][-MAX_SKIPPED_STEPS:]
        log.warning("loss spike at step %d: %.4g > %g x median %.4g of the last %d steps; batch skipped",
                    step, loss, self.detector.factor, median, self.detector.losses.maxlen)
        self._record(skipped_steps=self.skipped_steps)
        return True

    def _read(self, params: list[Any]) -> tuple[float | None, float]:
        """The step's loss (mean over ranks; None without the mixin) and gradient norm, in one device sync."""
        import torch
        import torch.distributed as dist

        loss, self._step_loss = self._step_loss, None
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]).float()
        if loss is None:
            return None, float(norm)
        loss = loss.detach().float().reshape(())
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            loss = loss.clone()
            dist.all_reduce(loss)  # every rank must take the same skip decision
            loss = loss / dist.get_world_size()
        values = torch.stack([loss, norm.to(loss.device)]).tolist()
        return float(values[0]), float(values[1])

    def _record(self, **fields: Any) -> None:
        if self.writer is not None:
            self.writer.update(force=True, **fields)

    def callback(self) -> Any:
        """The `transformers.TrainerCallback` that runs the guards (add it to the Trainer's callbacks)."""
        from transformers import TrainerCallback

        guard = self

        class HealthCallback(TrainerCallback):
            def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                                      **kwargs: Any) -> None:
                # global_step counts finished steps: step N is running while it is N - 1.
                guard.check_step(state.global_step + 1, state.max_steps or None, optimizer)

        return HealthCallback()


class HealthGuardMixin:
    """Mix into the Trainer class (before TRL's `SFTTrainer`) so the guard sees every micro-batch's loss.

    Set `health_guard` on the trainer instance; None (the default) leaves `training_step` unchanged.
    """

    health_guard: HealthGuard | None = None

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        """The Trainer's training step (forward and backward), recording the loss it returns for the guard."""
        loss = super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        if self.health_guard is not None:
            self.health_guard.record_loss(loss)
        return loss


__all__ = ["NON_FINITE_FIELD", "HealthGuard", "HealthGuardMixin", "SpikeDetector", "non_finite_error"]
