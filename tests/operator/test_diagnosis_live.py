"""Pod diagnosis, the startup deadline and stall detection with the operator running against the emulator.

The tests play KubeRay (RayJob status, and the pods of its cluster, labelled from the RayJob's pod templates), the
scheduler and the kubelet (pod status in the shapes of tests/support/kmock_realistic.py), and the trainer
(progress.json in a temporary directory). The progress timer runs every 0.2 s here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sftjob_api.codes import ErrorCode, Reason
from sftjob_operator.kuberay_state import FailureReason
from support.kmock_realistic import (
    config_error_status,
    crash_loop_status,
    healthy_status,
    image_pull_status,
    oom_restarted_status,
    ray_pod,
    unschedulable_status,
)
from support.operator_env import Api, OutputWriter, make_sftjob, wait_for

NS = "ml"
IMAGE = "ghcr.io/sftjob/sftjob-trainer:0.1.0"


async def status_of(api: Api, name: str) -> dict[str, Any]:
    body = await api.get_sftjob(NS, name)
    return (body or {}).get("status") or {}


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), None)


async def condition_where(api: Api, name: str, ctype: str, state: str, reason: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = condition(await status_of(api, name), ctype)
        return found if found and (found["status"], found["reason"]) == (state, reason) else None

    return await wait_for(probe, timeout=15, what=f"{name}: {ctype}={state} ({reason})")


async def events_of(api: Api, name: str) -> list[dict[str, Any]]:
    return [e for e in await api.events(NS) if e["involvedObject"]["name"] == name]


async def play_pods(api: Api, rayjob: dict[str, Any], pods: list[tuple[str, str, str, dict[str, Any]]]) -> None:
    """Create the RayJob's pods (as KubeRay would) and write their status (as the scheduler and kubelet would)."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    for name, node_type, container, status in pods:
        group = cluster["headGroupSpec"] if node_type == "head" else cluster["workerGroupSpecs"][0]
        labels = group["template"]["metadata"]["labels"]
        body = ray_pod(name, NS, labels, container=container, image=IMAGE, memory="16Gi", node_type=node_type)
        await asyncio.to_thread(api.core.create_namespaced_pod, NS, body)
        await asyncio.to_thread(api.core.patch_namespaced_pod_status, name, NS, {"status": status})


def pod_name(job: str, role: str) -> str:
    return (
        f"{job}-a1-raycluster-x7k2p-head-8xk2q" if role == "head" else f"{job}-a1-raycluster-x7k2p-workers-worker-4lq9z"
    )


# One job per pod state: (job, node type, container, pod status, reason, words the message must hold).
STATES = [
    ("sched", "worker", "ray-worker", unschedulable_status(), ErrorCode.UNSCHEDULABLE, "2 Insufficient nvidia.com/gpu"),
    ("pull", "head", "ray-head", image_pull_status("ray-head", "reg.example/x:bad"), ErrorCode.IMAGE_PULL_BACK_OFF,
     "x:bad"),
    ("crash", "worker", "ray-worker", None, ErrorCode.CRASH_LOOP_BACK_OFF, "kubectl logs -n ml"),
    ("oom", "worker", "ray-worker", oom_restarted_status("ray-worker", IMAGE), Reason.OOM_KILLED, "memoryPerWorker"),
    (
        "secret",
        "worker",
        "ray-worker",
        config_error_status("ray-worker", IMAGE, "s3"),
        ErrorCode.CREATE_CONTAINER_CONFIG_ERROR,
        "s3",
    ),
]


async def test_each_pod_state_appears_on_the_sftjob_with_its_reason(
    k8s: Any, api: Api, operator: Any, tmp_path: Path
) -> None:
    async with operator():
        for job, *_ in STATES:
            await api.create_sftjob(make_sftjob(job, output_uri=str(tmp_path)))
        for job, node_type, container, status, reason, _ in STATES:
            rayjob = await wait_for(lambda job=job: api.get_rayjob(NS, f"{job}-a1"), what=f"{job}-a1")
            running = reason == Reason.OOM_KILLED
            ray_status = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"} if running else {}
            await api.play_kuberay(NS, f"{job}-a1", ray_status or {"jobDeploymentStatus": "Initializing"})
            name = pod_name(job, node_type)
            status = status or crash_loop_status(container, IMAGE, name)
            head = (pod_name(job, "head"), "head", "ray-head", healthy_status("ray-head", IMAGE))
            await play_pods(
                api, rayjob, [(name, node_type, container, status)] + ([head] if node_type != "head" else [])
            )
        found = {}
        for job, *_, reason, _ in STATES:
            found[job] = await condition_where(api, job, Reason.PODS_HEALTHY, "False", reason)
        # Several more looks at the same pods: the event is not repeated.
        await asyncio.sleep(1.0)
        for job, *_ in STATES:
            await wait_for(lambda job=job: _warning_posted(api, job), what=f"{job}: its Warning event")
        events = {job: await events_of(api, job) for job, *_ in STATES}

    for job, node_type, container, _, reason, words in STATES:
        message = found[job]["message"]
        where = f"pod {pod_name(job, node_type)}"
        where += f" container {container}" if reason != ErrorCode.UNSCHEDULABLE else ""
        assert message.startswith(f"{where}: {reason}: "), message
        assert words in message, message
        warnings = [(e["type"], e["reason"], e["message"]) for e in events[job] if e["reason"] == reason]
        assert warnings == [("Warning", reason, message)], warnings
    # Only each job's own pods were looked at: the healthy head pods of the others raise nothing.
    assert "also:" not in found["sched"]["message"]


