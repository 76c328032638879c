"""The contract between the trainer and the operator: the output layout and `progress.json`.

The trainer (rank 0) atomically replaces `<job output>/progress.json` with a `ProgressFile`;
the operator reads it at a throttled interval and copies it into the SFTJob status. Both sides
import this module, so the file cannot drift from what the operator expects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sftjob_api.base import ApiModel, StorageUri, Text
from sftjob_api.types import CheckpointRef, DatasetStats, ErrorStatus, EvaluationStatus, Metrics, ResolvedSettings

PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.jsonl"
MANIFEST_FILE = "manifest.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
# The prepared dataset, cached by content hash, so a retry in a fresh pod skips tokenisation.
DATA_CACHE_DIR = "cache/data"

TrainerPhase = Literal["Initializing", "Preparing", "Running", "Exporting", "Succeeded", "Failed"]

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
    }
)
RETRYABLE_CODES = frozenset(
    {"NodeLost", "Preempted", "NcclTimeout", "StorageUnavailable", "WorkerCrashed", CANCELLED}
)
# Out of memory repeats with the same settings; retried only with runPolicy.retryOnOutOfMemory.
OUT_OF_MEMORY = "OutOfMemory"


class ProgressFile(ApiModel):
    """What the trainer's rank 0 writes to `progress.json` (atomically replaced)."""

    phase: TrainerPhase
    """Where the trainer is."""

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

    resolved: ResolvedSettings | None = None
    """Values chosen for `auto` and unset fields."""

    dataset: DatasetStats | None = None
    """Dataset statistics from preflight."""

    checkpoints: list[CheckpointRef] = Field(default_factory=list, max_length=100)
    """Saved checkpoints, oldest first."""

    resumed_from_step: int | None = Field(default=None, ge=0)
    """The checkpoint step this attempt resumed from."""

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
    "DATA_CACHE_DIR",
    "FORGETTING_EXCEEDED",
    "JUDGE_UNAVAILABLE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "MODEL_DIR",
    "NON_RETRYABLE_CODES",
    "OUT_OF_MEMORY",
    "PROGRESS_FILE",
    "RETRYABLE_CODES",
    "UNSCHEDULABLE",
    "ProgressFile",
    "format_duration",
    "job_output_uri",
]
