"""The steps of the SFTJob state machine: one per stage of the job and one per state of its attempt. Pure: no I/O.

As in KubeRay's controllers, each step decides the phase with its reason and message (an `Outcome`) and records
what it did on the status and the derivation (attempts, errors, actions, events); `status._close` then sets the
phase, the conditions and the events, once. The pieces the steps combine live beside them: `kuberay_state` (what
a RayJob's status means), `retry_policy` (why an attempt failed, whether to try again), `progress_status` (what
the trainer's files put in the status) and `conditions`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sftjob_api.codes import ErrorCode, Reason
from sftjob_api.layout import MANIFEST_FILE
from sftjob_api.progress import ProgressFile
from sftjob_api.timestamps import parse_rfc3339
from sftjob_api.types import MAX_HISTORY, AttemptRecord, ErrorStatus, Phase, RayJobStatus, SFTJob, SFTJobStatus
from sftjob_operator.conditions import ACTIVE_PHASES, Event, Wanted, condition, pod_observation, wanted
from sftjob_operator.k8s_text import camel_reason, clip
from sftjob_operator.kuberay_state import (
    RayState,
    classify_rayjob,
    deleted_while_active,
    ray_job_status,
    startup_overdue,
)
from sftjob_operator.pods import PodProblem
from sftjob_operator.progress_status import (
    ProgressSnapshot,
    fill_progress,
    output_incomplete,
    output_status,
    same_attempt,
    stall,
)
from sftjob_operator.rayjob import rayjob_name
from sftjob_operator.retry_policy import after_failure, classify_failure, deadline_exceeded, rayjob_deleted

Outcome = tuple[Phase, str, str]
"""What a step decided: the phase, its reason and its message (an empty message falls back to the reason)."""

# The state of an attempt whose RayJob was not read (yet): KubeRay's state before it first reconciles.
_UNOBSERVED = RayState("Pending", "New")


@dataclass
class Derivation:
    """The new status and what to do to get there."""

    status: SFTJobStatus
    events: list[Event] = field(default_factory=list)
    create_attempt: int | None = None
    """Create (or adopt) the RayJob of this attempt."""
    set_suspend: bool | None = None
    """Set the current RayJob's `spec.suspend` to this value."""
    delete_rayjob: str | None = None
    """Delete this RayJob (deadline exceeded, or the spec became invalid while it ran)."""
    delete_job: bool = False
    """Delete the SFTJob (its TTL after finishing has passed)."""


@dataclass
class Step:
    """One derivation in the making: what was observed, and what the steps found along the way."""

    job: SFTJob | None
    """The job; None when its spec is invalid."""
    previous: SFTJobStatus
    out: Derivation
    now: dt.datetime
    stamp: str
    snapshot: ProgressSnapshot | None = None
    pods: list[PodProblem] | None = None
    seen: list[Event] = field(default_factory=list)
    """Events of what was observed (validation, checkpoints): they come before those of the actions."""
    observed: list[Wanted] = field(default_factory=list)
    """`PodsHealthy` / `Stalled` as observed (see `conditions_for`)."""
    # The current attempt, filled by `active` before it dispatches on the attempt's state.
    attempt: int = 0
    name: str = ""
    record: AttemptRecord | None = None
    progress: ProgressFile | None = None
    ray: RayState = _UNOBSERVED
    ray_status: Mapping[str, Any] = field(default_factory=dict)
    pod_hint: tuple[str, str] | None = None
    """The reason and message of what the pods showed last, when it was a problem."""

    @property
    def status(self) -> SFTJobStatus:
        """The status being derived."""
        return self.out.status

    @property
    def valid_job(self) -> SFTJob:
        """The job, in a step that only a valid job reaches."""
        assert self.job is not None, "a step of a valid job"
        return self.job


# ------------------------------------------------------------------------------------------- stages of the job


def recovered(step: Step) -> Outcome:
    """The spec of a job that failed as InvalidSpec was fixed: start over with a new attempt.

    The trainer of the new attempt resumes from the checkpoints of the attempts before.
    """
    step.status.error = None
    step.status.completion_time = None
    step.seen.append(Event("Normal", Reason.VALIDATED, "the spec is valid"))
    return _start_attempt(step, (step.previous.attempt or 0) + 1)


def finished(step: Step) -> Derivation:
    """A job that ended keeps its status; it is deleted once `ttlSecondsAfterFinished` passed."""
    completed = parse_rfc3339(step.previous.completion_time)
    ttl = step.valid_job.spec.run_policy.ttl_seconds_after_finished
    if ttl is not None and completed is not None and (step.now - completed).total_seconds() >= ttl:
        step.out.delete_job = True
    return step.out


def first_attempt(step: Step) -> Outcome:
    """A new job: its spec is valid, its first attempt starts."""
    step.seen.append(Event("Normal", Reason.VALIDATED, "the spec is valid"))
    return _start_attempt(step, 1)


