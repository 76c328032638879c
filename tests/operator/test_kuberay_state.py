"""kuberay_state: every (jobDeploymentStatus, jobStatus) pair of KubeRay, and what derive_status makes of it."""

from __future__ import annotations

import pytest
from status_cases import NOW, job, progress, rayjob, running_status

from sftjob_operator.kuberay_state import FAILURE_REASONS, JOB_DEPLOYMENT_STATUSES, JOB_STATUSES, classify_rayjob
from sftjob_operator.progress_status import ProgressSnapshot
from sftjob_operator.status import derive_status
from support.operator_env import RAYJOB_CRD, load_crd

# ------------------------------------------------------------------------------- KubeRay vocabulary


def test_the_vocabulary_covers_kuberay_v1_7() -> None:
    # The CRD types these as plain strings; the values come from rayjob_types.go (see kuberay_state.py).
    assert {
        "",
        "Initializing",
        "Running",
        "Complete",
        "Failed",
        "Suspending",
        "Suspended",
        "Retrying",
        "Waiting",
    } <= set(JOB_DEPLOYMENT_STATUSES)
    assert set(JOB_STATUSES) == {"", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"}
    assert {"SubmissionFailed", "DeadlineExceeded", "AppFailed"} <= set(FAILURE_REASONS)


def test_the_crd_declares_the_status_fields_we_read() -> None:
    crd = load_crd(RAYJOB_CRD)
    status = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]["properties"][
        "status"
    ]
    for field in ("jobDeploymentStatus", "jobStatus", "reason", "message", "dashboardURL", "endTime"):
        assert field in status["properties"], field


# What each (jobDeploymentStatus, jobStatus) means for the attempt; a row per deployment status.
ATTEMPT_PHASE: dict[str, dict[str, str]] = {
    "": dict.fromkeys(JOB_STATUSES, "Pending"),
    "Initializing": dict.fromkeys(JOB_STATUSES, "Initializing"),
    "Running": {
        "": "Initializing",
        "PENDING": "Initializing",
        "RUNNING": "Running",
        "STOPPED": "Running",
        "SUCCEEDED": "Running",
        "FAILED": "Running",
    },
    "Complete": {
        "": "Failed",
        "PENDING": "Failed",
        "RUNNING": "Failed",
        "STOPPED": "Failed",
        "SUCCEEDED": "Succeeded",
        "FAILED": "Failed",
    },
    "Failed": dict.fromkeys(JOB_STATUSES, "Failed"),
    "ValidationFailed": dict.fromkeys(JOB_STATUSES, "Failed"),
    "Suspending": dict.fromkeys(JOB_STATUSES, "Suspended"),
    "Suspended": dict.fromkeys(JOB_STATUSES, "Suspended"),
    "Retrying": dict.fromkeys(JOB_STATUSES, "Initializing"),
    "Waiting": dict.fromkeys(JOB_STATUSES, "Initializing"),
    "Scheduling": dict.fromkeys(JOB_STATUSES, "Pending"),
    "Scheduled": dict.fromkeys(JOB_STATUSES, "Pending"),
}

# The SFTJob after one reconcile of a running attempt 1 in that state: (phase, attempt it creates).
# A failure without a report from the trainer is retryable (a node lost, an eviction): attempt 2.
JOB_PHASE = {
    "Pending": ("Pending", None),
    "Initializing": ("Initializing", None),
    "Running": ("Running", None),
    "Succeeded": ("Succeeded", None),
    "Suspended": ("Pending", None),  # suspended by someone else while the spec says run: resuming
}
PERMANENT = {("Complete", "STOPPED"), *(("ValidationFailed", s) for s in JOB_STATUSES)}

ALL_STATES = [(d, s) for d in JOB_DEPLOYMENT_STATUSES for s in JOB_STATUSES]


def test_the_table_covers_every_state() -> None:
    assert set(ATTEMPT_PHASE) == set(JOB_DEPLOYMENT_STATUSES)
    assert all(set(row) == set(JOB_STATUSES) for row in ATTEMPT_PHASE.values())


@pytest.mark.parametrize(("deployment", "job_status"), ALL_STATES)
def test_classify_every_kuberay_state(deployment: str, job_status: str) -> None:
    state = classify_rayjob(rayjob(deployment, job_status)["status"])
    assert state.phase == ATTEMPT_PHASE[deployment][job_status]
    assert state.terminal == (state.phase in ("Succeeded", "Failed"))


@pytest.mark.parametrize(("deployment", "job_status"), ALL_STATES)
def test_derive_status_for_every_kuberay_state(deployment: str, job_status: str) -> None:
    attempt_phase = ATTEMPT_PHASE[deployment][job_status]
    # The trainer is training (its output is complete only for the Succeeded case to find it).
    snapshot = ProgressSnapshot(progress=progress("Running", step=10), output_complete=True)
    out = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob(deployment, job_status), snapshot=snapshot
    )
    if attempt_phase == "Failed":
        if (deployment, job_status) in PERMANENT:
            assert (out.status.phase, out.create_attempt) == ("Failed", None)
            assert out.status.error is not None and not out.status.error.retryable
        else:
            assert (out.status.phase, out.create_attempt) == ("Pending", 2)
            assert any(e.reason == "Retrying" for e in out.events)
    else:
        assert (out.status.phase, out.create_attempt) == JOB_PHASE[attempt_phase]
    assert out.status.ray_job is not None
    if out.create_attempt is None:  # the status mirrors the RayJob; after a retry it names the next one
        assert out.status.ray_job.job_deployment_status == (deployment or None)
        assert out.status.ray_job.job_status == (job_status or None)
    else:
        assert out.status.ray_job.name == "j-a2"
    assert out.status.observed_generation == 1


def test_an_unknown_state_is_pending() -> None:
    state = classify_rayjob({"jobDeploymentStatus": "Teleporting"})
    assert (state.phase, state.reason) == ("Pending", "UnknownRayJobState")
