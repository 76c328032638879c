"""Pod diagnosis, the startup deadline and stall detection, as pure functions: pods.py and derive_status.

The pods are core/v1 objects as the kubelet and the scheduler write them (tests/support/kmock_realistic.py says
where the shapes and messages come from); the clock is fixed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from status_cases import rayjob

from sftjob_api.codes import ErrorCode, Reason
from sftjob_api.progress import ProgressFile
from sftjob_api.types import SFTJob, SFTJobStatus, parse_sftjob
from sftjob_operator.kuberay_state import STARTUP_DEADLINE_GRACE_SECONDS, FailureReason
from sftjob_operator.pods import (
    RUNNING_CHECK_INTERVALS,
    PodProblem,
    diagnose_pods,
    pod_selector,
    should_list_pods,
    summarize,
)
from sftjob_operator.progress_status import ProgressSnapshot
from sftjob_operator.rayjob import build_rayjob
from sftjob_operator.settings import Settings
from sftjob_operator.status import Derivation, derive_status
from support.kmock_realistic import (
    config_error_status,
    crash_loop_status,
    healthy_status,
    image_pull_status,
    oom_restarted_status,
    ray_pod,
    unschedulable_status,
)
from support.operator_env import RAYJOB_CRD, load_crd

NS = "ml"
LABELS = {"sftjob.dev/name": "j", "sftjob.dev/attempt": "1", "app.kubernetes.io/managed-by": "sftjob-operator"}
IMAGE = "ghcr.io/sftjob/sftjob-trainer:0.1.O"
HEAD = "demo-a1-raycluster-x7k2p-head-8xk2q"
WORKER = "demo-a1-raycluster-x7k2p-workers-worker-4lq9z"
WORKER2 = "demo-a1-raycluster-x7k2p-workers-worker-m2p7d"
NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def pod(name: str, status: dict[str, Any], *, container: str = "ray-worker", memory: str = "32Gi") -> dict[str, Any]:
    node_type = "head" if container == "ray-head" else "worker"
    body = ray_pod(name, NS, LABELS, container=container, image=IMAGE, memory=memory, node_type=node_type)
    return body | {"status": status}


def job(**run_policy: Any) -> SFTJob:
    return parse_sftjob(
        {
            "apiVersion": "sftjob.dev/v1alpha1",
            "kind": "SFTJob",
            "metadata": {"name": "j", "namespace": NS, "uid": "u-1"},
            "spec": {
                "model": {"source": "hf://org/m"},
                "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
                "output": {"uri": "s3://out/sft"},
                "runPolicy": run_policy,
            },
        }
    )


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def created(the_job: SFTJob) -> SFTJobStatus:
    """The status as written right after attempt 1 was created (at NOW)."""
    return derive_status(the_job, SFTJobStatus(), generation=1, now=NOW, rayjob=None).status


def step(the_job: SFTJob, previous: SFTJobStatus, when: dt.datetime, ray: dict[str, Any], **kwargs: Any) -> Derivation:
    return derive_status(the_job, previous, generation=1, now=when, rayjob=ray, **kwargs)


def conditions(status: SFTJobStatus) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in status.conditions}


def progress(updated: dt.datetime, *, attempt: int = 1, step_: int = 10, phase: str = "Running") -> ProgressSnapshot:
    document = {"phase": phase, "attempt": attempt, "step": step_, "totalSteps": 100, "updatedAt": stamp(updated)}
    return ProgressSnapshot(progress=ProgressFile.model_validate(document))


# ----------------------------------------------------------------------------------------------- diagnose_pods


def test_an_unschedulable_pod_carries_the_schedulers_message() -> None:
    [problem] = diagnose_pods([pod(WORKER, unschedulable_status())], namespace=NS)
    assert (problem.reason, problem.pod, problem.container) == (ErrorCode.UNSCHEDULABLE, WORKER, None)
    assert problem.detail.startswith("0/3 nodes are available: 1 node(s) had untolerated taint")
    assert "2 Insufficient nvidia.com/gpu." in problem.detail
    assert "lower spec.compute" in problem.advice and "add nodes" in problem.advice
    assert problem.describe().startswith(f"pod {WORKER}: Unschedulable: 0/3 nodes are available")


@pytest.mark.parametrize("backoff", [True, False], ids=["ImagePullBackOff", "ErrImagePull"])
def test_an_image_that_cannot_be_pulled_names_the_image(backoff: bool) -> None:
    status = image_pull_status("ray-head", IMAGE, backoff=backoff)
    [problem] = diagnose_pods([pod(HEAD, status, container="ray-head")], namespace=NS)
    assert (problem.reason, problem.pod, problem.container) == (ErrorCode.IMAGE_PULL_BACK_OFF, HEAD, "ray-head")
    expected = f'Back-off pulling image "{IMAGE}"' if backoff else "rpc error: code = NotFound"
    assert problem.detail.startswith(f"image {IMAGE!r}: {expected}")
    assert "spec.compute.image" in problem.advice and "imagePullSecret" in problem.advice


def test_a_crash_loop_names_the_last_exit_and_the_logs_command() -> None:
    [problem] = diagnose_pods([pod(WORKER, crash_loop_status("ray-worker", IMAGE, WORKER))], namespace=NS)
    assert (problem.reason, problem.container) == (ErrorCode.CRASH_LOOP_BACK_OFF, "ray-worker")
    assert problem.detail == "last exit code 1 (Error)"
    assert problem.advice == f"read its logs: kubectl logs -n {NS} {WORKER} -c ray-worker --previous"


def test_the_crash_loop_message_does_not_change_with_the_back_off() -> None:
    # The kubelet's back-off delay and the restart count grow; the condition's message must not follow them.
    first = diagnose_pods([pod(WORKER, crash_loop_status("ray-worker", IMAGE, WORKER, restarts=2))], namespace=NS)
    later = diagnose_pods([pod(WORKER, crash_loop_status("ray-worker", IMAGE, WORKER, restarts=5))], namespace=NS)
    assert summarize(first) == summarize(later)


@pytest.mark.parametrize("crash_looping", [True, False], ids=["crash-looping", "running-again"])
def test_an_oom_killed_worker_says_raise_memory_per_worker(crash_looping: bool) -> None:
    if crash_looping:
        status = crash_loop_status("ray-worker", IMAGE, WORKER, exit_code=137, reason="OOMKilled")
    else:
        status = oom_restarted_status("ray-worker", IMAGE)
    [problem] = diagnose_pods([pod(WORKER, status, memory="16Gi")], namespace=NS)
    assert (problem.reason, problem.container) == (Reason.OOM_KILLED, "ray-worker")
    assert problem.detail == "killed for using more memory than its limit (16Gi)"
    assert problem.advice.startswith("raise spec.compute.memoryPerWorker")
    assert f"kubectl logs -n {NS} {WORKER} -c ray-worker --previous" in problem.advice


def test_an_oom_killed_head_points_at_its_logs() -> None:
    [problem] = diagnose_pods(
        [pod(HEAD, oom_restarted_status("ray-head", IMAGE), container="ray-head", memory="8Gi")], namespace=NS
    )
    assert problem.reason == Reason.OOM_KILLED
    assert problem.advice == f"read its last output: kubectl logs -n {NS} {HEAD} -c ray-head --previous"


def test_a_missing_secret_is_a_config_error() -> None:
    [problem] = diagnose_pods([pod(WORKER, config_error_status("ray-worker", IMAGE, "s3-creds"))], namespace=NS)
    assert (problem.reason, problem.detail) == (ErrorCode.CREATE_CONTAINER_CONFIG_ERROR, 'secret "s3-creds" not found')
    assert "secretRef" in problem.advice


def test_healthy_and_starting_pods_have_no_problem() -> None:
    creating = {"waiting": {"reason": "ContainerCreating"}}
    starting = healthy_status("ray-worker", IMAGE) | {
        "containerStatuses": [
            {"name": "ray-worker", "image": IMAGE, "ready": False, "restartCount": 0, "state": creating}
        ]
    }
    pods = [pod(HEAD, healthy_status("ray-head", IMAGE), container="ray-head"), pod(WORKER, starting), pod(WORKER2, {})]
    assert diagnose_pods(pods, namespace=NS) == []


def test_problems_are_ordered_by_urgency_and_the_summary_names_the_others() -> None:
    pods = [
        pod(WORKER2, unschedulable_status()),
        pod(WORKER, crash_loop_status("ray-worker", IMAGE, WORKER)),
        pod(HEAD, image_pull_status("ray-head", IMAGE), container="ray-head"),
    ]
    problems = diagnose_pods(pods, namespace=NS)
    assert [p.reason for p in problems] == [ErrorCode.IMAGE_PULL_BACK_OFF, ErrorCode.CRASH_LOOP_BACK_OFF,
                                            ErrorCode.UNSCHEDULABLE]
    reason, message = summarize(problems)
    assert reason == ErrorCode.IMAGE_PULL_BACK_OFF
    assert message.startswith(f"pod {HEAD} container ray-head: ImagePullBackOff: image {IMAGE!r}")
    assert message.endswith(f" (also: {WORKER} CrashLoopBackOff, {WORKER2} Unschedulable)")


def test_the_summary_names_at_most_five_others() -> None:
    problems = [PodProblem(ErrorCode.UNSCHEDULABLE, f"w-{n}", None, "0/3 nodes are available", "add nodes")
                for n in range(9)]
    _, message = summarize(problems)
    assert message.endswith(
        "(also: w-1 Unschedulable, w-2 Unschedulable, w-3 Unschedulable, w-4 Unschedulable, "
        "w-5 Unschedulable and 3 more)"
    )


def test_the_selector_matches_the_labels_every_pod_template_carries() -> None:
    manifest = build_rayjob(job(), 3, Settings())
    spec = manifest["spec"]
    templates = [
        spec["submitterPodTemplate"],
        spec["rayClusterSpec"]["headGroupSpec"]["template"],
        spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"],
    ]
    assert pod_selector("j", 3) == "sftjob.dev/name=j,sftjob.dev/attempt=3"
    for template in templates:
        assert template["metadata"]["labels"]["sftjob.dev/name"] == "j"
        assert template["metadata"]["labels"]["sftjob.dev/attempt"] == "3"


# --------------------------------------------------------------------------------------------------- throttle

THROTTLE = [
    # phase, suspended, unhealthy, timer, since_last, expected
    ("Pending", False, False, True, 1.0, True),  # e.g. Scheduling (KubeRay with gang scheduling)
    ("Initializing", False, False, True, 1.0, True),
    ("Initializing", False, False, False, None, False),  # a KubeRay status change: not on every reconcile
    ("Initializing", True, False, True, None, False),  # suspended or queued: no pods
    ("Running", False, False, True, None, True),  # first look since the operator started
    ("Running", False, False, True, 30.0 * (RUNNING_CHECK_INTERVALS - 1), False),
    ("Running", False, False, True, 30.0 * RUNNING_CHECK_INTERVALS, True),
    ("Running", False, True, True, 30.0, True),  # a problem shows: follow it until it clears
    ("Failed", False, False, False, 1.0, True),  # once, to name the failure's cause
    ("Succeeded", False, False, True, None, False),
    ("Suspended", False, False, True, None, False),
]


@pytest.mark.parametrize(("phase", "suspended", "unhealthy", "timer", "since_last", "expected"), THROTTLE)
def test_when_pods_are_listed(
    phase: str, suspended: bool, unhealthy: bool, timer: bool, since_last: float | None, expected: bool
) -> None:
    due = should_list_pods(
        attempt_phase=phase,
        started=True,
        suspended=suspended,
        unhealthy=unhealthy,
        timer=timer,
        since_last=since_last,
        interval=30.0,
    )
    assert due is expected


def test_no_pods_are_listed_before_kuberay_picks_the_rayjob_up() -> None:
    due = should_list_pods(
        attempt_phase="Pending",
        started=False,
        suspended=False,
        unhealthy=False,
        timer=True,
        since_last=None,
        interval=30.0,
    )
    assert due is False


# ------------------------------------------------------------------------------ PodsHealthy in derive_status


def test_a_pod_problem_sets_the_condition_and_one_warning_event() -> None:
    the_job = job()
    problems = diagnose_pods([pod(WORKER, unschedulable_status())], namespace=NS)
    first = step(the_job, created(the_job), at(30), rayjob("Initializing"), pods=problems)
    state, reason, message = conditions(first.status)[Reason.PODS_HEALTHY]
    assert (state, reason) == ("False", ErrorCode.UNSCHEDULABLE)
    assert message == problems[0].describe()
    warnings = [(e.type, e.reason, e.message) for e in first.events if e.reason == ErrorCode.UNSCHEDULABLE]
    assert warnings == [("Warning", ErrorCode.UNSCHEDULABLE, message)]
    assert first.status.phase == "Initializing"

    # Seen again: no new event, no change; not looked at: the condition stays.
    again = step(the_job, first.status, at(60), rayjob("Initializing"), pods=problems)
    assert [e.reason for e in again.events] == []
    assert again.status.to_wire() == first.status.to_wire()
    unlooked = step(the_job, first.status, at(90), rayjob("Initializing"), pods=None)
    assert conditions(unlooked.status)[Reason.PODS_HEALTHY] == ("False", ErrorCode.UNSCHEDULABLE, message)


def test_a_new_reason_is_a_new_event_and_a_cleared_problem_turns_the_condition_true() -> None:
    the_job = job()
    unschedulable = diagnose_pods([pod(WORKER, unschedulable_status())], namespace=NS)
    pulling = diagnose_pods([pod(HEAD, image_pull_status("ray-head", IMAGE), container="ray-head")], namespace=NS)
    first = step(the_job, created(the_job), at(30), rayjob("Initializing"), pods=unschedulable)
    second = step(the_job, first.status, at(60), rayjob("Initializing"), pods=pulling)
    assert [(e.type, e.reason) for e in second.events] == [("Warning", ErrorCode.IMAGE_PULL_BACK_OFF)]
    healthy = step(the_job, second.status, at(90), rayjob("Running", "RUNNING"), pods=[])
    assert conditions(healthy.status)[Reason.PODS_HEALTHY] == ("True", Reason.HEALTHY, "")
    assert [e.reason for e in healthy.events] == ["Running"]


def test_healthy_pods_add_no_condition_to_a_job_that_never_had_a_problem() -> None:
    the_job = job()
    derivation = step(the_job, created(the_job), at(30), rayjob("Initializing"), pods=[])
    assert Reason.PODS_HEALTHY not in conditions(derivation.status)


# ----------------------------------------------------------------------------------------- startup deadline


def test_the_startup_deadline_becomes_the_rayjobs_pre_running_deadline() -> None:
    from openapi_schema_validator import OAS30Validator

    rendered = build_rayjob(job(startupDeadlineSeconds=600), 1, Settings())
    assert rendered["spec"]["preRunningDeadlineSeconds"] == 600
    assert build_rayjob(job(startupDeadlineSeconds=600), 4, Settings())["spec"]["preRunningDeadlineSeconds"] == 600
    assert "preRunningDeadlineSeconds" not in build_rayjob(job(), 1, Settings())["spec"]
    # KubeRay v1.7.0's CRD has the field (and the status.startTime it counts from, which the backstop reads).
    crd = load_crd(RAYJOB_CRD)
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["properties"]["preRunningDeadlineSeconds"]["minimum"] == 1
    assert "startTime" in schema["properties"]["status"]["properties"]
    assert [e.message for e in OAS30Validator(schema).iter_errors(rendered)] == []


KUBERAY_DEADLINE = rayjob(
    "Failed",
    reason=FailureReason.PRE_RUNNING_DEADLINE_EXCEEDED,
    message="RayJob has passed the preRunningDeadlineSeconds: 600",
)


@pytest.mark.parametrize(
    ("pod_status", "container", "code"),
    [
        (None, "ray-worker", ErrorCode.UNSCHEDULABLE),
        (unschedulable_status(), "ray-worker", ErrorCode.UNSCHEDULABLE),
        (image_pull_status("ray-head", IMAGE), "ray-head", ErrorCode.IMAGE_PULL_BACK_OFF),
        (crash_loop_status("ray-head", IMAGE, HEAD), "ray-head", ErrorCode.CRASH_LOOP_BACK_OFF),
        (config_error_status("ray-worker", IMAGE, "s3-creds"), "ray-worker", ErrorCode.CREATE_CONTAINER_CONFIG_ERROR),
        (oom_restarted_status("ray-head", IMAGE), "ray-head", ErrorCode.OUT_OF_MEMORY),
    ],
    ids=["no-diagnosis", "unschedulable", "image-pull", "crash-loop", "config-error", "oom"],
)
def test_a_passed_startup_deadline_fails_for_good_naming_what_the_pods_showed(
    pod_status: dict[str, Any] | None, container: str, code: str
) -> None:
    the_job = job(startupDeadlineSeconds=600, backoffLimit=3)
    waiting = created(the_job)
    problems: list[PodProblem] = []
    if pod_status is not None:
        problems = diagnose_pods([pod(HEAD, pod_status, container=container)], namespace=NS)
        waiting = step(the_job, waiting, at(300), rayjob("Initializing"), pods=problems).status
    # KubeRay failed the RayJob; its pods are already gone when the operator looks (KubeRay deletes the cluster).
    failed = step(the_job, waiting, at(700), KUBERAY_DEADLINE, pods=[]).status
    assert failed.phase == "Failed"
    assert failed.error is not None
    assert (failed.error.code, failed.error.retryable) == (code, False)
    assert failed.error.message.startswith("RayJob has passed the preRunningDeadlineSeconds: 600")
    if problems:
        assert failed.error.message.endswith("; " + summarize(problems)[1])
    assert failed.attempt == 1  # not retried


def test_the_operator_enforces_the_startup_deadline_when_kuberay_ignores_it() -> None:
    # KubeRay before 1.6 drops preRunningDeadlineSeconds: the RayJob stays Initializing.
    the_job = job(startupDeadlineSeconds=600)
    previous = created(the_job)
    stuck = rayjob("Initializing", startTime=stamp(NOW))
    early = step(the_job, previous, at(600 + STARTUP_DEADLINE_GRACE_SECONDS - 1), stuck)
    assert (early.status.phase, early.delete_rayjob) == ("Initializing", None)
    late = step(the_job, early.status, at(600 + STARTUP_DEADLINE_GRACE_SECONDS), stuck)
    assert late.status.phase == "Failed"
    assert late.status.error is not None
    assert (late.status.error.code, late.status.error.retryable) == (ErrorCode.UNSCHEDULABLE, False)
    assert "startupDeadlineSeconds=600" in late.status.error.message
    assert late.delete_rayjob == "j-a1"


def test_the_operator_backstop_ignores_queued_and_running_rayjobs() -> None:
    the_job = job(startupDeadlineSeconds=60)
    previous = created(the_job)
    much_later = at(3600)
    suspended = rayjob("Suspended", suspend=True, startTime=stamp(NOW))
    driver_pending = rayjob("Running", "PENDING", startTime=stamp(NOW))
    assert step(the_job, previous, much_later, suspended).status.phase == "Pending"
    assert step(the_job, previous, much_later, driver_pending).status.phase == "Initializing"


# ---------------------------------------------------------------------------------------------------- stall


def running(the_job: SFTJob, since: dt.datetime) -> SFTJobStatus:
    """The status of attempt 1, Initializing from `since` and Running after it."""
    status = step(the_job, created(the_job), since, rayjob("Initializing")).status
    return step(the_job, status, since + dt.timedelta(seconds=5), rayjob("Running", "RUNNING")).status


RUNNING_RAYJOB = rayjob("Running", "RUNNING")


def test_a_frozen_progress_file_stalls_the_attempt_and_starts_the_next() -> None:
    the_job = job(stallTimeoutSeconds=600, backoffLimit=2)
    status = running(the_job, NOW)
    last_write = at(100)
    fine = step(the_job, status, at(100 + 599), RUNNING_RAYJOB, snapshot=progress(last_write))
    assert (fine.status.phase, fine.delete_rayjob, fine.create_attempt) == ("Running", None, None)
    assert ErrorCode.STALLED not in conditions(fine.status)

    stalled = step(the_job, fine.status, at(100 + 600), RUNNING_RAYJOB, snapshot=progress(last_write))
    assert stalled.delete_rayjob == "j-a1"
    assert stalled.create_attempt == 2
    assert (stalled.status.phase, stalled.status.attempt) == ("Pending", 2)
    assert stalled.status.error is not None
    assert (stalled.status.error.code, stalled.status.error.retryable) == (ErrorCode.STALLED, True)
    state, reason, message = conditions(stalled.status)[ErrorCode.STALLED]
    assert (state, reason) == ("True", ErrorCode.STALLED)
    assert message == (
        "attempt 1's trainer has not updated progress.json for 10m0s (stallTimeoutSeconds=600; "
        "last update 2026-05-01T12:01:40Z, phase Running, step 10); its RayJob was stopped"
    )
    assert [(e.type, e.reason) for e in stalled.events] == [("Warning", "Retrying"), ("Warning", ErrorCode.STALLED)]
    assert [(r.attempt, r.result, r.reason) for r in stalled.status.attempts] == [
        (1, "Failed", ErrorCode.STALLED),
        (2, "Running", None),
    ]


def test_the_stalled_condition_clears_once_the_next_attempt_writes_progress() -> None:
    the_job = job(stallTimeoutSeconds=60)
    stalled = step(the_job, running(the_job, NOW), at(200), RUNNING_RAYJOB, snapshot=progress(at(100))).status
    assert conditions(stalled)[ErrorCode.STALLED][0] == "True"
    initializing = step(the_job, stalled, at(210), rayjob("Initializing")).status
    # The old attempt's file is still there: nothing is judged, the condition stays.
    old_file = step(the_job, initializing, at(400), RUNNING_RAYJOB, snapshot=progress(at(100))).status
    assert (old_file.phase, old_file.attempt, conditions(old_file)[ErrorCode.STALLED][0]) == ("Running", 2, "True")
    fresh = step(the_job, old_file, at(420), RUNNING_RAYJOB, snapshot=progress(at(415), attempt=2)).status
    assert conditions(fresh)[ErrorCode.STALLED] == ("False", Reason.PROGRESSING, "")
    assert fresh.phase == "Running"


def test_a_stall_with_no_retries_left_fails_the_job_and_stops_its_rayjob() -> None:
    the_job = job(stallTimeoutSeconds=60, backoffLimit=0)
    stalled = step(the_job, running(the_job, NOW), at(200), RUNNING_RAYJOB, snapshot=progress(at(100)))
    assert stalled.status.phase == "Failed"
    assert stalled.status.error is not None and stalled.status.error.code == ErrorCode.STALLED
    assert stalled.status.error.message.endswith("(backoffLimit 0 reached)")
    assert stalled.delete_rayjob == "j-a1"
    assert [e.reason for e in stalled.events] == [ErrorCode.STALLED, "Failed"]


@pytest.mark.parametrize(
    ("snapshot", "why"),
    [
        (None, "progress.json was not read this time"),
        (ProgressSnapshot(problem="AccessDenied"), "progress.json could not be read"),
        (progress(at(100), attempt=2), "another attempt's file"),
        (progress(NOW - dt.timedelta(hours=2)), "written before the attempt started running (a resume)"),
        (progress(at(100), phase="Exporting"), "exporting"),
    ],
)
def test_nothing_is_judged_stalled_without_a_write_of_the_running_trainer(
    snapshot: ProgressSnapshot | None, why: str
) -> None:
    the_job = job(stallTimeoutSeconds=60)
    derivation = step(the_job, running(the_job, NOW), at(3600), RUNNING_RAYJOB, snapshot=snapshot)
    assert derivation.create_attempt is None, why
    assert derivation.delete_rayjob is None, why
    assert ErrorCode.STALLED not in conditions(derivation.status), why


def test_without_a_stall_timeout_nothing_stalls() -> None:
    the_job = job()
    derivation = step(the_job, running(the_job, NOW), at(86400), RUNNING_RAYJOB, snapshot=progress(at(100)))
    assert (derivation.status.phase, derivation.create_attempt) == ("Running", None)


# --------------------------------------------------------------------------------- failures named by the pods


def test_an_unreported_death_of_an_oom_killed_worker_is_out_of_memory() -> None:
    the_job = job(backoffLimit=3)
    oom = diagnose_pods([pod(WORKER, oom_restarted_status("ray-worker", IMAGE))], namespace=NS)
    seen = step(the_job, running(the_job, NOW), at(100), RUNNING_RAYJOB, pods=oom).status
    failed = step(the_job, seen, at(130), rayjob("Failed", reason="AppFailed", message="Job entrypoint failed"))
    assert failed.status.error is not None
    assert failed.status.error.code == ErrorCode.OUT_OF_MEMORY
    assert failed.status.error.retryable is False  # retryOnOutOfMemory is off
    assert failed.status.error.message == "Job entrypoint failed; " + summarize(oom)[1]
    assert failed.status.phase == "Failed"


def test_a_crash_loop_is_appended_to_a_retried_worker_crash() -> None:
    the_job = job(backoffLimit=3)
    crash = diagnose_pods([pod(WORKER, crash_loop_status("ray-worker", IMAGE, WORKER))], namespace=NS)
    seen = step(the_job, running(the_job, NOW), at(100), RUNNING_RAYJOB, pods=crash).status
    failed = step(the_job, seen, at(130), rayjob("Failed", reason="AppFailed", message="Job entrypoint failed"))
    assert failed.status.error is not None
    assert (failed.status.error.code, failed.create_attempt) == ("WorkerCrashed", 2)
    assert failed.status.error.message == "AppFailed: Job entrypoint failed; " + summarize(crash)[1]
