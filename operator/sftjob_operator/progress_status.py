"""What the trainer wrote under the job's output, as the SFTJob's status shows it. Pure: no I/O, no clock.

The trainer reports through files: `progress.json` (phase, step, metrics, checkpoints, statistics of the stages),
rewritten as it goes, and `manifest.json`, written last, whose presence means the artifacts are complete. This
module copies the first into the status, names the artifacts once the second exists, and judges from the first's
timestamps whether a running trainer stalled.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sftjob_api.codes import ErrorCode, Reason
from sftjob_api.layout import ADAPTER_DIR, MANIFEST_FILE, MODEL_DIR, artifacts_for, job_output_uri
from sftjob_api.progress import ProgressFile, format_duration
from sftjob_api.timestamps import parse_rfc3339
from sftjob_api.types import MAX_HISTORY, ErrorStatus, OutputStatus, Progress, RunPolicySpec, SFTJob, SFTJobStatus
from sftjob_operator.conditions import Event, condition

# A RayJob that succeeded but whose output has no manifest.json after this long failed to export.
MANIFEST_GRACE_SECONDS = 300
# Trainer phases during which progress.json is expected to advance (not Exporting, Succeeded or Failed).
_TRAINING_PHASES = frozenset({"Initializing", "Generating", "Preparing", "Running"})


@dataclass(frozen=True)
class ProgressSnapshot:
    """What the operator read from the job's output location."""

    progress: ProgressFile | None = None
    """`progress.json`, when it exists and parses."""
    output_complete: bool = False
    """Whether `manifest.json` exists."""
    problem: str | None = None
    """Why `progress.json` could not be read (missing is not a problem)."""


def same_attempt(progress: ProgressFile, attempt: int) -> bool:
    """Whether `progress.json` was written by `attempt` (a file that names no attempt counts for any)."""
    return progress.attempt is None or progress.attempt == attempt


def fill_progress(status: SFTJobStatus, progress: ProgressFile) -> list[Event]:
    """Copy `progress.json` into the status.

    Args:
        status: The status to fill (its checkpoints those of the status as last written).
        progress: The trainer's latest `progress.json`.

    Returns:
        A `CheckpointSaved` event when the file names a checkpoint newer than the status knew.
    """
    events: list[Event] = []
    eta = None
    finish, updated = parse_rfc3339(progress.estimated_finish_time), parse_rfc3339(progress.updated_at)
    if finish and updated:
        eta = format_duration((finish - updated).total_seconds())
    status.progress = Progress(
        percentage=progress.percentage,
        step=progress.step,
        total_steps=progress.total_steps,
        epoch=progress.epoch,
        trained_tokens=progress.trained_tokens,
        tokens_per_second=progress.tokens_per_second,
        estimated_finish_time=progress.estimated_finish_time,
        eta=eta,
        last_update_time=progress.updated_at,
        skipped_batches=len(progress.skipped_steps) or None,
    )
    status.metrics = progress.metrics
    if progress.resolved is not None:
        status.resolved = progress.resolved
    if progress.dataset is not None:
        status.dataset = progress.dataset
    if progress.distillation is not None:
        status.distillation = progress.distillation
    if progress.evaluation is not None:
        status.evaluation = progress.evaluation
    if progress.tracking is not None:
        status.tracking = progress.tracking
    known = max((c.step for c in status.checkpoints), default=-1)
    if progress.checkpoints:
        newest = max(progress.checkpoints, key=lambda c: c.step)
        if newest.step > known:
            events.append(Event("Normal", Reason.CHECKPOINT_SAVED, f"checkpoint at step {newest.step}: {newest.uri}"))
        status.checkpoints = list(progress.checkpoints[-MAX_HISTORY:])
        evaluated = [c for c in progress.checkpoints if c.eval_loss is not None]
        status.best_checkpoint = min(evaluated, key=lambda c: (c.eval_loss, -c.step)) if evaluated else None
    return events


def output_status(job: SFTJob) -> OutputStatus:
    """The artifact URIs of a job whose `manifest.json` exists."""
    uri = job_output_uri(job.spec.output.uri, job.name, job.metadata.namespace)
    artifacts = artifacts_for(job.spec)
    return OutputStatus(
        uri=uri,
        adapter_uri=f"{uri}/{ADAPTER_DIR}" if artifacts.adapter else None,
        model_uri=f"{uri}/{MODEL_DIR}" if artifacts.model else None,
        manifest_uri=f"{uri}/{MANIFEST_FILE}",
    )


def output_incomplete(ended: dt.datetime | None, now: dt.datetime) -> ErrorStatus | None:
    """The error of a RayJob that succeeded (at `ended`) without `manifest.json` for `MANIFEST_GRACE_SECONDS`."""
    if ended is None or (now - ended).total_seconds() < MANIFEST_GRACE_SECONDS:
        return None
    return ErrorStatus(
        code=ErrorCode.OUTPUT_INCOMPLETE,
        message=f"the trainer finished but {MANIFEST_FILE} did not appear within {MANIFEST_GRACE_SECONDS}s",
    )


def stall(
    previous: SFTJobStatus,
    policy: RunPolicySpec,
    attempt: int,
    snapshot: ProgressSnapshot | None,
    now: dt.datetime,
) -> tuple[str | None, bool]:
    """Whether the running attempt's trainer stopped updating `progress.json` for `stallTimeoutSeconds`.

    The clock runs from the last write of the trainer now running: a write of this attempt made after the
    attempt last started running (the `Running` condition's last transition: a retry, or a resume after a
    suspension, starts it again). Before that first write nothing is judged, nor when `progress.json` was not
    read this time or could not be.

    Args:
        previous: The status as last written.
        policy: The job's run policy (`stallTimeoutSeconds`).
        attempt: The running attempt.
        snapshot: What was read from the output location this time, if anything.
        now: The current time.

    Returns:
        The stall's description (None when not stalled), and whether the trainer writes progress (to clear a
        `Stalled` condition left by the attempt before).
    """
    limit = policy.stall_timeout_seconds
    progress = snapshot.progress if snapshot is not None and snapshot.problem is None else None
    running = condition(previous, "Running")
    if progress is None or running is None or running.status != "True" or not same_attempt(progress, attempt):
        return None, False
    updated, since = parse_rfc3339(progress.updated_at), parse_rfc3339(running.last_transition_time)
    if updated is None or since is None or updated < since or progress.phase not in _TRAINING_PHASES:
        return None, False
    quiet = (now - updated).total_seconds()
    if limit is None or quiet < limit:
        return None, True
    description = (
        f"attempt {attempt}'s trainer has not updated progress.json for {format_duration(quiet)} "
        f"(stallTimeoutSeconds={limit}; last update {progress.updated_at}, phase {progress.phase}, "
        f"step {progress.step}); its RayJob was stopped"
    )
    return description, False


__all__ = [
    "MANIFEST_GRACE_SECONDS",
    "ProgressSnapshot",
    "fill_progress",
    "output_incomplete",
    "output_status",
    "same_attempt",
    "stall",
]