def _start_attempt(step: Step, attempt: int) -> Outcome:
    """Record attempt `attempt` as started and ask for its RayJob."""
    status, name = step.status, rayjob_name(step.valid_job.name, attempt)
    status.attempt = attempt
    status.attempts = [r for r in status.attempts if r.attempt != attempt] + [
        AttemptRecord(attempt=attempt, ray_job_name=name, start_time=step.stamp)
    ]
    status.attempts = status.attempts[-MAX_HISTORY:]
    status.ray_job = RayJobStatus(name=name)
    step.out.create_attempt = attempt
    return "Pending", "Pending", ""


def active(step: Step, rayjob: Mapping[str, Any] | None) -> Outcome:
    """A job with a current attempt: observe it, then dispatch on the attempt's state."""
    job, previous, status = step.valid_job, step.previous, step.status
    policy = job.spec.run_policy
    step.attempt = attempt = previous.attempt or 1
    step.name = rayjob_name(job.name, attempt)
    step.record = next((r for r in status.attempts if r.attempt == attempt), None)
    _observe_output(step)
    pod_seen = pod_observation(previous, step.pods)
    if pod_seen is not None:
        step.observed.append(pod_seen)

    # The job's deadline counts from the first start, across attempts and suspensions.
    error = deadline_exceeded(policy, parse_rfc3339(status.start_time), step.now)
    if error is not None:
        return _deadline_exceeded(step, error, rayjob is not None)
    if rayjob is None or deleted_while_active(rayjob):
        # The attempt's RayJob was deleted by someone else (the operator only deletes RayJobs of finished
        # jobs): a failed attempt, retried as a new attempt that resumes from the latest checkpoint.
        error = rayjob_deleted(step.name, attempt, previous.phase)
        return _fail_attempt(step, error, True, error.code, error.code)

    step.ray_status = rayjob.get("status") or {}
    step.ray = classify_rayjob(step.ray_status)
    status.ray_job = ray_job_status(step.name, step.ray_status)
    suspended = bool((rayjob.get("spec") or {}).get("suspend"))
    overdue = startup_overdue(policy, step.ray, step.ray_status, suspended or policy.suspend, step.now)
    if overdue is not None:
        step.ray = overdue
        step.out.delete_rayjob = step.name
    if step.ray.terminal and pod_seen is not None and pod_seen[1]:
        # The pods of a finished RayJob are on their way out: looking healthy now clears nothing.
        step.observed.remove(pod_seen)
        pod_seen = None
    # What the pods showed last, this time or before: it names the cause of a failure without a trainer report.
    pod_state = pod_seen or wanted(condition(previous, Reason.PODS_HEALTHY))
    step.pod_hint = (pod_state[2], pod_state[3]) if pod_state is not None and not pod_state[1] else None
    # Under Kueue, admission (unsuspending) is Kueue's: never unsuspend a queued RayJob ourselves.
    if not step.ray.terminal and suspended != policy.suspend and (policy.suspend or not policy.queue_name):
        step.out.set_suspend = policy.suspend
    return _ATTEMPT_STEPS[_attempt_state(step.ray, policy.suspend, policy.queue_name, suspended)](step)


def _observe_output(step: Step) -> None:
    """Copy what the trainer wrote (when it was read this time) into the status."""
    snapshot, status = step.snapshot, step.status
    if snapshot is None:
        return
    step.progress = progress = snapshot.progress
    if progress is not None:
        step.seen.extend(fill_progress(status, progress))
    if snapshot.output_complete:
        status.output = output_status(step.valid_job)
    if (
        step.record is not None
        and progress is not None
        and progress.attempt == step.attempt
        and progress.resumed_from_step is not None
    ):
        step.record.resumed_from_step = progress.resumed_from_step


def _deadline_exceeded(step: Step, error: ErrorStatus, rayjob_exists: bool) -> Outcome:
    step.status.error = error
    if step.record is not None:
        step.record.result, step.record.reason, step.record.completion_time = "Failed", error.code, step.stamp
    step.out.delete_rayjob = step.name if rayjob_exists else None
    return "Failed", error.code, ""


def _fail_attempt(step: Step, error: ErrorStatus, retryable: bool, reason: str, message: str) -> Outcome:
    """Record a failed attempt: start the next one while `backoffLimit` allows, else fail the job.

    Args:
        step: The derivation in the making.
        error: Why the attempt failed.
        retryable: Whether another attempt may succeed.
        reason: The reason of the phase.
        message: The message of the phase when the job fails.

    Returns:
        Pending with the next attempt started, or Failed.
    """
    status, attempt = step.status, step.status.attempt or 1
    if step.record is not None:
        step.record.result, step.record.reason = "Failed", camel_reason(error.code)
        step.record.completion_time = step.stamp
    decision = after_failure(step.valid_job.spec.run_policy, attempt, error, retryable)
    status.error = decision.error
    if decision.next_attempt is None:
        return "Failed", reason, message
    if decision.event is not None:
        step.out.events.append(decision.event)
    _start_attempt(step, decision.next_attempt)
    return "Pending", reason, f"retrying after {error.code}"


