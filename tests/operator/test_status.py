"""status: the lifecycle of a job through derive_status and derive_invalid, and the actions it asks for."""

from __future__ import annotations

import datetime as dt

import pytest
from status_cases import NOW, SHAPES, STAMP, job, rayjob, running_status

from sftjob_api.codes import ErrorCode
from sftjob_api.field_problems import FieldProblem
from sftjob_api.types import SFTJobStatus
from sftjob_operator.progress_status import ProgressSnapshot
from sftjob_operator.status import derive_invalid, derive_status

# ---------------------------------------------------------------------------- lifecycle and actions


def test_a_new_job_creates_attempt_one() -> None:
    out = derive_status(job(), SFTJobStatus(), generation=1, now=NOW, rayjob=None)
    assert out.create_attempt == 1
    assert (out.status.phase, out.status.attempt, out.status.ray_job and out.status.ray_job.name) == (
        "Pending",
        1,
        "j-a1",
    )
    assert [e.reason for e in out.events] == ["Validated"]


def test_a_rayjob_deleted_by_hand_fails_the_attempt_and_starts_the_next() -> None:
    out = derive_status(job(), running_status(phase="Running"), generation=1, now=NOW, rayjob=None)
    assert out.create_attempt == 2 and (out.status.phase, out.status.attempt) == ("Pending", 2)
    assert out.status.error is not None and out.status.error.code == ErrorCode.RAYJOB_DELETED
    assert "RayJob j-a1 of attempt 1 was deleted" in out.status.error.message
    first = out.status.attempts[0]
    assert (first.attempt, first.result, first.reason) == (1, "Failed", ErrorCode.RAYJOB_DELETED)
    assert [e.reason for e in out.events] == ["Retrying"] and ErrorCode.RAYJOB_DELETED in out.events[0].message


def test_a_rayjob_being_deleted_counts_as_deleted_unless_it_had_finished() -> None:
    deleting = {**rayjob("Running", "RUNNING"), "metadata": {"name": "j-a1", "deletionTimestamp": STAMP}}
    out = derive_status(job(), running_status(phase="Running"), generation=1, now=NOW, rayjob=deleting)
    assert out.create_attempt == 2 and out.status.error is not None
    assert out.status.error.code == ErrorCode.RAYJOB_DELETED
    finished = {**rayjob("Complete", "SUCCEEDED"), "metadata": {"name": "j-a1", "deletionTimestamp": STAMP}}
    out = derive_status(
        job(), running_status(phase="Running"), generation=1, now=NOW, rayjob=finished, snapshot=ProgressSnapshot()
    )
    assert out.create_attempt is None and out.status.phase == "Exporting"


def test_a_rayjob_deleted_with_no_retries_left_fails_the_job_naming_the_cause() -> None:
    out = derive_status(
        job(backoffLimit=0), running_status(phase="Running"), generation=1, now=NOW, rayjob=None
    )
    assert out.create_attempt is None and out.status.phase == "Failed"
    assert out.status.error is not None and out.status.error.code == ErrorCode.RAYJOB_DELETED
    assert out.status.error.message.endswith("(backoffLimit 0 reached)")
    failed = {c.type: c for c in out.status.conditions}["Failed"]
    assert (failed.status, failed.reason) == ("True", ErrorCode.RAYJOB_DELETED)
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "Failed")]
    assert out.events[0].message.startswith(f"{ErrorCode.RAYJOB_DELETED}: RayJob j-a1")


def test_a_finished_job_whose_rayjob_is_gone_stays_finished() -> None:
    done = running_status(phase="Succeeded", completion_time=STAMP)
    out = derive_status(job(), done, generation=1, now=NOW, rayjob=None)
    assert out.create_attempt is None and out.status == done and out.events == []


def test_derivation_is_idempotent() -> None:
    first = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Running", "RUNNING"), snapshot=SHAPES["running"]
    )
    later = NOW + dt.timedelta(minutes=5)
    again = derive_status(
        job(), first.status, generation=1, now=later, rayjob=rayjob("Running", "RUNNING"), snapshot=SHAPES["running"]
    )
    assert again.status == first.status  # same observations: same status, transition times kept
    assert again.events == [] and again.create_attempt is None and again.set_suspend is None


def test_suspend_sets_the_rayjob_and_reports_suspended() -> None:
    spec = job(suspend=True)
    asked = derive_status(
        spec, running_status(phase="Running"), generation=2, now=NOW, rayjob=rayjob("Running", "RUNNING")
    )
    assert asked.set_suspend is True
    assert asked.status.phase == "Suspended"
    assert {c.type: c.reason for c in asked.status.conditions}["Suspended"] == "Suspending"
    done = derive_status(spec, asked.status, generation=2, now=NOW, rayjob=rayjob("Suspended", suspend=True))
    assert done.set_suspend is None
    assert {c.type: c.reason for c in done.status.conditions}["Suspended"] == "Suspended"
    assert [e.reason for e in asked.events] == ["Suspended"] and done.events == []


