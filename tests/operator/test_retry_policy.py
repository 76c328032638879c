"""retry_policy: why an attempt failed and whether the job retries, through derive_status. Pure: a fixed clock."""

from __future__ import annotations

import pytest
from status_cases import NOW, job, progress, rayjob, running_status

from sftjob_api.codes import NOT_RETRYABLE, RETRYABLE
from sftjob_api.types import MAX_HISTORY
from sftjob_operator.kuberay_state import FAILURE_REASONS
from sftjob_operator.progress_status import ProgressSnapshot
from sftjob_operator.status import derive_status

# ----------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("code", sorted(RETRYABLE))
def test_retryable_trainer_errors_retry(code: str) -> None:
    snapshot = ProgressSnapshot(progress=progress("Failed", attempt=1, error={"code": code, "message": "m"}))
    out = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Failed", "FAILED"), snapshot=snapshot
    )
    assert out.create_attempt == 2 and out.status.attempt == 2
    assert out.status.attempts[0].reason == code and out.status.attempts[0].result == "Failed"


@pytest.mark.parametrize("code", sorted(NOT_RETRYABLE))
def test_non_retryable_trainer_errors_fail_at_once(code: str) -> None:
    snapshot = ProgressSnapshot(
        progress=progress("Failed", attempt=1, error={"code": code, "message": "m", "retryable": True})
    )
    out = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Failed", "FAILED"), snapshot=snapshot
    )
    assert out.create_attempt is None and out.status.phase == "Failed"
    assert out.status.error is not None and (out.status.error.code, out.status.error.retryable) == (code, False)
    assert {c.type: c.reason for c in out.status.conditions}["Failed"] == code


@pytest.mark.parametrize(("retry_oom", "expected"), [(False, None), (True, 2)])
def test_out_of_memory_retries_only_when_configured(retry_oom: bool, expected: int | None) -> None:
    snapshot = ProgressSnapshot(
        progress=progress("Failed", attempt=1, error={"code": "OutOfMemory", "message": "CUDA OOM"})
    )
    out = derive_status(
        job(retryOnOutOfMemory=retry_oom),
        running_status(),
        generation=1,
        now=NOW,
        rayjob=rayjob("Failed", "FAILED"),
        snapshot=snapshot,
    )
    assert out.create_attempt == expected


def test_an_oom_killed_worker_counts_as_out_of_memory() -> None:
    ray = rayjob("Failed", "FAILED", reason="AppFailed", message="worker OOMKilled (exit 137)")
    out = derive_status(job(), running_status(), generation=1, now=NOW, rayjob=ray, snapshot=ProgressSnapshot())
    assert out.status.error is not None and out.status.error.code == "OutOfMemory" and out.create_attempt is None


def test_unknown_trainer_codes_follow_their_retryable_flag() -> None:
    for flag, expected in ((True, 2), (False, None)):
        snapshot = ProgressSnapshot(
            progress=progress("Failed", attempt=1, error={"code": "Novel", "message": "m", "retryable": flag})
        )
        out = derive_status(
            job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Failed", "FAILED"), snapshot=snapshot
        )
        assert out.create_attempt == expected


def test_retries_stop_at_the_backoff_limit() -> None:
    status = running_status(attempt=3)
    out = derive_status(
        job(backoffLimit=2),
        status,
        generation=1,
        now=NOW,
        rayjob=rayjob("Failed", "FAILED"),
        snapshot=ProgressSnapshot(),
    )
    assert out.create_attempt is None and out.status.phase == "Failed"
    assert out.status.error is not None and "backoffLimit 2 reached" in out.status.error.message


def test_the_attempts_history_is_bounded() -> None:
    spec = job(backoffLimit=100)
    status = running_status()
    for attempt in range(1, 3 * MAX_HISTORY):
        out = derive_status(
            spec, status, generation=1, now=NOW, rayjob=rayjob("Failed", "FAILED"), snapshot=ProgressSnapshot()
        )
        assert out.create_attempt == attempt + 1
        status = out.status
    assert len(status.attempts) == MAX_HISTORY
    assert status.attempts[-1].attempt == 3 * MAX_HISTORY


# (reason, expected code, retryable) for a Failed RayJob whose trainer reported nothing.
REASONS = {
    "SubmissionFailed": ("SubmissionFailed", True),
    "DeadlineExceeded": ("DeadlineExceeded", False),
    "AppFailed": ("WorkerCrashed", True),
    "JobDeploymentStatusTransitionGracePeriodExceeded": ("WorkerCrashed", True),
    "ValidationFailed": ("RayJobInvalid", False),
    "PreRunningDeadlineExceeded": ("Unschedulable", False),
}


@pytest.mark.parametrize("reason", FAILURE_REASONS)
def test_every_kuberay_failure_reason(reason: str) -> None:
    code, retryable = REASONS[reason]
    out = derive_status(
        job(),
        running_status(),
        generation=1,
        now=NOW,
        rayjob=rayjob("Failed", "FAILED", reason=reason),
        snapshot=ProgressSnapshot(),
    )
    assert out.status.error is not None
    assert (out.status.error.code, out.status.error.retryable) == (code, retryable)
    assert out.create_attempt == (2 if retryable else None)
    assert out.status.phase == ("Pending" if retryable else "Failed")
