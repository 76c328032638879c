"""Derive an SFTJob's status, and what to do next, from what the operator observes. Pure: no I/O, no clock.

`derive_status` is the whole state machine. It takes the job, the status as last written, the
current attempt's RayJob (as KubeRay reports it), the trainer's `progress.json` and the time,
and returns the new status, the Kubernetes events for the transitions it saw, and the actions
that bring the world in line (create an attempt's RayJob, flip its `suspend`, delete it at the
deadline, delete the SFTJob after its TTL). The service layer performs those actions; nothing
here remembers anything between calls, so an operator restart at any moment is harmless.

KubeRay's vocabulary: the CRD declares `jobDeploymentStatus`, `jobStatus` and `reason` as plain
strings; the values below are those of `ray-operator/apis/ray/v1/rayjob_types.go` (v1.7.0, plus
`ValidationFailed` of earlier releases and `Scheduling`/`Scheduled` of later ones, so that an
operator upgrade on either side never meets an unmapped state). Unknown values map to Pending.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sftjob_api.codes import NOT_RETRYABLE, RETRYABLE, ErrorCode, Reason
from sftjob_api.errors import FieldProblem
from sftjob_api.layout import ADAPTER_DIR, MANIFEST_FILE, MODEL_DIR, artifacts_for, job_output_uri
from sftjob_api.progress import ProgressFile, format_duration
from sftjob_api.types import (
    MAX_HISTORY,
    AttemptRecord,
    Condition,
    ErrorStatus,
    OutputStatus,
    Phase,
    Progress,
    RayJobStatus,
    RunPolicySpec,
    SFTJob,
    SFTJobStatus,
)
from sftjob_operator.pods import PodProblem, summarize
from sftjob_operator.rayjob import rayjob_name

JOB_DEPLOYMENT_STATUSES = (
    "",
    "Initializing",
    "Running",
    "Complete",
    "Failed",
    "ValidationFailed",
    "Suspending",
    "Suspended",
    "Retrying",
    "Waiting",
    "Scheduling",
    "Scheduled",
)
"""Every `status.jobDeploymentStatus` KubeRay sets ("" before KubeRay first reconciles)."""

JOB_STATUSES = ("", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")
"""Every `status.jobStatus` (the Ray job's own status; "" before submission)."""

# KubeRay's reason for a RayJob that did not reach Running within its preRunningDeadlineSeconds.
PRE_RUNNING_DEADLINE_EXCEEDED = "PreRunningDeadlineExceeded"
FAILURE_REASONS = (
    "SubmissionFailed",
    "DeadlineExceeded",
    "AppFailed",
    "JobDeploymentStatusTransitionGracePeriodExceeded",
    "ValidationFailed",
    PRE_RUNNING_DEADLINE_EXCEEDED,
)
"""Every `status.reason` KubeRay gives a Failed RayJob."""

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# The error code of an attempt whose RayJob was deleted by someone else while it was active (retryable).
RAYJOB_DELETED = "RayJobDeleted"
# A RayJob that succeeded but whose output has no manifest.json after this long failed to export.
MANIFEST_GRACE_SECONDS = 300
# Reasons of KubeRay failures that no retry can fix, and the error code each becomes.
_KUBERAY_PERMANENT: dict[str, ErrorCode] = {
    "DeadlineExceeded": ErrorCode.DEADLINE_EXCEEDED,
    "ValidationFailed": ErrorCode.RAY_JOB_INVALID,
    PRE_RUNNING_DEADLINE_EXCEEDED: ErrorCode.UNSCHEDULABLE,
}
# The condition the pod diagnosis sets (pods.py): False with the most urgent problem's reason while one shows,
# True with HEALTHY once it cleared; absent on a job whose pods never showed one.
PODS_HEALTHY = "PodsHealthy"
HEALTHY = "Healthy"
# The reason of `Stalled=False` once the attempt after a stall writes progress again.
PROGRESSING = "Progressing"
# The conditions a reconcile that does not look at pods or progress carries over unchanged.
_CARRIED_CONDITIONS = (PODS_HEALTHY, ErrorCode.STALLED)
# Pod problems that name the failure of an attempt whose startup deadline passed (else: Unschedulable).
_STARTUP_CODES: dict[str, ErrorCode] = {
    ErrorCode.IMAGE_PULL_BACK_OFF: ErrorCode.IMAGE_PULL_BACK_OFF,
    ErrorCode.CREATE_CONTAINER_CONFIG_ERROR: ErrorCode.CREATE_CONTAINER_CONFIG_ERROR,
    ErrorCode.CRASH_LOOP_BACK_OFF: ErrorCode.CRASH_LOOP_BACK_OFF,
    Reason.OOM_KILLED: ErrorCode.OUT_OF_MEMORY,
}
# KubeRay before 1.6 drops preRunningDeadlineSeconds without a word: the operator fails an attempt whose RayJob is
# still not Running this long after startupDeadlineSeconds (KubeRay, when it has the field, acts within seconds).
STARTUP_DEADLINE_GRACE_SECONDS = 60
# Trainer phases during which progress.json is expected to advance (not Exporting, Succeeded or Failed).
_TRAINING_PHASES = frozenset({"Initializing", "Generating", "Preparing", "Running"})
# Status phases of a running attempt: the `Running` condition is True with the phase as its reason.
_ACTIVE_PHASES = ("Initializing", "Generating", "Running", "Exporting")
_OOM_HINTS = re.compile(r"\bOOM(Killed)?\b|out of memory|OutOfMemory", re.IGNORECASE)
_REASON_CHARS = re.compile(r"[^A-Za-z0-9_]")
_MAX_MESSAGE = 1024

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on the SFTJob."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class RayState:
    """What one RayJob status means for its attempt."""

    phase: Phase
    """Pending, Initializing, Running, Suspended, Succeeded or Failed."""
    reason: str
    """CamelCase reason, e.g. `Initializing`, `AppFailed`."""
    message: str = ""
    """KubeRay's message, if any."""

    @property
    def terminal(self) -> bool:
        """Whether the attempt has ended."""
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True)
class ProgressSnapshot:
    """What the operator read from the job's output location."""

    progress: ProgressFile | None = None
    """`progress.json`, when it exists and parses."""
    output_complete: bool = False
    """Whether `manifest.json` exists."""
    problem: str | None = None
    """Why `progress.json` could not be read (missing is not a problem)."""


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


