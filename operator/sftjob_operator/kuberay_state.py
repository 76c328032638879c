"""What a KubeRay RayJob's status says about the attempt it runs. Pure: no I/O, no clock.

KubeRay's vocabulary: the CRD declares `jobDeploymentStatus`, `jobStatus` and `reason` as plain
strings; the values below are those of `ray-operator/apis/ray/v1/rayjob_types.go` (v1.7.0, plus
`ValidationFailed` of earlier releases and `Scheduling`/`Scheduled` of later ones, so that an
operator upgrade on either side never meets an unmapped state). Unknown values map to Pending.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.timestamps import parse_rfc3339
from sftjob_api.types import Phase, RayJobStatus, RunPolicySpec
from sftjob_operator.k8s_text import camel_reason

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


class FailureReason(StrEnum):
    """Every `status.reason` KubeRay gives a Failed RayJob."""

    SUBMISSION_FAILED = "SubmissionFailed"
    """The submitter could not submit the Ray job."""
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    """The RayJob's `activeDeadlineSeconds` passed."""
    APP_FAILED = "AppFailed"
    """The Ray job itself failed."""
    GRACE_PERIOD_EXCEEDED = "JobDeploymentStatusTransitionGracePeriodExceeded"
    """The Ray job ended but the deployment did not follow within KubeRay's grace period."""
    VALIDATION_FAILED = "ValidationFailed"
    """KubeRay rejected the RayJob's spec."""
    PRE_RUNNING_DEADLINE_EXCEEDED = "PreRunningDeadlineExceeded"
    """The RayJob did not reach Running within its `preRunningDeadlineSeconds`."""


FAILURE_REASONS = tuple(FailureReason)
"""Every `status.reason` KubeRay gives a Failed RayJob, as strings."""

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
"""The phases in which an attempt, or a job, has ended."""

# KubeRay before 1.6 drops preRunningDeadlineSeconds without a word: the operator fails an attempt whose RayJob is
# still not Running this long after startupDeadlineSeconds (KubeRay, when it has the field, acts within seconds).
STARTUP_DEADLINE_GRACE_SECONDS = 60


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
            return RayState("Failed", camel_reason(reason, FailureReason.APP_FAILED), message)
        if job_status == "STOPPED":
            return RayState("Failed", ErrorCode.STOPPED, message or "the Ray job was stopped")
        # Complete without a terminal Ray job status: the submitter Job failed.
        return RayState("Failed", camel_reason(reason, FailureReason.SUBMISSION_FAILED), message)
    if deployment == "Failed":
        return RayState("Failed", camel_reason(reason, "Failed"), message)
    if deployment == "ValidationFailed":
        return RayState("Failed", FailureReason.VALIDATION_FAILED, message)
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


def ray_job_status(name: str, status: Mapping[str, Any]) -> RayJobStatus:
    """What `status.rayJob` of the SFTJob shows of its current RayJob's `status`."""
    return RayJobStatus(
        name=name,
        job_status=status.get("jobStatus") or None,
        job_deployment_status=status.get("jobDeploymentStatus") or None,
        dashboard_url=status.get("dashboardURL") or None,
    )


def deleted_while_active(rayjob: Mapping[str, Any]) -> bool:
    """Whether a RayJob is being deleted (KubeRay's finalizer holds it) before its job ended."""
    deleting = bool((rayjob.get("metadata") or {}).get("deletionTimestamp"))
    return deleting and not classify_rayjob(rayjob.get("status")).terminal


def startup_overdue(
    policy: RunPolicySpec, ray: RayState, ray_status: Mapping[str, Any], suspended: bool, now: dt.datetime
) -> RayState | None:
    """KubeRay's pre-running deadline, enforced by the operator when KubeRay did not (a release before 1.6).

    Args:
        policy: The job's run policy (`startupDeadlineSeconds`).
        ray: The attempt's state as `classify_rayjob` maps it.
        ray_status: The RayJob's `.status`.
        suspended: Whether the RayJob or the job is suspended (no deadline runs then).
        now: The current time.

    Returns:
        A failed state as KubeRay reports it, when the RayJob is still not Running
        `startupDeadlineSeconds` + `STARTUP_DEADLINE_GRACE_SECONDS` after its `status.startTime`; else None.
    """
    limit = policy.startup_deadline_seconds
    if limit is None or suspended or ray.phase not in ("Pending", "Initializing"):
        return None
    if ray_status.get("jobDeploymentStatus") == "Running":
        return None  # KubeRay counts the deadline until the deployment runs (the driver may still be pending)
    started = parse_rfc3339(ray_status.get("startTime"))
    if started is None or (now - started).total_seconds() < limit + STARTUP_DEADLINE_GRACE_SECONDS:
        return None
    message = (
        f"the Ray cluster did not start within startupDeadlineSeconds={limit} (the operator stopped it: "
        "KubeRay did not apply preRunningDeadlineSeconds, which it supports from 1.6)"
    )
    return RayState("Failed", FailureReason.PRE_RUNNING_DEADLINE_EXCEEDED, message)


__all__ = [
    "FAILURE_REASONS",
    "JOB_DEPLOYMENT_STATUSES",
    "JOB_STATUSES",
    "STARTUP_DEADLINE_GRACE_SECONDS",
    "TERMINAL_PHASES",
    "FailureReason",
    "RayState",
    "classify_rayjob",
    "deleted_while_active",
    "ray_job_status",
    "startup_overdue",
]