def test_resume_clears_suspend() -> None:
    suspended = derive_status(
        job(suspend=True), running_status(), generation=2, now=NOW, rayjob=rayjob("Suspended", suspend=True)
    ).status
    out = derive_status(job(), suspended, generation=3, now=NOW, rayjob=rayjob("Suspended", suspend=True))
    assert out.set_suspend is False
    assert out.status.phase == "Pending"
    assert [e.reason for e in out.events] == ["Resumed"]
    assert {c.type: c.status for c in out.status.conditions}["Suspended"] == "False"


def test_kueue_holds_queued_jobs_and_the_operator_never_unsuspends_them() -> None:
    out = derive_status(
        job(queueName="gpu"), running_status(), generation=1, now=NOW, rayjob=rayjob("Suspended", suspend=True)
    )
    assert out.status.phase == "Queued" and out.set_suspend is None


def test_the_deadline_fails_the_job_and_deletes_the_rayjob() -> None:
    started = (NOW - dt.timedelta(seconds=61)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = derive_status(
        job(activeDeadlineSeconds=60),
        running_status(start_time=started),
        generation=1,
        now=NOW,
        rayjob=rayjob("Running", "RUNNING"),
    )
    assert out.status.phase == "Failed" and out.delete_rayjob == "j-a1"
    assert out.status.error is not None and out.status.error.code == "DeadlineExceeded"
    assert [e.reason for e in out.events] == ["Failed"]


def test_the_deadline_is_not_reached_early() -> None:
    started = (NOW - dt.timedelta(seconds=59)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = derive_status(
        job(activeDeadlineSeconds=60),
        running_status(start_time=started),
        generation=1,
        now=NOW,
        rayjob=rayjob("Running", "RUNNING"),
    )
    assert out.status.phase == "Running" and out.delete_rayjob is None


@pytest.mark.parametrize(
    ("ttl", "age", "deleted"), [(None, 10_000, False), (60, 59, False), (60, 60, True), (0, 0, True)]
)
def test_ttl_after_finished(ttl: int | None, age: int, deleted: bool) -> None:
    done = (NOW - dt.timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    policy = {"ttlSecondsAfterFinished": ttl} if ttl is not None else {}
    out = derive_status(
        job(**policy), running_status(phase="Succeeded", completion_time=done), generation=1, now=NOW, rayjob=None
    )
    assert out.delete_job is deleted and out.create_attempt is None


def test_invalid_spec_fails_once_and_recovers_with_a_new_attempt() -> None:
    problems = [FieldProblem(("spec", "method", "quantization"), "qlora needs quantization")]
    failed = derive_invalid(SFTJobStatus(), problems, generation=1, now=NOW)
    assert failed.status.phase == "Failed" and failed.delete_rayjob is None
    assert failed.status.error is not None
    assert (failed.status.error.code, failed.status.error.field) == ("InvalidSpec", "spec.method.quantization")
    assert {c.type: (c.status, c.reason) for c in failed.status.conditions}["Validated"] == ("False", "InvalidSpec")
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "Failed")]
    again = derive_invalid(failed.status, problems, generation=1, now=NOW + dt.timedelta(minutes=1))
    assert again.status == failed.status and again.events == []  # no retries, no repeated events

    fixed = derive_status(job(), failed.status, generation=2, now=NOW, rayjob=None)
    assert fixed.create_attempt == 1 and fixed.status.error is None and fixed.status.phase == "Pending"


def test_a_spec_that_turns_invalid_stops_the_running_attempt() -> None:
    problems = [FieldProblem(("spec", "compute", "nodeSelector", "k"), "value is not a label value")]
    out = derive_invalid(running_status(phase="Running"), problems, generation=2, now=NOW)
    assert out.delete_rayjob == "j-a1" and out.status.phase == "Failed"


def test_a_finished_job_is_not_judged_again() -> None:
    done = running_status(phase="Succeeded", completion_time=STAMP)
    problems = [FieldProblem(("spec", "runPolicy", "queueName"), "must be a label value")]
    out = derive_invalid(done, problems, generation=5, now=NOW)
    assert out.status.phase == "Succeeded" and out.status.error is None and out.events == []
    assert out.status.observed_generation == 5 and out.delete_rayjob is None
