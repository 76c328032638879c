"""Test-only fault injection: environment hooks the reliability tests set on the driver. Never set in production.

Every hook is inert unless its variable is set. The driver reads the variables (`fault_plan`) and hands what it
found to the Ray Train workers as `WorkerConfig.faults`, because the workers do not see the driver's environment
(only the Ray job's runtime environment). Without any of them the plan is None and no fault callback exists.

- `SFTJOB_FAULT_KILL_DRIVER_AT_STEP=N`: rank 0 SIGKILLs the driver process after optimizer step N, as a lost
  head node would.
- `SFTJOB_FAULT_OOM_AT_STEP=N`: rank 0's allocator "fails" at the start of optimizer step N with the error torch
  raises when memory runs out.
- `SFTJOB_FAULT_KILL_WORKER_AT_STEP=N`: rank 1 SIGKILLs its own process in the middle of optimizer step N,
  after the forward and backward passes (gradients already all-reduced) and before the optimizer step, as a
  lost worker node would. It fires once per driver: the worker Ray restarts in its place finds the marker file
  the dead one created and trains on. Markers live in the node's temporary directory, so the hook is for
  single-node (local Ray) tests.
"""

from __future__ import annotations

import os
import signal
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

KILL_DRIVER_AT_STEP_ENV = "SFTJOB_FAULT_KILL_DRIVER_AT_STEP"
OOM_AT_STEP_ENV = "SFTJOB_FAULT_OOM_AT_STEP"
KILL_WORKER_AT_STEP_ENV = "SFTJOB_FAULT_KILL_WORKER_AT_STEP"
# The rank the worker-kill hook kills: a worker that is not rank 0, so progress.json's writer survives and the
# test observes Ray Train's restart of the worker group rather than the loss of the progress writer.
KILLED_RANK = 1


@dataclass(frozen=True)
class KillDriver:
    """Rank 0 SIGKILLs the driver once optimizer step `step` is done (progress.json written first)."""

    step: int
    """The optimizer step after which the driver dies."""
    pid: int
    """The driver's process id."""


@dataclass(frozen=True)
class KillWorker:
    """One worker SIGKILLs itself in the middle of an optimizer step, once per driver."""

    step: int
    """The optimizer step during which it dies."""
    rank: int
    """The world rank that dies."""
    marker: str
    """A path unique to the driver that does not exist yet: the first worker to create it dies, every later one
    (the restarted worker group) sees it and trains on."""


@dataclass(frozen=True)
class FaultPlan:
    """The faults the reliability tests asked for (`fault_plan`); every field None is no fault of that kind."""

    kill_driver: KillDriver | None = None
    """`SFTJOB_FAULT_KILL_DRIVER_AT_STEP`."""
    oom_at_step: int | None = None
    """`SFTJOB_FAULT_OOM_AT_STEP`: the step at which rank 0 fails with out-of-memory."""
    kill_worker: KillWorker | None = None
    """`SFTJOB_FAULT_KILL_WORKER_AT_STEP`."""


def _step(env: str) -> int | None:
    value = os.environ.get(env, "")
    return int(value) if value.isdigit() else None


def fault_plan() -> FaultPlan | None:
    """The faults this process's environment asks for, or None when it asks for none (production)."""
    kill_driver, oom, kill_worker = (_step(env) for env in (KILL_DRIVER_AT_STEP_ENV, OOM_AT_STEP_ENV,
                                                             KILL_WORKER_AT_STEP_ENV))
    if kill_driver is None and oom is None and kill_worker is None:
        return None
    return FaultPlan(
        kill_driver=KillDriver(kill_driver, os.getpid()) if kill_driver is not None else None,
        oom_at_step=oom,
        kill_worker=KillWorker(kill_worker, KILLED_RANK, os.path.join(
            tempfile.gettempdir(), f"sftjob-fault-kill-worker-{os.getpid()}-{uuid.uuid4().hex}"))
        if kill_worker is not None else None,
    )


def claim_once(marker: str) -> bool:
    """Create `marker` atomically; True for the one caller that created it, False once it exists."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def fault_callbacks(plan: FaultPlan | None, rank: int, writer: Any) -> list[Any]:
    """The Trainer callbacks of the hooks for this rank (empty unless a hook is set).

    Add them after the progress callback: the driver dies only once progress.json holds the step.

    Args:
        plan: `WorkerConfig.faults`.
        rank: This worker's world rank.
        writer: Rank 0's `ProgressWriter` (None on other ranks).

    Returns:
        `transformers.TrainerCallback` instances to add to the Trainer.
    """
    if plan is None:
        return []
    from transformers import TrainerCallback

    callbacks: list[Any] = []
    kill_driver, oom_at_step, kill_worker = plan.kill_driver, plan.oom_at_step, plan.kill_worker
    if rank == 0 and (kill_driver is not None or oom_at_step is not None):

        class Rank0Faults(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if oom_at_step is not None and state.global_step + 1 == oom_at_step:
                    import torch

                    raise torch.OutOfMemoryError(f"injected by {OOM_AT_STEP_ENV}: tried to allocate 64.00 GiB")

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if kill_driver is not None and state.global_step == kill_driver.step:
                    writer.flush()
                    os.kill(kill_driver.pid, signal.SIGKILL)

        callbacks.append(Rank0Faults())
    if kill_worker is not None and rank == kill_worker.rank:
        step, marker = kill_worker.step, kill_worker.marker

        class KillWorkerMidStep(TrainerCallback):
            def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                # global_step counts finished steps: step N is running while it is N - 1.
                if state.global_step + 1 == step and claim_once(marker):
                    os.kill(os.getpid(), signal.SIGKILL)

        callbacks.append(KillWorkerMidStep())
    return callbacks
