"""The contract between the trainer and the operator: the output layout and `progress.json`.

The trainer (rank 0) atomically replaces `<job output>/progress.json` with a `ProgressFile`;
the operator reads it at a throttled interval and copies it into the SFTJob status. Both sides
import this module, so the file cannot drift from what the operator expects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sftjob_api.base import ApiModel, StorageUri, Text
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

PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.jsonl"
MANIFEST_FILE = "manifest.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
# The prepared dataset, cached by content hash, so a retry in a fresh pod skips tokenisation.
DATA_CACHE_DIR = "cache/data"

TrainerPhase = Literal["Initializing", "Generating", "Preparing", "Running", "Exporting", "Succeeded", "Failed"]

# The fine-tuned model lost more on the reference set than `evaluation.maxForgetting` allows: the error code
# with `onForgetting: fail`, the reason of the `Degraded` condition with `onForgetting: degrade`. Another
# attempt would train the same model again, so it is never retried.
FORGETTING_EXCEEDED = "ForgettingExceeded"
# The workers ask for more than the Ray cluster has (`sftjob run`: GPUs or CPUs this machine lacks; the operator:
# KubeRay's pre-running deadline passed). The same request cannot be placed again, so it is never retried.
UNSCHEDULABLE = "Unschedulable"
# SIGINT or SIGTERM stopped the trainer (Ctrl-C, `kill`, a deleted pod). Retried: in a cluster the pod's SIGTERM
# comes from a node drain or preemption as often as from a user, and a user stops a job by suspending or deleting
# the SFTJob, which the operator does not retry. `sftjob run` never retries; rerunning it resumes.
CANCELLED = "Cancelled"
# The judge (`evaluation.judge`) stayed unreachable after its retries: the reason of a condition on a job that
# still succeeds; the judgement is missing from the report, never the training.
JUDGE_UNAVAILABLE = "JudgeUnavailable"
# The distillation teacher (`distillation.teacher`) stayed unreachable (or kept failing) after its retries.
# Retried: what was generated is kept under the output, and the next attempt continues from it.
TEACHER_UNAVAILABLE = "TeacherUnavailable"

# What the operator finds on the pods of an attempt (it lists them while the attempt starts, and now and then
# while it runs): the reasons of the `PodsHealthy` condition and of its Warning events. The first three are also
# error codes: an attempt whose pods were stuck on them when `runPolicy.startupDeadlineSeconds` passed fails with
# that code (not retried: the same pods would get stuck again). An OOMKilled container makes a failure without a
# trainer report `OutOfMemory`.
IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
OOM_KILLED = "OOMKilled"
# The trainer's progress.json was not updated for `runPolicy.stallTimeoutSeconds` while the attempt ran: the
# operator stops the attempt and retries it (a hung collective or storage call rarely repeats).
STALLED = "Stalled"
# The training loss or gradient norm became NaN or infinite; the trainer stopped before the optimizer applied it,
# so every checkpoint holds finite weights. In neither set below: the trainer decides `retryable` itself, true the
# first time in a job (a retry resumes from the last checkpoint), false once `ProgressFile.nonFiniteSteps` already
# records an earlier occurrence (the same data and settings diverge again).
NON_FINITE_LOSS = "NonFiniteLoss"
# Skipped steps progress.json lists (`ProgressFile.skippedSteps`): the guard keeps the newest.
MAX_SKIPPED_STEPS = 10000

# Error codes the trainer reports; the operator retries only the retryable ones.
NON_RETRYABLE_CODES = frozenset(
    {
        "InvalidSpec",
        "InvalidDataset",
        "DatasetUnreadable",
        "ModelUnreadable",
        "AccessDenied",
        "MissingCredentials",
        "PreflightFailed",
        "UnsupportedDevice",
        FORGETTING_EXCEEDED,
        UNSCHEDULABLE,
        IMAGE_PULL_BACK_OFF,
        CRASH_LOOP_BACK_OFF,
        CREATE_CONTAINER_CONFIG_ERROR,
    }
)
RETRYABLE_CODES = frozenset(
    {"NodeLost", "Preempted", "NcclTimeout", "StorageUnavailable", "WorkerCrashed", CANCELLED, STALLED,
     TEACHER_UNAVAILABLE}
)
# Out of memory repeats with the same settings; retried only with runPolicy.retryOnOutOfMemory.
OUT_OF_MEMORY = "OutOfMemory"


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


def job_output_uri(output_uri: str, name: str, namespace: str | None) -> StorageUri:
    """The directory of one job's artifacts: `<output>/<namespace>/<name>` (local runs: `<output>/<name>`).

    Names are DNS-1123 labels (validated by the API types), so they cannot add path segments
    such as `..` or `/`.

    Args:
        output_uri: `spec.output.uri`.
        name: The SFTJob name.
        namespace: The SFTJob namespace; None for local runs.

    Returns:
        The job's output URI, without a trailing slash.
    """
    parts = [output_uri.rstrip("/")] + ([namespace] if namespace else []) + [name]
    return "/".join(parts)


__all__ = [
    "ADAPTER_DIR",
    "CANCELLED",
    "CHECKPOINTS_DIR",
    "CRASH_LOOP_BACK_OFF",
    "CREATE_CONTAINER_CONFIG_ERROR",
    "DATA_CACHE_DIR",
    "FORGETTING_EXCEEDED",
    "IMAGE_PULL_BACK_OFF",
    "JUDGE_UNAVAILABLE",
    "MANIFEST_FILE",
    "MAX_SKIPPED_STEPS",
    "METRICS_FILE",
    "MODEL_DIR",
    "NON_FINITE_LOSS",
    "NON_RETRYABLE_CODES",
    "OOM_KILLED",
    "OUT_OF_MEMORY",
    "PROGRESS_FILE",
    "RETRYABLE_CODES",
    "STALLED",
    "TEACHER_UNAVAILABLE",
    "UNSCHEDULABLE",
    "ProgressFile",
    "format_duration",
    "job_output_uri",
]