async def _warning_posted(api: Api, job: str) -> bool:
    reasons = {e["reason"] for e in await events_of(api, job) if e["type"] == "Warning"}
    return bool(
        reasons & {ErrorCode.UNSCHEDULABLE, ErrorCode.IMAGE_PULL_BACK_OFF, ErrorCode.CRASH_LOOP_BACK_OFF,
                   Reason.OOM_KILLED, ErrorCode.CREATE_CONTAINER_CONFIG_ERROR}
    )


async def test_a_problem_that_clears_turns_the_condition_true(
    k8s: Any, api: Api, operator: Any, tmp_path: Path
) -> None:
    async with operator():
        await api.create_sftjob(make_sftjob("heal", output_uri=str(tmp_path)))
        rayjob = await wait_for(lambda: api.get_rayjob(NS, "heal-a1"), what="heal-a1")
        await api.play_kuberay(NS, "heal-a1", {"jobDeploymentStatus": "Initializing"})
        name = pod_name("heal", "head")
        await play_pods(api, rayjob, [(name, "head", "ray-head", image_pull_status("ray-head", IMAGE))])
        await condition_where(api, "heal", Reason.PODS_HEALTHY, "False", ErrorCode.IMAGE_PULL_BACK_OFF)
        # The registry answers again: the kubelet pulls and starts the container.
        await asyncio.to_thread(
            api.core.patch_namespaced_pod_status, name, NS, {"status": healthy_status("ray-head", IMAGE)}
        )
        healed = await condition_where(api, "heal", Reason.PODS_HEALTHY, "True", "Healthy")
    assert healed["message"] == ""


async def test_a_startup_deadline_fails_the_job_naming_what_the_pods_showed(
    k8s: Any, api: Api, operator: Any, tmp_path: Path
) -> None:
    job = make_sftjob("late", output_uri=str(tmp_path), runPolicy={"startupDeadlineSeconds": 600, "backoffLimit": 3})
    async with operator():
        await api.create_sftjob(job)
        rayjob = await wait_for(lambda: api.get_rayjob(NS, "late-a1"), what="late-a1")
        await api.play_kuberay(NS, "late-a1", {"jobDeploymentStatus": "Initializing"})
        name = pod_name("late", "worker")
        await play_pods(api, rayjob, [(name, "worker", "ray-worker", unschedulable_status())])
        seen = await condition_where(api, "late", Reason.PODS_HEALTHY, "False", ErrorCode.UNSCHEDULABLE)
        # KubeRay's pre-running deadline passes: it fails the RayJob and deletes the cluster with its pods.
        await asyncio.to_thread(api.core.delete_namespaced_pod, name, NS)
        kuberay = {
            "jobDeploymentStatus": "Failed",
            "reason": FailureReason.PRE_RUNNING_DEADLINE_EXCEEDED,
            "message": "RayJob has passed the preRunningDeadlineSeconds: 600",
        }
        await api.play_kuberay(NS, "late-a1", kuberay)
        status = await wait_for(lambda: _status_in(api, "late", "Failed"), timeout=15, what="late: Failed")
        await wait_for(lambda: _has_event(api, "late", "Failed"), what="late: the Failed event")
        events = await events_of(api, "late")
        await asyncio.sleep(0.6)  # a few more timer ticks: nothing more happens
        rayjobs = await api.list_rayjobs(NS, "sftjob.dev/name=late")

    assert rayjob["spec"]["preRunningDeadlineSeconds"] == 600
    assert status["error"]["code"] == ErrorCode.UNSCHEDULABLE
    assert status["error"]["retryable"] is False
    assert status["error"]["message"] == f"RayJob has passed the preRunningDeadlineSeconds: 600; {seen['message']}"
    assert condition(status, "Failed")["reason"] == ErrorCode.UNSCHEDULABLE
    assert condition(status, Reason.PODS_HEALTHY)["status"] == "False"  # the pods' last word stays on the failed job
    assert status["attempt"] == 1
    assert [r["metadata"]["name"] for r in rayjobs] == ["late-a1"]  # not retried
    failed = [e["message"] for e in events if e["reason"] == "Failed"]
    assert failed == [f"Unschedulable: {status['error']['message']}"]


async def _status_in(api: Api, name: str, phase: str) -> dict[str, Any] | None:
    status = await status_of(api, name)
    return status if status.get("phase") == phase else None