# ------------------------------------------------------------------------------------ states of the attempt


def _attempt_state(ray: RayState, suspend: bool, queue: str | None, rayjob_suspended: bool) -> str:
    """Which step handles the current attempt: its RayJob's end, the job's suspension, or its run."""
    if ray.terminal:
        return ray.phase
    held = rayjob_suspended or ray.phase == "Suspended"
    if suspend:
        return "Suspended"
    if queue and held:
        return "Queued"
    if held:
        return Reason.RESUMING
    return "Running"


def _attempt_succeeded(step: Step) -> Outcome:
    """The RayJob succeeded: the job succeeds once `manifest.json` exists, and fails if it never appears."""
    status, ray = step.status, step.ray
    if step.snapshot is not None and step.snapshot.output_complete:
        status.error = None
        if step.record is not None:
            step.record.result, step.record.completion_time = "Succeeded", step.stamp
        return "Succeeded", ray.reason, f"artifacts in {status.output.uri if status.output else ''}"
    error = output_incomplete(parse_rfc3339(step.ray_status.get("endTime")), step.now)
    if error is None:
        return "Exporting", ray.reason, f"waiting for {MANIFEST_FILE}"
    status.error = error
    if step.record is not None:
        step.record.result, step.record.reason, step.record.completion_time = "Failed", error.code, step.stamp
    return "Failed", ray.reason, ray.message


def _attempt_failed(step: Step) -> Outcome:
    error, retryable = classify_failure(step.valid_job, step.attempt, step.ray, step.progress, step.pod_hint)
    return _fail_attempt(step, error, retryable, step.ray.reason, step.ray.message)


def _suspended(step: Step) -> Outcome:
    if step.record is not None:
        step.record.result = "Suspended"
    reason = "Suspended" if step.ray.reason == "Suspended" else "Suspending"
    return "Suspended", reason, step.ray.message


def _queued(step: Step) -> Outcome:
    return "Queued", "Queued", f"waiting for admission by Kueue queue {step.valid_job.spec.run_policy.queue_name}"


def _resuming(step: Step) -> Outcome:
    # The RayJob's suspend is being cleared and KubeRay brings the cluster back.
    return "Pending", Reason.RESUMING, "resuming from the latest checkpoint"


def _running(step: Step) -> Outcome:
    """The attempt is starting or running: Pending, Initializing, Generating, Running or Exporting.

    A running trainer that stopped writing `progress.json` for `stallTimeoutSeconds` is stopped and retried.
    """
    status, previous, ray, progress = step.status, step.previous, step.ray, step.progress
    reason, message = ray.reason, ray.message
    if step.record is not None:
        step.record.result = "Running"
    phase: Phase = ray.phase
    if ray.phase == "Running":
        trainer = progress.phase if progress is not None and same_attempt(progress, step.attempt) else None
        if step.snapshot is None and previous.phase == "Generating":
            trainer = "Generating"  # progress.json was not read this time: still generating, as last seen
        exporting = trainer in ("Exporting", "Succeeded")
        phase = "Exporting" if exporting else "Generating" if trainer == "Generating" else "Running"
        if phase == "Generating":  # distillation: the teacher answers before training starts
            before = condition(previous, "Running")
            reason = "Generating"
            message = (progress.message if progress is not None else before.message if before else "") or message
        status.error = None
    if phase in ACTIVE_PHASES and status.start_time is None:
        status.start_time = step.stamp
    if phase not in ("Generating", "Running"):
        return phase, reason, message
    stalled, progressing = stall(previous, step.valid_job.spec.run_policy, step.attempt, step.snapshot, step.now)
    if stalled is not None:
        # A hung trainer: stop its RayJob and retry, as for any retryable failure.
        error = ErrorStatus(code=ErrorCode.STALLED, message=clip(stalled), retryable=True)
        step.observed.append((ErrorCode.STALLED, True, ErrorCode.STALLED, stalled))
        step.out.delete_rayjob = step.name
        return _fail_attempt(step, error, True, ErrorCode.STALLED, stalled)
    if progressing and wanted(condition(previous, ErrorCode.STALLED)) is not None:
        step.observed.append((ErrorCode.STALLED, False, Reason.PROGRESSING, ""))
    return phase, reason, message


_ATTEMPT_STEPS: dict[str, Callable[[Step], Outcome]] = {
    "Succeeded": _attempt_succeeded,
    "Failed": _attempt_failed,
    "Suspended": _suspended,
    "Queued": _queued,
    Reason.RESUMING: _resuming,
    "Running": _running,
}


__all__ = ["Derivation", "Outcome", "Step", "active", "finished", "first_attempt", "recovered"]
