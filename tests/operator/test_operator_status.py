"""derive_status: every KubeRay state and every progress.json shape, as tables. Pure: no I/O, a fixed clock."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sftjob_api.codes import NOT_RETRYABLE, RETRYABLE, ErrorCode, Reason
from sftjob_api.errors import FieldProblem
from sftjob_api.progress import ProgressFile
from sftjob_api.types import MAX_HISTORY, SFTJob, SFTJobStatus, parse_sftjob
from sftjob_operator.status import (
    FAILURE_REASONS,
    JOB_DEPLOYMENT_STATUSES,
    JOB_STATUSES,
    RAYJOB_DELETED,
    ProgressSnapshot,
    classify_rayjob,
    derive_invalid,
    derive_status,
    format_duration,
)
from support.operator_env import RAYJOB_CRD, load_crd

NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
STAMP = "2026-05-01T12:00:00Z"


def job(**run_policy: Any) -> SFTJob:
    return parse_sftjob(
        {
            "apiVersion": "sftjob.dev/v1alpha1",
            "kind": "SFTJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "model": {"source": "hf://org/m"},
                "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
                "output": {"uri": "s3://out/sft"},
                "runPolicy": run_policy,
            },
        }
    )


def running_status(attempt: int = 1, **fields: Any) -> SFTJobStatus:
    """A status as written after attempt `attempt` was created."""
    base = derive_status(job(), SFTJobStatus(), generation=1, now=NOW, rayjob=None).status
    for n in range(2, attempt + 1):
        base.attempt = n
    return base.model_copy(update=fields)


def rayjob(deployment: str = "", job_status: str = "", *, suspend: bool = False, **status: Any) -> dict[str, Any]:
    ray_status = {"jobDeploymentStatus": deployment, "jobStatus": job_status, **status}
    return {
        "metadata": {"name": "j-a1"},
        "spec": {"suspend": suspend},
        "status": {k: v for k, v in ray_status.items() if v},
    }


def progress(phase: str = "Running", **fields: Any) -> ProgressFile:
    return ProgressFile.model_validate({"phase": phase, "updatedAt": STAMP, **fields})


# ------------------------------------------------------------------------------- KubeRay vocabulary


def test_the_vocabulary_covers_kuberay_v1_7() -> None:
    # The CRD types these as plain strings; the values come from rayjob_types.go (see status.py).
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


# ------------------------------------------------------------------------------ progress.json shapes

CHECKPOINTS = [
    {"step": 100, "uri": "s3://out/sft/ns/j/checkpoints/100", "evalLoss": 1.1},
    {"step": 200, "uri": "s3://out/sft/ns/j/checkpoints/200", "evalLoss": 0.9},
    {"step": 300, "uri": "s3://out/sft/ns/j/checkpoints/300", "evalLoss": 1.0},
]
SHAPES: dict[str, ProgressSnapshot] = {
    "not read": ProgressSnapshot(),
    "unreadable": ProgressSnapshot(problem="s3://out/sft/ns/j/progress.json: AccessDenied"),
    "initializing": ProgressSnapshot(progress=progress("Initializing")),
    "preparing": ProgressSnapshot(
        progress=progress(
            "Preparing",
            dataset={"format": "messages", "rows": 1000, "trainExamples": 950, "dropped": {"duplicate": 50}},
        )
    ),
    "running": ProgressSnapshot(
        progress=progress(
            "Running",
            attempt=1,
            step=300,
            totalSteps=1000,
            epoch=0.9,
            percentage=30.0,
            trainedTokens=123456,
            tokensPerSecond=512.5,
            estimatedFinishTime="2026-05-01T12:12:30Z",
            metrics={"trainLoss": 1.25, "evalLoss": 1.0, "learningRate": 0.0002, "gradNorm": 0.7},
            resolved={"learningRate": 0.0002, "perDeviceBatchSize": 4, "numWorkers": 2, "batching": "packed"},
            checkpoints=CHECKPOINTS,
        )
    ),
    "exporting": ProgressSnapshot(progress=progress("Exporting", step=1000, totalSteps=1000, percentage=100.0)),
    "succeeded, no manifest": ProgressSnapshot(
        progress=progress("Succeeded", step=1000, totalSteps=1000, percentage=100.0)
    ),
    "succeeded": ProgressSnapshot(
        progress=progress("Succeeded", step=1000, totalSteps=1000, percentage=100.0), output_complete=True
    ),
    "failed": ProgressSnapshot(
        progress=progress("Failed", attempt=1, error={"code": "NcclTimeout", "message": "rank 1 timed out"})
    ),
    "from another attempt": ProgressSnapshot(
        progress=progress("Failed", attempt=7, error={"code": "InvalidDataset", "message": "x"})
    ),
    "no attempt number": ProgressSnapshot(progress=progress("Exporting", step=5)),
}
# The SFTJob phase with the RayJob Running/RUNNING, then with it Complete/SUCCEEDED.
SHAPE_PHASES = {
    "not read": ("Running", "Exporting"),
    "unreadable": ("Running", "Exporting"),
    "initializing": ("Running", "Exporting"),
    "preparing": ("Running", "Exporting"),
    "running": ("Running", "Exporting"),
    "exporting": ("Exporting", "Exporting"),
    "succeeded, no manifest": ("Exporting", "Exporting"),
    "succeeded": ("Exporting", "Succeeded"),
    "failed": ("Running", "Exporting"),
    "from another attempt": ("Running", "Exporting"),
    "no attempt number": ("Exporting", "Exporting"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_progress_shape(shape: str) -> None:
    snapshot = SHAPES[shape] if shape != "not read" else None
    running = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Running", "RUNNING"), snapshot=snapshot
    )
    done = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Complete", "SUCCEEDED"), snapshot=snapshot
    )
    assert (running.status.phase, done.status.phase) == SHAPE_PHASES[shape]
    file = snapshot.progress if snapshot else None
    if file is None:
        assert running.status.progress is None and running.status.metrics is None
    else:
        assert running.status.progress is not None
        assert running.status.progress.step == file.step
        assert running.status.progress.percentage == file.percentage
        assert running.status.progress.last_update_time == file.updated_at
        assert running.status.metrics == file.metrics
    assert (running.status.output is not None) == (snapshot is not None and snapshot.output_complete)
    assert done.create_attempt is None and done.status.error is None


def test_running_progress_fills_every_field() -> None:
    out = derive_status(
        job(), running_status(), generation=3, now=NOW, rayjob=rayjob("Running", "RUNNING"), snapshot=SHAPES["running"]
    )
    status = out.status
    assert status.progress is not None and status.metrics is not None and status.resolved is not None
    assert (status.progress.step, status.progress.total_steps, status.progress.percentage) == (300, 1000, 30.0)
    assert status.progress.eta == "12m30s"  # estimated finish - last update: stable between reads
    assert status.progress.tokens_per_second == 512.5
    assert status.metrics.train_loss == 1.25
    assert status.resolved.batching == "packed"
    assert [c.step for c in status.checkpoints] == [100, 200, 300]
    assert status.best_checkpoint is not None and status.best_checkpoint.step == 200
    assert [e.reason for e in out.events] == ["CheckpointSaved", "Running"]
    assert status.start_time == STAMP
    assert {c.type: c.status for c in status.conditions} == {"Validated": "True", "Running": "True"}


def test_dataset_statistics_are_copied() -> None:
    out = derive_status(
        job(),
        running_status(),
        generation=1,
        now=NOW,
        rayjob=rayjob("Running", "RUNNING"),
        snapshot=SHAPES["preparing"],
    )
    assert out.status.dataset is not None and out.status.dataset.dropped == {"duplicate": 50}


def test_success_fills_output_uris_and_completion() -> None:
    out = derive_status(
        job(),
        running_status(),
        generation=1,
        now=NOW,
        rayjob=rayjob("Complete", "SUCCEEDED"),
        snapshot=SHAPES["succeeded"],
    )
    assert out.status.phase == "Succeeded"
    assert out.status.output is not None
    assert out.status.output.uri == "s3://out/sft/ns/j"
    assert out.status.output.adapter_uri == "s3://out/sft/ns/j/adapter"
    assert out.status.output.model_uri is None
    assert out.status.output.manifest_uri == "s3://out/sft/ns/j/manifest.json"
    assert out.status.completion_time == STAMP
    assert [e.reason for e in out.events] == ["Succeeded"]
    assert out.status.attempts[-1].result == "Succeeded"


def test_success_without_manifest_fails_after_the_grace_period() -> None:
    ended = (NOW - dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = derive_status(
        job(),
        running_status(),
        generation=1,
        now=NOW,
        rayjob=rayjob("Complete", "SUCCEEDED", endTime=ended),
        snapshot=SHAPES["succeeded, no manifest"],
    )
    assert out.status.phase == "Failed" and out.status.error is not None and out.status.error.code == "OutputIncomplete"


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
    assert out.status.error is not None and out.status.error.code == RAYJOB_DELETED
    assert "RayJob j-a1 of attempt 1 was deleted" in out.status.error.message
    first = out.status.attempts[0]
    assert (first.attempt, first.result, first.reason) == (1, "Failed", RAYJOB_DELETED)
    assert [e.reason for e in out.events] == ["Retrying"] and RAYJOB_DELETED in out.events[0].message


def test_a_rayjob_being_deleted_counts_as_deleted_unless_it_had_finished() -> None:
    deleting = {**rayjob("Running", "RUNNING"), "metadata": {"name": "j-a1", "deletionTimestamp": STAMP}}
    out = derive_status(job(), running_status(phase="Running"), generation=1, now=NOW, rayjob=deleting)
    assert out.create_attempt == 2 and out.status.error is not None and out.status.error.code == RAYJOB_DELETED
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
    assert out.status.error is not None and out.status.error.code == RAYJOB_DELETED
    assert out.status.error.message.endswith("(backoffLimit 0 reached)")
    failed = {c.type: c for c in out.status.conditions}["Failed"]
    assert (failed.status, failed.reason) == ("True", RAYJOB_DELETED)
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "Failed")]
    assert out.events[0].message.startswith(f"{RAYJOB_DELETED}: RayJob j-a1")


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


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59, 61, 3600 * 2 + 60 * 5, 86400 * 3 + 3600)] == [
        "0s",
        "59s",
        "1m1s",
        "2h5m",
        "3d1h",
    ]


def test_a_finished_job_is_not_judged_again() -> None:
    done = running_status(phase="Succeeded", completion_time=STAMP)
    problems = [FieldProblem(("spec", "runPolicy", "queueName"), "must be a label value")]
    out = derive_invalid(done, problems, generation=5, now=NOW)
    assert out.status.phase == "Succeeded" and out.status.error is None and out.events == []
    assert out.status.observed_generation == 5 and out.delete_rayjob is None


# ---------------------------------------------------------------------------------------- forgetting


def forgetting(exceeded: bool) -> dict[str, Any]:
    ratio = 1.3 if exceeded else 1.05
    return {"forgetting": {"baseLoss": 2.0, "tunedLoss": 2.0 * ratio, "ratio": ratio, "tokens": 500, "rows": 8,
                           "maxForgetting": 1.1, "exceeded": exceeded}}


def test_forgetting_within_the_gate_is_reported_and_nothing_is_marked() -> None:
    snapshot = ProgressSnapshot(progress=progress("Succeeded", attempt=1, evaluation=forgetting(False)),
                                output_complete=True)
    out = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Complete", "SUCCEEDED"), snapshot=snapshot
    )
    assert out.status.phase == "Succeeded"
    assert out.status.evaluation is not None and out.status.evaluation.forgetting is not None
    assert (out.status.evaluation.forgetting.ratio, out.status.evaluation.forgetting.tokens) == (1.05, 500)
    assert "Degraded" not in {c.type for c in out.status.conditions}
    assert [e.reason for e in out.events] == ["Succeeded"]


def test_forgetting_above_the_gate_in_degrade_mode_succeeds_with_a_degraded_condition() -> None:
    exporting = ProgressSnapshot(progress=progress("Exporting", attempt=1, evaluation=forgetting(True)))
    before = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Running", "RUNNING"), snapshot=exporting
    )
    assert before.status.phase == "Exporting" and before.status.evaluation is not None
    assert "Degraded" not in {c.type for c in before.status.conditions}  # only a finished job is degraded

    snapshot = ProgressSnapshot(progress=progress("Succeeded", attempt=1, evaluation=forgetting(True)),
                                output_complete=True)
    out = derive_status(
        job(), before.status, generation=1, now=NOW, rayjob=rayjob("Complete", "SUCCEEDED"), snapshot=snapshot
    )
    assert out.status.phase == "Succeeded" and out.status.error is None and out.status.output is not None
    conditions = {c.type: c for c in out.status.conditions}
    assert conditions["Succeeded"].status == "True"
    degraded = conditions["Degraded"]
    assert (degraded.status, degraded.reason) == ("True", ErrorCode.FORGETTING_EXCEEDED)
    assert "ratio 1.300, above evaluation.maxForgetting 1.1" in degraded.message
    assert [(e.type, e.reason) for e in out.events] == [("Normal", "Succeeded"),
                                                        ("Warning", ErrorCode.FORGETTING_EXCEEDED)]


def test_a_judge_that_stayed_down_leaves_the_job_succeeded_with_a_judge_unavailable_condition() -> None:
    evaluation = {"score": "json_equal 0.92 (base 0.00)",
                  "metrics": [{"name": "json_equal", "base": 0.0, "tuned": 0.92, "samples": 50}],
                  "judge": {"model": "judge-7b", "error": "APITimeoutError after 5 attempts"}, "seconds": 41.5}
    snapshot = ProgressSnapshot(progress=progress("Succeeded", attempt=1, evaluation=evaluation), output_complete=True)
    out = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Complete", "SUCCEEDED"), snapshot=snapshot
    )
    assert out.status.phase == "Succeeded" and out.status.error is None
    assert out.status.evaluation is not None and out.status.evaluation.score == "json_equal 0.92 (base 0.00)"
    assert out.status.evaluation.seconds == 41.5
    conditions = {c.type: c for c in out.status.conditions}
    unavailable = conditions[Reason.JUDGE_UNAVAILABLE]
    assert (unavailable.status, unavailable.reason) == ("True", Reason.JUDGE_UNAVAILABLE)
    assert "judge-7b stayed unreachable" in unavailable.message and "APITimeoutError" in unavailable.message
    assert [(e.type, e.reason) for e in out.events] == [("Normal", "Succeeded"), ("Warning", Reason.JUDGE_UNAVAILABLE)]


def test_forgetting_above_the_gate_in_fail_mode_fails_at_once_with_the_figure() -> None:
    error = {"code": ErrorCode.FORGETTING_EXCEEDED, "message": "forgetting ... above evaluation.maxForgetting 1.1",
             "field": "spec.evaluation.maxForgetting"}
    snapshot = ProgressSnapshot(progress=progress("Failed", attempt=1, error=error, evaluation=forgetting(True)))
    out = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Failed", "FAILED"), snapshot=snapshot
    )
    assert out.create_attempt is None and out.status.phase == "Failed"
    assert out.status.error is not None
    assert (out.status.error.code, out.status.error.retryable) == (ErrorCode.FORGETTING_EXCEEDED, False)
    assert out.status.evaluation is not None and out.status.evaluation.forgetting is not None
    assert out.status.evaluation.forgetting.exceeded
    conditions = {c.type: c.reason for c in out.status.conditions}
    assert conditions["Failed"] == ErrorCode.FORGETTING_EXCEEDED and "Degraded" not in conditions