async def _has_event(api: Api, name: str, reason: str) -> bool:
    return any(e["reason"] == reason for e in await events_of(api, name))


async def test_a_frozen_progress_file_stalls_the_attempt_and_retries_it(
    k8s: Any, api: Api, operator: Any, tmp_path: Path
) -> None:
    job = make_sftjob("hung", output_uri=str(tmp_path), runPolicy={"stallTimeoutSeconds": 2, "backoffLimit": 1})
    out = OutputWriter(f"{tmp_path}/{NS}/hung")
    async with operator():
        await api.create_sftjob(job)
        await wait_for(lambda: api.get_rayjob(NS, "hung-a1"), what="hung-a1")
        await api.play_kuberay(NS, "hung-a1", {"jobDeploymentStatus": "Initializing"})
        await wait_for(lambda: _status_in(api, "hung", "Initializing"), what="hung: Initializing")
        await api.play_kuberay(NS, "hung-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        # The trainer writes once, then hangs (a stuck collective): progress.json never changes again.
        await out.progress(attempt=1, step=7, total=100, loss=1.9)
        frozen_at = time.monotonic()
        stalled = await condition_where(api, "hung", ErrorCode.STALLED, "True", ErrorCode.STALLED)
        waited = time.monotonic() - frozen_at
        second = await wait_for(lambda: api.get_rayjob(NS, "hung-a2"), what="the RayJob of attempt 2")
        first = await api.get_rayjob(NS, "hung-a1")
        status = await status_of(api, "hung")
        await wait_for(lambda: _has_event(api, "hung", ErrorCode.STALLED), what="hung: the Stalled event")

        # Attempt 2 starts and its trainer writes progress: the job runs on, the condition clears.
        await api.play_kuberay(NS, "hung-a2", {"jobDeploymentStatus": "Initializing"})
        await wait_for(lambda: _status_in(api, "hung", "Initializing"), what="hung: attempt 2 Initializing")
        await api.play_kuberay(NS, "hung-a2", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})

        async def trainer_writes() -> dict[str, Any] | None:
            await out.progress(attempt=2, step=9, total=100, loss=1.7, resumedFromStep=5)
            found = condition(await status_of(api, "hung"), ErrorCode.STALLED)
            return found if found and found["status"] == "False" else None

        cleared = await wait_for(trainer_writes, interval=0.2, timeout=15, what="hung: Stalled=False")
        after = await status_of(api, "hung")
        events = await events_of(api, "hung")

    assert waited >= 1.0  # 2 s after the write (updatedAt has whole seconds), not at once
    assert first is None  # attempt 1's RayJob was stopped (deleted)
    assert second["metadata"]["labels"]["sftjob.dev/attempt"] == "2"
    assert status["attempt"] == 2
    assert status["error"]["code"] == ErrorCode.STALLED
    assert [(a["attempt"], a["result"], a.get("reason")) for a in status["attempts"]] == [
        (1, "Failed", ErrorCode.STALLED),
        (2, "Running", None),
    ]
    assert stalled["message"].startswith("attempt 1's trainer has not updated progress.json for ")
    assert "stallTimeoutSeconds=2;" in stalled["message"] and "step 7" in stalled["message"]
    assert (cleared["reason"], after["phase"], after["attempt"]) == (Reason.PROGRESSING, "Running", 2)
    assert [e["message"] for e in events if e["reason"] == ErrorCode.STALLED] == [stalled["message"]]
    retrying = [e["message"] for e in events if e["reason"] == "Retrying"]
    assert len(retrying) == 1 and retrying[0].startswith("attempt 1 failed (Stalled: attempt 1's trainer")
    assert k8s.count_writes("create", "rayjobs") == 2


async def test_a_forbidden_pod_list_leaves_the_job_running_undiagnosed(
    k8s: Any, api: Api, operator: Any, tmp_path: Path, caplog: Any
) -> None:
    # A chart older than the operator grants no `list pods`: the API server answers 403 every time.
    k8s.inject_fault("list", "pods", status=403, times=1000)
    async with operator():
        await api.create_sftjob(make_sftjob("blind", output_uri=str(tmp_path)))
        rayjob = await wait_for(lambda: api.get_rayjob(NS, "blind-a1"), what="blind-a1")
        await api.play_kuberay(NS, "blind-a1", {"jobDeploymentStatus": "Initializing"})
        name = pod_name("blind", "worker")
        await play_pods(api, rayjob, [(name, "worker", "ray-worker", unschedulable_status())])
        await wait_for(lambda: _status_in(api, "blind", "Initializing"), what="blind: Initializing")
        await asyncio.sleep(1.0)  # five timer ticks, each refused
        status = await status_of(api, "blind")

    assert status["phase"] == "Initializing"
    assert condition(status, Reason.PODS_HEALTHY) is None
    refused = [r.getMessage() for r in caplog.records if "cannot list the pods" in r.getMessage()]
    assert refused == ["ml/blind: cannot list the pods of attempt 1: 403 Forbidden"]
