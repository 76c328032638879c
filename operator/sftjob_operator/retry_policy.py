"""Why an attempt failed, and whether the job tries again. Pure: no I/O, no clock.

The trainer's own report wins; without one, what KubeRay and the pods said names the cause. A retryable
failure starts the next attempt (which resumes from the latest checkpoint) while `runPolicy.backoffLimit`
allows; the job's own deadline (`activeDeadlineSeconds`) ends it whatever the attempt does.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sftjob_api.codes import NOT_RETRYABLE, RETRYABLE, ErrorCode, Reason
from sftjob_api.progress import ProgressFile
from sftjob_api.types import ErrorStatus, RunPolicySpec, SFTJob
from sftjob_operator.conditions import Event
from sftjob_operator.k8s_text import clip
from sftjob_operator.kuberay_state import FailureReason, RayState
from sftjob_operator.progress_status import same_attempt

# Reasons of KubeRay failures that no retry can fix, and the error code each becomes.
_KUBERAY_PERMANENT: dict[str, ErrorCode] = {
    FailureReason.DEADLINE_EXCEEDED: ErrorCode.DEADLINE_EXCEEDED,
    FailureReason.VALIDATION_FAILED: ErrorCode.RAY_JOB_INVALID,
    FailureReason.PRE_RUNNING_DEADLINE_EXCEEDED: ErrorCode.UNSCHEDULABLE,
}
# Pod problems that name the failure of an attempt whose startup deadline passed (else: Unschedulable).
_STARTUP_CODES: dict[str, ErrorCode] = {
    ErrorCode.IMAGE_PULL_BACK_OFF: ErrorCode.IMAGE_PULL_BACK_OFF,
    ErrorCode.CREATE_CONTAINER_CONFIG_ERROR: ErrorCode.CREATE_CONTAINER_CONFIG_ERROR,
    ErrorCode.CRASH_LOOP_BACK_OFF: ErrorCode.CRASH_LOOP_BACK_OFF,
    Reason.OOM_KILLED: ErrorCode.OUT_OF_MEMORY,
}
_OOM_HINTS = re.compile(r"\bOOM(Killed)?\b|out of memory|OutOfMemory", re.IGNORECASE)


@dataclass(frozen=True)
class RetryDecision:
    """What follows a failed attempt."""

    error: ErrorStatus
    """The error as the status records it."""
    next_attempt: int | None = None
    """The attempt to start; None when the job fails."""
    event: Event | None = None
    """The `Retrying` event of the next attempt."""


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
    if progress is not None and progress.phase == "Failed" and progress.error and same_attempt(progress, attempt):
        error = progress.error
        if error.code == ErrorCode.OUT_OF_MEMORY:
            retryable = retry_oom
        elif error.code in NOT_RETRYABLE:
            retryable = False
        elif error.code in RETRYABLE:
            retryable = True
        else:
            retryable = error.retryable
        return error.model_copy(update={"retryable": retryable, "message": clip(error.message)}), retryable
    seen = f"; {pods[1]}" if pods else ""
    if ray.reason == FailureReason.PRE_RUNNING_DEADLINE_EXCEEDED:
        code = _STARTUP_CODES.get(pods[0], ErrorCode.UNSCHEDULABLE) if pods else ErrorCode.UNSCHEDULABLE
        message = ray.message or f"KubeRay: {ray.reason}"
        return ErrorStatus(code=code, message=clip(message + seen), retryable=False), False
    if ray.reason in _KUBERAY_PERMANENT:
        code = _KUBERAY_PERMANENT[ray.reason]
        return ErrorStatus(code=code, message=clip(ray.message or f"KubeRay: {ray.reason}"), retryable=False), False
    if ray.reason == ErrorCode.STOPPED:
        return ErrorStatus(code=ErrorCode.STOPPED, message=clip(ray.message), retryable=False), False
    if _OOM_HINTS.search(ray.message) or (pods is not None and pods[0] == Reason.OOM_KILLED):
        message = clip((ray.message or f"KubeRay: {ray.reason}") + seen)
        return ErrorStatus(code=ErrorCode.OUT_OF_MEMORY, message=message, retryable=retry_oom), retry_oom
    code = ErrorCode.SUBMISSION_FAILED if ray.reason == FailureReason.SUBMISSION_FAILED else ErrorCode.WORKER_CRASHED
    message = ray.message or "the trainer exited without reporting an error (node lost, eviction or preemption)"
    return ErrorStatus(code=code, message=clip(f"{ray.reason}: {message}{seen}"), retryable=True), True


def rayjob_deleted(name: str, attempt: int, phase: str) -> ErrorStatus:
    """The error of an attempt whose RayJob someone else deleted while the job was `phase` (retryable)."""
    return ErrorStatus(
        code=ErrorCode.RAYJOB_DELETED,
        message=clip(
            f"RayJob {name} of attempt {attempt} was deleted while the job was {phase or 'Pending'}; "
            "the operator did not delete it: check who did (kubectl get events, the API server's audit log)"
        ),
        retryable=True,
    )


def deadline_exceeded(policy: RunPolicySpec, started: dt.datetime | None, now: dt.datetime) -> ErrorStatus | None:
    """The error of a job running past `activeDeadlineSeconds`, counted from its first start; else None."""
    deadline = policy.active_deadline_seconds
    if deadline is None or started is None or (now - started).total_seconds() < deadline:
        return None
    return ErrorStatus(
        code=ErrorCode.DEADLINE_EXCEEDED,
        message=f"the job ran longer than activeDeadlineSeconds={deadline}",
        retryable=False,
    )


def after_failure(policy: RunPolicySpec, attempt: int, error: ErrorStatus, retryable: bool) -> RetryDecision:
    """Start the next attempt while `backoffLimit` allows a retryable failure, else fail the job.

    Args:
        policy: The job's run policy (`backoffLimit`).
        attempt: The attempt that failed (the first is 1).
        error: Why it failed.
        retryable: Whether another attempt may succeed.

    Returns:
        The decision.
    """
    if not retryable:
        return RetryDecision(error)
    if attempt - 1 >= policy.backoff_limit:
        message = clip(f"{error.message} (backoffLimit {policy.backoff_limit} reached)")
        return RetryDecision(error.model_copy(update={"message": message}))
    nxt = attempt + 1
    event = Event(
        "Warning",
        Reason.RETRYING,
        clip(
            f"attempt {attempt} failed ({error.code}: {error.message}); starting attempt {nxt} of "
            f"{policy.backoff_limit + 1}, resuming from the latest checkpoint"
        ),
    )
    return RetryDecision(error, nxt, event)


__all__ = ["RetryDecision", "after_failure", "classify_failure", "deadline_exceeded", "rayjob_deleted"]