# ------------------------------------------------------------------------------------------- helpers


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    """Parse an RFC 3339 time; None when absent or malformed."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _reason(text: str, fallback: str = "Unknown") -> str:
    cleaned = _REASON_CHARS.sub("", text)
    return cleaned if cleaned and cleaned[0].isalpha() else fallback


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


# ------------------------------------------------------------------------------------------- KubeRay


def classify_rayjob(status: Mapping[str, Any] | None) -> RayState:
    """Map a RayJob's `status` (jobDeploymentStatus x jobStatus x reason) to the attempt's state.

    Args:
        status: The RayJob's `.status` (None or empty before KubeRay reconciles it).

    Returns:
        The attempt's phase, reason and message.
    """
    status = status or {}
    deployment = str(status.get("jobDeploymentStatus") or "")
    job_status = str(status.get("jobStatus") or "")
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    if deployment == "Complete":
        if job_status == "SUCCEEDED":
            return RayState("Succeeded", "Complete", message)
        if job_status == "FAILED":
            return RayState("Failed", _reason(reason, "AppFailed"), message)
        if job_status == "STOPPED":
            return RayState("Failed", "Stopped", message or "the Ray job was stopped")
        # Complete without a terminal Ray job status: the submitter Job failed.
        return RayState("Failed", _reason(reason, "SubmissionFailed"), message)
    if deployment == "Failed":
        return RayState("Failed", _reason(reason, "Failed"), message)
    if deployment == "ValidationFailed":
        return RayState("Failed", "ValidationFailed", message)
    if deployment in ("Suspending", "Suspended"):
        return RayState("Suspended", deployment, message)
    if deployment == "Running":
        if job_status == "RUNNING" or job_status in ("SUCCEEDED", "FAILED", "STOPPED"):
            # A terminal Ray job under a Running deployment: KubeRay moves it to Complete next.
            return RayState("Running", "Running", message)
        return RayState("Initializing", "JobPending", message)
    if deployment in ("Initializing", "Waiting", "Retrying"):
        return RayState("Initializing", deployment, message)
    if deployment in ("", "Scheduling", "Scheduled"):
        return RayState("Pending", deployment or "New", message)
    return RayState("Pending", "UnknownRayJobState", f"KubeRay reports jobDeploymentStatus {deployment!r}")


def classify_failure(
    job: SFTJob,
    attempt: int,
    ray: RayState,
    progress: ProgressFile | None,
    pods: tuple[str, str] | None = None,
) -> tuple[ErrorStatus, bool]:
    """Why an attempt failed and whether another attempt may succeed.

    The trainer's own report (`progress.json` of this attempt, phase Failed) wins; without one
    the process died without reporting (node lost, eviction, preemption, OOM kill), which is
    retryable, unless KubeRay names a cause no retry can fix. What the pods showed refines it: a
    startup deadline fails with the pods' problem as its code (ImagePullBackOff, CrashLoopBackOff,
    CreateContainerConfigError, OutOfMemory; Unschedulable otherwise), an OOMKilled container makes
    an unreported death OutOfMemory, and the pods' message is appended to KubeRay's.

    Args:
        job: The job.
        attempt: The attempt that failed.
        ray: The attempt's RayJob state (phase Failed).
        progress: The latest `progress.json`, if any.
        pods: The reason and message of `PodsHealthy=False`, when the pods showed a problem.

    Returns:
        The error and whether to retry.
    """
    retry_oom = job.spec.run_policy.retry_on_out_of_memory
    if progress is not None and progress.phase == "Failed" and progress.error and _same_attempt(progress, attempt):
        error = progress.error
        if error.code == ErrorCode.OUT_OF_MEMORY:
            retryable = retry_oom
        elif error.code in NOT_RETRYABLE:
            retryable = False
        elif error.code in RETRYABLE:
            retryable = True
        else:
            retryable = error.retryable
        return error.model_copy(update={"retryable": retryable, "message": _clip(error.message)}), retryable
    seen = f"; {pods[1]}" if pods else ""
    if ray.reason == PRE_RUNNING_DEADLINE_EXCEEDED:
        code = _STARTUP_CODES.get(pods[0], ErrorCode.UNSCHEDULABLE) if pods else ErrorCode.UNSCHEDULABLE
        message = ray.message or f"KubeRay: {ray.reason}"
        return ErrorStatus(code=code, message=_clip(message + seen), retryable=False), False
    if ray.reason in _KUBERAY_PERMANENT:
        code = _KUBERAY_PERMANENT[ray.reason]
        return ErrorStatus(code=code, message=_clip(ray.message or f"KubeRay: {ray.reason}"), retryable=False), False
    if ray.reason == "Stopped":
        return ErrorStatus(code=ErrorCode.STOPPED, message=_clip(ray.message), retryable=False), False
    if _OOM_HINTS.search(ray.message) or (pods is not None and pods[0] == Reason.OOM_KILLED):
        message = _clip((ray.message or f"KubeRay: {ray.reason}") + seen)
        return ErrorStatus(code=ErrorCode.OUT_OF_MEMORY, message=message, retryable=retry_oom), retry_oom
    code = ErrorCode.SUBMISSION_FAILED if ray.reason == "SubmissionFailed" else ErrorCode.WORKER_CRASHED
    message = ray.message or "the trainer exited without reporting an error (node lost, eviction or preemption)"
    return ErrorStatus(code=code, message=_clip(f"{ray.reason}: {message}{seen}"), retryable=True), True


def _same_attempt(progress: ProgressFile, attempt: int) -> bool:
    return progress.attempt is None or progress.attempt == attempt


# -------------------------------------------------------------------------------------------- status


def _fill_progress(status: SFTJobStatus, progress: ProgressFile) -> list[Event]:
    events: list[Event] = []
    eta = None
    finish, updated = parse_time(progress.estimated_finish_time), parse_time(progress.updated_at)
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
            events.append(Event("Normal", "CheckpointSaved", f"checkpoint at step {newest.step}: {newest.uri}"))
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


def _set_conditions(
    status: SFTJobStatus,
    previous: SFTJobStatus,
    wanted: list[tuple[str, bool, str, str]],
    generation: int | None,
    now: str,
) -> None:
    before = {c.type: c for c in previous.conditions}
    conditions = []
    for ctype, truth, reason, message in wanted:
        value: Literal["True", "False"] = "True" if truth else "False"
        old = before.get(ctype)
        since = old.last_transition_time if old is not None and old.status == value else now
        conditions.append(
            Condition(
                type=ctype,
                status=value,
                reason=_reason(reason),
                message=_clip(message),
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    status.conditions = conditions


Wanted = tuple[str, bool, str, str]
"""A condition to set: type, truth, reason, message."""


def _condition(status: SFTJobStatus, ctype: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == ctype), None)


def _wanted(condition: Condition | None) -> Wanted | None:
    if condition is None:
        return None
    return (condition.type, condition.status == "True", condition.reason, condition.message)


def _conditions_for(
    status: SFTJobStatus,
    previous: SFTJobStatus,
    job: SFTJob | None,
    reason: str,
    message: str,
    observed: tuple[Wanted, ...] = (),
) -> list[Wanted]:
    """The conditions of a status: those its phase and error imply, then `PodsHealthy` and `Stalled`.

    Args:
        status: The new status (phase and error set).
        previous: The status as last written.
        job: The job (None when its spec is invalid).
        reason: The reason of the phase.
        message: The message of the phase.
        observed: `PodsHealthy` / `Stalled` as this reconcile observed them; a type not given keeps its
            previous value (the reconcile did not look), and one never set stays absent.

    Returns:
        The conditions to set.
    """
    phase = status.phase
    invalid = status.error is not None and status.error.code == "InvalidSpec"
    wanted = [
        (
            "Validated",
            not invalid,
            "InvalidSpec" if invalid else "Valid",
            status.error.message if invalid and status.error else "",
        )
    ]
    running = phase in _ACTIVE_PHASES
    wanted.append(("Running", running, phase, message if running else ""))
    suspended_before = any(c.type == "Suspended" for c in previous.conditions)
    if phase == "Suspended" or suspended_before or (job is not None and job.spec.run_policy.suspend):
        wanted.append(("Suspended", phase == "Suspended", reason if phase == "Suspended" else "Resumed", ""))
    if phase == "Succeeded":
        wanted.append(("Succeeded", True, "Succeeded", message))
        degraded = _degraded(status)
        if degraded is not None:
            wanted.append(("Degraded", True, ErrorCode.FORGETTING_EXCEEDED, degraded))
        unavailable = _judge_unavailable(status)
        if unavailable is not None:
            wanted.append((Reason.JUDGE_UNAVAILABLE, True, Reason.JUDGE_UNAVAILABLE, unavailable))
    if phase == "Failed" and status.error is not None:
        wanted.append(("Failed", True, status.error.code, status.error.message))
    given = {w[0]: w for w in observed}
    for ctype in _CARRIED_CONDITIONS:
        if ctype == PODS_HEALTHY and status.attempt != previous.attempt:
            continue  # it described the pods of the attempt before (its failure message keeps what they showed)
        kept = given.get(ctype) or _wanted(_condition(previous, ctype))
        if kept is not None:
            wanted.append(kept)
    return wanted


def _condition_events(previous: SFTJobStatus, status: SFTJobStatus) -> list[Event]:
    """Warning events for `PodsHealthy` turning False (or to another reason) and `Stalled` turning True."""
    events = []
    old, new = _condition(previous, PODS_HEALTHY), _condition(status, PODS_HEALTHY)
    if new is not None and new.status == "False" and (old is None or old.status == "True" or old.reason != new.reason):
        events.append(Event("Warning", new.reason, new.message))
    old, new = _condition(previous, ErrorCode.STALLED), _condition(status, ErrorCode.STALLED)
    if new is not None and new.status == "True" and (old is None or old.status == "False"):
        events.append(Event("Warning", ErrorCode.STALLED, new.message))
    return events


def _close(
    out: Derivation,
    previous: SFTJobStatus,
    job: SFTJob,
    reason: str,
    message: str,
    generation: int | None,
    stamp: str,
    events: list[Event],
    observed: tuple[Wanted, ...] = (),
) -> Derivation:
    """The closing step of every valid derivation: set the conditions, then the events of their transitions.

    Args:
        out: The derivation (its status final but for the conditions; its events those of its actions).
        previous: The status as last written.
        job: The job.
        reason: The reason of the phase (the `Running` condition's).
        message: The message of the phase.
        generation: `metadata.generation` of the spec.
        stamp: The current time, formatted.
        events: Events seen before the actions (checkpoints, validation).
        observed: `PodsHealthy` / `Stalled` as observed (see `_conditions_for`).

    Returns:
        `out`, completed.
    """
    status = out.status
    wanted = _conditions_for(status, previous, job, reason, message, observed)
    _set_conditions(status, previous, wanted, generation, stamp)
    out.events = events + out.events + _condition_events(previous, status) + _transition_events(previous, status)
    return out


def _degraded(status: SFTJobStatus) -> str | None:
    """Why a job's outputs are kept but marked degraded (`evaluation.onForgetting: degrade`), or None."""
    forgetting = status.evaluation.forgetting if status.evaluation else None
    if forgetting is None or not forgetting.exceeded:
        return None
    return f"{forgetting.summary()}; the outputs are kept and marked degraded (onForgetting: degrade)"


def _judge_unavailable(status: SFTJobStatus) -> str | None:
    """Why the evaluation has no judgement (`evaluation.judge` stayed unreachable), or None."""
    judge = status.evaluation.judge if status.evaluation else None
    if judge is None or not judge.error:
        return None
    return (f"the judge {judge.model} stayed unreachable, so eval_report.md has no judgement: {judge.error}; "
            "the training succeeded (`sftjob eval OUTPUT` asks again)")


def _transition_events(previous: SFTJobStatus, status: SFTJobStatus) -> list[Event]:
    if previous.phase == status.phase:
        return []
    phase = status.phase
    name = status.ray_job.name if status.ray_job else ""
    if phase == "Running":
        return [Event("Normal", "Running", f"training on RayJob {name}")]
    if phase == "Generating":
        return [Event("Normal", "Generating", f"generating the training data with the teacher on RayJob {name}")]
    if phase == "Suspended":
        return [Event("Normal", "Suspended", "no Ray pods run while suspended")]
    if previous.phase == "Suspended":
        return [Event("Normal", "Resumed", "resumed; the trainer continues from the latest checkpoint")]
    if phase == "Succeeded":
        where = status.output.uri if status.output else ""
        degraded, unavailable = _degraded(status), _judge_unavailable(status)
        return ([Event("Normal", "Succeeded", f"artifacts in {where}")]
                + ([Event("Warning", ErrorCode.FORGETTING_EXCEEDED, _clip(degraded))] if degraded is not None else [])
                + ([Event("Warning", Reason.JUDGE_UNAVAILABLE, _clip(unavailable))] if unavailable is not None else []))
    if phase == "Failed" and status.error is not None:
        return [Event("Warning", "Failed", _clip(f"{status.error.code}: {status.error.message}"))]
    return []


def _record(status: SFTJobStatus, attempt: int) -> AttemptRecord | None:
    return next((r for r in status.attempts if r.attempt == attempt), None)


def _start_attempt(status: SFTJobStatus, job: SFTJob, attempt: int, now: str) -> None:
    status.attempt = attempt
    status.attempts = [r for r in status.attempts if r.attempt != attempt] + [
        AttemptRecord(attempt=attempt, ray_job_name=rayjob_name(job.name, attempt), start_time=now)
    ]
    status.attempts = status.attempts[-MAX_HISTORY:]
    status.ray_job = RayJobStatus(name=rayjob_name(job.name, attempt))


def _finish(status: SFTJobStatus, phase: Phase, now: str) -> None:
    status.phase = phase
    status.completion_time = status.completion_time or now
    if status.progress is not None:
        status.progress = status.progress.model_copy(update={"eta": None})


def _deleted_while_active(rayjob: Mapping[str, Any]) -> bool:
    """Whether a RayJob is being deleted (KubeRay's finalizer holds it) before its job ended."""
    deleting = bool((rayjob.get("metadata") or {}).get("deletionTimestamp"))
    return deleting and not classify_rayjob(rayjob.get("status")).terminal


def _fail_attempt(
    out: Derivation, job: SFTJob, record: AttemptRecord | None, error: ErrorStatus, retryable: bool, stamp: str
) -> str | None:
    """Record a failed attempt: start the next one while `backoffLimit` allows, else fail the job.

    Returns:
        The Running condition's message when a retry starts, else None.
    """
    status, policy = out.status, job.spec.run_policy
    attempt = status.attempt or 1
    if record is not None:
        record.result, record.reason, record.completion_time = "Failed", _reason(error.code), stamp
    if retryable and attempt - 1 < policy.backoff_limit:
        nxt = attempt + 1
        out.events.append(
            Event(
                "Warning",
                "Retrying",
                _clip(
                    f"attempt {attempt} failed ({error.code}: {error.message}); starting attempt {nxt} of "
                    f"{policy.backoff_limit + 1}, resuming from the latest checkpoint"
                ),
            )
        )
        status.error = error
        status.phase = "Pending"
        _start_attempt(status, job, nxt, stamp)
        out.create_attempt = nxt
        return f"retrying after {error.code}"
    if retryable:
        error = error.model_copy(
            update={"message": _clip(f"{error.message} (backoffLimit {policy.backoff_limit} reached)")}
        )
    status.error = error
    _finish(status, "Failed", stamp)
    return None


def derive_invalid(
    previous: SFTJobStatus, problems: list[FieldProblem], *, generation: int | None, now: dt.datetime
) -> Derivation:
    """The status of a job whose spec does not validate: Failed with InvalidSpec, no retries.

    Args:
        previous: The status as last written.
        problems: What is wrong, as `check_document` reports it.
        generation: `metadata.generation` of the spec checked.
        now: The current time.

    Returns:
        The derivation; it deletes the current attempt's RayJob if one was running.
    """
    stamp = format_time(now)
    status = previous.model_copy(deep=True)
    if previous.phase in TERMINAL_PHASES and not (previous.error is not None and previous.error.code == "InvalidSpec"):
        # A finished job is not judged again: an edit of its (mutable) fields changes nothing.
        status.observed_generation = generation
        return Derivation(status=status)
    message = "; ".join(f"{p.field}: {p.message}" for p in problems)
    status.error = ErrorStatus(code=ErrorCode.INVALID_SPEC, message=_clip(message), field=problems[0].field,
                               retryable=False)
    status.observed_generation = generation
    delete = None
    if previous.attempt and previous.phase not in TERMINAL_PHASES and previous.ray_job is not None:
        delete = previous.ray_job.name
    _finish(status, "Failed", stamp)
    if previous.phase == "Failed" and previous.completion_time:
        status.completion_time = previous.completion_time
    _set_conditions(
        status, previous, _conditions_for(status, previous, None, "InvalidSpec", message), generation, stamp
    )
    events = _transition_events(previous, status)
    if not events and (previous.error is None or previous.error.message != status.error.message):
        events = [Event("Warning", "Failed", _clip(f"InvalidSpec: {message}"))]
    return Derivation(status=status, events=events, delete_rayjob=delete)


def _pod_observation(previous: SFTJobStatus, pods: list[PodProblem] | None) -> Wanted | None:
    """`PodsHealthy` as this reconcile saw the pods; None when it did not look or nothing ever showed."""
    if pods is None:
        return None
    if pods:
        reason, message = summarize(pods)
        return (PODS_HEALTHY, False, reason, message)
    if _condition(previous, PODS_HEALTHY) is None:
        return None
    return (PODS_HEALTHY, True, HEALTHY, "")


def _startup_overdue(
    policy: RunPolicySpec, ray: RayState, ray_status: Mapping[str, Any], suspended: bool, now: dt.datetime
) -> RayState | None:
    """KubeRay's pre-running deadline, enforced by the operator when KubeRay did not (a release before 1.6).

    Returns:
        A failed state as KubeRay reports it, when the RayJob is still not Running
        `startupDeadlineSeconds` + `STARTUP_DEADLINE_GRACE_SECONDS` after its `status.startTime`; else None.
    """
    limit = policy.startup_deadline_seconds
    if limit is None or suspended or ray.phase not in ("Pending", "Initializing"):
        return None
    if ray_status.get("jobDeploymentStatus") == "Running":
        return None  # KubeRay counts the deadline until the deployment runs (the driver may still be pending)
    started = parse_time(ray_status.get("startTime"))
    if started is None or (now - started).total_seconds() < limit + STARTUP_DEADLINE_GRACE_SECONDS:
        return None
    message = (
        f"the Ray cluster did not start within startupDeadlineSeconds={limit} (the operator stopped it: "
        "KubeRay did not apply preRunningDeadlineSeconds, which it supports from 1.6)"
    )
    return RayState("Failed", PRE_RUNNING_DEADLINE_EXCEEDED, message)


def _stall(
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

    Returns:
        The stall's description (None when not stalled), and whether the trainer writes progress (to clear a
        `Stalled` condition left by the attempt before).
    """
    limit = policy.stall_timeout_seconds
    progress = snapshot.progress if snapshot is not None and snapshot.problem is None else None
    running = _condition(previous, "Running")
    if progress is None or running is None or running.status != "True" or not _same_attempt(progress, attempt):
        return None, False
    updated, since = parse_time(progress.updated_at), parse_time(running.last_transition_time)
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


def derive_status(
    job: SFTJob,
    previous: SFTJobStatus,
    *,
    generation: int | None,
    now: dt.datetime,
    rayjob: Mapping[str, Any] | None,
    snapshot: ProgressSnapshot | None = None,
    pods: list[PodProblem] | None = None,
) -> Derivation:
    """The new status of a valid job and the actions that lead there.

    Args:
        job: The validated job.
        previous: The status as last written (an empty `SFTJobStatus()` for a new job).
        generation: `metadata.generation` of the spec.
        now: The current time.
        rayjob: The RayJob of the current attempt (`previous.attempt`), None when it does not exist.
        snapshot: What was read from the output location; None when it was not read this time
            (the status then keeps what it had).
        pods: What `diagnose_pods` found on the current attempt's pods (empty: nothing wrong); None when
            they were not listed this time (the `PodsHealthy` condition then keeps what it had).

    Returns:
        The derivation.
    """
    stamp = format_time(now)
    policy = job.spec.run_policy
    recovering = previous.error is not None and previous.error.code == "InvalidSpec"
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    events: list[Event] = []
    out = Derivation(status=status)

    if recovering:
        # The spec was fixed: start over with a new attempt (the trainer resumes from checkpoints).
        status.error = None
        status.phase = "Pending"
        status.completion_time = None
        status.conditions = [c for c in status.conditions if c.type not in ("Failed",)]
        events.append(Event("Normal", "Validated", "the spec is valid"))
        next_attempt = (previous.attempt or 0) + 1
        _start_attempt(status, job, next_attempt, stamp)
        out.create_attempt = next_attempt
        return _close(out, previous, job, "Pending", "", generation, stamp, events)

    if previous.phase in TERMINAL_PHASES:
        completed = parse_time(previous.completion_time)
        ttl = policy.ttl_seconds_after_finished
        if ttl is not None and completed is not None and (now - completed).total_seconds() >= ttl:
            out.delete_job = True
        return out

    if not previous.attempt:
        events.append(Event("Normal", "Validated", "the spec is valid"))
        status.phase = "Pending"
        _start_attempt(status, job, 1, stamp)
        out.create_attempt = 1
        return _close(out, previous, job, "Pending", "", generation, stamp, events)

    attempt = previous.attempt
    name = rayjob_name(job.name, attempt)
    progress = snapshot.progress if snapshot else None
    if snapshot is not None and progress is not None:
        events.extend(_fill_progress(status, progress))
    if snapshot is not None and snapshot.output_complete:
        status.output = output_status(job)
    record = _record(status, attempt)
    if (
        record is not None
        and progress is not None
        and progress.attempt == attempt
        and progress.resumed_from_step is not None
    ):
        record.resumed_from_step = progress.resumed_from_step
    pod_seen = _pod_observation(previous, pods)
    observed: tuple[Wanted, ...] = (pod_seen,) if pod_seen is not None else ()

    # The job's deadline counts from the first start, across attempts and suspensions.
    started = parse_time(status.start_time)
    deadline = policy.active_deadline_seconds
    if deadline is not None and started is not None and (now - started).total_seconds() >= deadline:
        status.error = ErrorStatus(
            code=ErrorCode.DEADLINE_EXCEEDED,
            message=f"the job ran longer than activeDeadlineSeconds={deadline}",
            retryable=False,
        )
        if record is not None:
            record.result, record.reason, record.completion_time = "Failed", "DeadlineExceeded", stamp
        _finish(status, "Failed", stamp)
        out.delete_rayjob = name if rayjob is not None else None
        return _close(out, previous, job, "DeadlineExceeded", "", generation, stamp, events, observed)

    if rayjob is None or _deleted_while_active(rayjob):
        # The attempt's RayJob was deleted by someone else (the operator only deletes RayJobs of finished
        # jobs): a failed attempt, retried as a new attempt that resumes from the latest checkpoint.
        error = ErrorStatus(
            code=RAYJOB_DELETED,
            message=_clip(
                f"RayJob {name} of attempt {attempt} was deleted while the job was {previous.phase or 'Pending'}; "
                "the operator did not delete it: check who did (kubectl get events, the API server's audit log)"
            ),
            retryable=True,
        )
        message = _fail_attempt(out, job, record, error, True, stamp)
        reason = error.code
        return _close(out, previous, job, reason, message or reason, generation, stamp, events, observed)

    ray_status = rayjob.get("status") or {}
    ray = classify_rayjob(ray_status)
    status.ray_job = RayJobStatus(
        name=name,
        job_status=ray_status.get("jobStatus") or None,
        job_deployment_status=ray_status.get("jobDeploymentStatus") or None,
        dashboard_url=ray_status.get("dashboardURL") or None,
    )
    rayjob_suspended = bool((rayjob.get("spec") or {}).get("suspend"))
    overdue = _startup_overdue(policy, ray, ray_status, rayjob_suspended or policy.suspend, now)
    if overdue is not None:
        ray = overdue
        out.delete_rayjob = name
    if ray.terminal and pod_seen is not None and pod_seen[1]:
        # The pods of a finished RayJob are on their way out: looking healthy now clears nothing.
        pod_seen, observed = None, ()
    # What the pods showed last, this time or before: it names the cause of a failure without a trainer report.
    pod_state = pod_seen or _wanted(_condition(previous, PODS_HEALTHY))
    pod_hint = (pod_state[2], pod_state[3]) if pod_state is not None and not pod_state[1] else None
    # Under Kueue, admission (unsuspending) is Kueue's: never unsuspend a queued RayJob ourselves.
    if not ray.terminal and rayjob_suspended != policy.suspend and (policy.suspend or not policy.queue_name):
        out.set_suspend = policy.suspend

    message = ray.message
    reason = ray.reason
    if ray.phase == "Succeeded":
        if snapshot is not None and snapshot.output_complete:
            status.error = None
            if record is not None:
                record.result, record.completion_time = "Succeeded", stamp
            _finish(status, "Succeeded", stamp)
            message = f"artifacts in {status.output.uri if status.output else ''}"
        else:
            ended = parse_time(ray_status.get("endTime"))
            if ended is not None and (now - ended).total_seconds() >= MANIFEST_GRACE_SECONDS:
                status.error = ErrorStatus(
                    code=ErrorCode.OUTPUT_INCOMPLETE,
                    message=f"the trainer finished but {MANIFEST_FILE} did not appear within {MANIFEST_GRACE_SECONDS}s",
                )
                if record is not None:
                    record.result, record.reason, record.completion_time = "Failed", "OutputIncomplete", stamp
                _finish(status, "Failed", stamp)
            else:
                status.phase = "Exporting"
                message = f"waiting for {MANIFEST_FILE}"
    elif ray.phase == "Failed":
        error, retryable = classify_failure(job, attempt, ray, progress, pod_hint)
        message = _fail_attempt(out, job, record, error, retryable, stamp) or message
    elif policy.suspend:
        status.phase = "Suspended"
        reason = "Suspended" if ray.reason == "Suspended" else "Suspending"
        if record is not None:
            record.result = "Suspended"
    elif policy.queue_name and (rayjob_suspended or ray.phase == "Suspended"):
        status.phase = "Queued"
        reason, message = "Queued", f"waiting for admission by Kueue queue {policy.queue_name}"
    elif rayjob_suspended or ray.phase == "Suspended":
        # Resuming: the RayJob's suspend is being cleared and KubeRay brings the cluster back.
        status.phase = "Pending"
        reason, message = "Resuming", "resuming from the latest checkpoint"
    else:
        if record is not None:
            record.result = "Running"
        if ray.phase == "Running":
            trainer = progress.phase if progress is not None and _same_attempt(progress, attempt) else None
            if snapshot is None and previous.phase == "Generating":
                trainer = "Generating"  # progress.json was not read this time: still generating, as last seen
            exporting = trainer in ("Exporting", "Succeeded")
            status.phase = "Exporting" if exporting else "Generating" if trainer == "Generating" else "Running"
            if status.phase == "Generating":  # distillation: the teacher answers before training starts
                before = _condition(previous, "Running")
                reason = "Generating"
                message = (progress.message if progress is not None else before.message if before else "") or message
            status.error = None
        else:
            status.phase = ray.phase
        if status.phase in _ACTIVE_PHASES and status.start_time is None:
            status.start_time = stamp
        if status.phase in ("Generating", "Running"):
            stalled, progressing = _stall(previous, policy, attempt, snapshot, now)
            if stalled is not None:
                # A hung trainer: stop its RayJob and retry, as for any retryable failure.
                error = ErrorStatus(code=ErrorCode.STALLED, message=_clip(stalled), retryable=True)
                observed += ((ErrorCode.STALLED, True, ErrorCode.STALLED, stalled),)
                out.delete_rayjob = name
                reason = ErrorCode.STALLED
                message = _fail_attempt(out, job, record, error, True, stamp) or stalled
            elif progressing and _wanted(_condition(previous, ErrorCode.STALLED)) is not None:
                observed += ((ErrorCode.STALLED, False, PROGRESSING, ""),)

    return _close(out, previous, job, reason, message or reason, generation, stamp, events, observed)


__all__ = [
    "FAILURE_REASONS",
    "HEALTHY",
    "JOB_DEPLOYMENT_STATUSES",
    "JOB_STATUSES",
    "PODS_HEALTHY",
    "PRE_RUNNING_DEADLINE_EXCEEDED",
    "PROGRESSING",
    "RAYJOB_DELETED",
    "Derivation",
    "Event",
    "ProgressSnapshot",
    "RayState",
    "classify_failure",
    "classify_rayjob",
    "derive_invalid",
    "derive_status",
    "output_status",
]
