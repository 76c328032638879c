"""The contract between the trainer and the operator: `progress.json` (the output layout is in layout.py).

The trainer (rank 0) atomically replaces `<job output>/progress.json` with a `ProgressFile`;
the operator reads it at a throttled interval and copies it into the SFTJob status. Both sides
import this module, so the file cannot drift from what the operator expects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sftjob_api.base import ApiModel, Text
from sftjob_api.types import (
    CheckpointRef,
    DatasetStats,
    DistillationStats,
    ErrorStatus,
    EvaluationStatus,
    Metrics,
    ResolvedSettings,
    TrackingStatus,
)

TrainerPhase = Literal["Initializing", "Generating", "Preparing", "Running", "Exporting", "Succeeded", "Failed"]

# Skipped steps progress.json lists (`ProgressFile.skippedSteps`): the guard keeps the newest.
MAX_SKIPPED_STEPS = 10000


class ProgressFile(ApiModel):
    """What the trainer's rank 0 writes to `progress.json` (atomically replaced)."""

    phase: TrainerPhase
    """Where the trainer is. While `Generating` (distillation), `percentage`, `tokensPerSecond` (the teacher's
    completion tokens) and `estimatedFinishTime` describe the generation stage, and `message` reads
    `<stage>: prompts <done>/<total>`."""

    attempt: int | None = Field(default=None, ge=1)
    """The attempt that wrote the file (from SFTJOB_ATTEMPT)."""

    step: int = Field(default=0, ge=0)
    """Optimizer steps done, counting steps of earlier attempts that this one resumed."""

    total_steps: int | None = Field(default=None, ge=0)
    """Optimizer steps planned."""

    epoch: float = Field(default=0.0, ge=0)
    """Fractional epoch."""

    percentage: float = Field(default=0.0, ge=0, le=100)
    """step / totalSteps in percent."""

    trained_tokens: int = Field(default=0, ge=0)
    """Loss-bearing tokens processed, all workers."""

    tokens_per_second: float | None = Field(default=None, ge=0)
    """Recent loss-bearing tokens per second, all workers."""

    estimated_finish_time: str | None = None
    """RFC 3339 time training is expected to end."""

    updated_at: str
    """RFC 3339 time of this write."""

    metrics: Metrics = Field(default_factory=Metrics)
    """Latest metrics."""

    evaluation: EvaluationStatus | None = None
    """Evaluation after training (forgetting on the reference set); the operator copies it to the status."""

    tracking: TrackingStatus | None = None
    """The job's tracking runs (`spec.tracking`), kept from attempt to attempt so that a resumed attempt continues
    the same runs; the operator copies it to the status."""

    resolved: ResolvedSettings | None = None
    """Values chosen for `auto` and unset fields."""

    dataset: DatasetStats | None = None
    """Dataset statistics from preflight."""

    distillation: DistillationStats | None = None
    """What the distillation step generated and kept (`spec.distillation`): set once generation ends (a failed
    run's stats have `complete: false`); the operator copies it to the status."""

    checkpoints: list[CheckpointRef] = Field(default_factory=list, max_length=100)
    """Saved checkpoints, oldest first."""

    resumed_from_step: int | None = Field(default=None, ge=0)
    """The checkpoint step this attempt resumed from."""

    skipped_steps: list[int] = Field(default_factory=list, max_length=MAX_SKIPPED_STEPS)
    """Optimizer steps whose batch the loss-spike guard skipped, ascending (the newest 10000). A list, not a
    count: a batch replayed after a resume is skipped again at the same step and must count once."""

    non_finite_steps: list[int] = Field(default_factory=list, max_length=100)
    """Steps at which a non-finite loss or gradient norm stopped training in this job, oldest first (carried
    across attempts): the second one makes `NonFiniteLoss` non-retryable."""

    error: ErrorStatus | None = None
    """Why the trainer failed (phase Failed)."""

    message: Text | None = None
    """A human-readable note on the current phase."""


def format_duration(seconds: float) -> str:
    """A short duration such as `12m30s`, `3h5m` or `2d4h`: the ETA column and the trainer's progress message."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


__all__ = [
    "MAX_SKIPPED_STEPS",
    "ProgressFile",
    "format_duration",
]
