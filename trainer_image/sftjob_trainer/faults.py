"""Test-only fault injection: environment hooks the reliability tests set on the driver. Never set in production.

Every hook is inert unless its variable is set. The driver reads the variables (`kill_driver_hook`,
`oom_at_step`, `kill_worker_hook`) and passes what it found to the Ray Train workers in their config, because
the workers do not see the driver's environment (only the Ray job's runtime environment).

- `SFTJOB_FAULT_KILL_DRIVER_AT_STEP=N`: rank 0 SIGKILLs the driver process after optimizer step N, as a lost
  head node would (acted on in `sftjob_trainer.worker`'s progress callback).
- `SFTJOB_FAULT_OOM_AT_STEP=N`: rank 0's allocator "fails" at the start of optimizer step N with the error torch
  raises when memory runs out (acted on in the progress callback).
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
from typing import Any

KILL_DRIVER_AT_STEP_ENV = "SFTJOB_FAULT_KILL_DRIVER_AT_STEP"
OOM_AT_STEP_ENV = "SFTJOB_FAULT_OOM_AT_STEP"
KILL_WORKER_AT_STEP_ENV = "SFTJOB_FAULT_KILL_WORKER_AT_STEP"
# The rank the worker-kill hook kills: a worker that is not rank 0, so progress.json's writer survives and the
# test observes Ray Train's restart of the worker group rather than the loss of the progress writer.
KILLED_RANK = 1


def _step(env: str) -> int | None:
    value = os.environ.get(env, "")
    return int(value) if value.isdigit() else None


def kill_driver_hook() -> tuple[int, int] | None:
    """(step, this process id) when the tests ask rank 0 to SIGKILL the driver after that step, else None."""
    step = _step(KILL_DRIVER_AT_STEP_ENV)
    return (step, os.getpid()) if step is not None else None


def oom_at_step() -> int | None:
    """The step at which the tests ask rank 0 to fail with out-of-memory, else None."""
    return _step(OOM_AT_STEP_ENV)


def kill_worker_hook() -> dict[str, Any] | None:
    """`{step, rank, marker}` when the tests ask rank 1 to SIGKILL itself mid-step, else None.

    The marker is a path that does not exist yet, unique to this driver: the first worker to create it kills
    itself, every later one (the restarted worker group) sees it and does not.
    """
    step = _step(KILL_WORKER_AT_STEP_ENV)
    if step is None:
        return None
    marker = os.path.join(tempfile.gettempdir(), f"sftjob-fault-kill-worker-{os.getpid()}-{uuid.uuid4().hex}")
    return {"step": step, "rank": KILLED_RANK, "marker": marker}


def claim_once(marker: str) -> bool:
    """Create `marker` atomically; True for the one caller that created it, False once it exists."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def fault_callbacks(kill_worker: dict[str, Any] | None, rank: int) -> list[Any]:
    """The Trainer callbacks of the worker-side hooks for this rank (empty unless a hook is set).

    Args:
        kill_worker: What `kill_worker_hook` returned on the driver.
        rank: This worker's world rank.

    Returns:
        `transformers.TrainerCallback` instances to add to the Trainer.
    """
    if kill_worker is None or rank != kill_worker["rank"]:
        return []
    from transformers import TrainerCallback

    step, marker = int(kill_worker["step"]), str(kill_worker["marker"])

    class KillWorkerMidStep(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # global_step counts finished steps: step N is running while it is N - 1.
            if state.global_step + 1 == step and claim_once(marker):
                os.kill(os.getpid(), signal.SIGKILL)

    return [KillWorkerMidStep()]
