"""The operator running against the realistic emulator fed the real CRDs; the tests play KubeRay and the trainer.

Each test runs the operator in its own event loop (`async with operator(...)`), creates SFTJobs
through the API, patches RayJob status as KubeRay would, and writes progress.json/manifest.json
where the trainer would (moto's S3 server or a temporary directory). Waits poll with timeouts;
the progress timer runs every 0.2 s here (30 s by default).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.operator_env import Api, OutputWriter, make_sftjob, wait_for

NS = "ml"


async def status_where(
    api: Api, name: str, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10
) -> dict[str, Any]:
    """Wait until the SFTJob's status satisfies `check`; return the status."""

    async def probe() -> dict[str, Any] | None:
        body = await api.get_sftjob(NS, name)
        status = (body or {}).get("status") or {}
        return status if status and check(status) else None

    return await wait_for(probe, timeout=timeout, what=f"{name}: {what}")


async def events_of(api: Api, name: str) -> list[dict[str, Any]]:
    return [e for e in await api.events(NS) if e["involvedObject"]["name"] == name]


async def reasons_of(api: Api, name: str) -> list[str]:
    return [e["reason"] for e in await events_of(api, name)]


async def _has_reasons(api: Api, name: str, reasons: set[str]) -> bool:
    return reasons <= set(await reasons_of(api, name))


def env_of(rayjob: dict[str, Any]) -> dict[str, str]:
    container = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def status_writes(k8s: Any, name: str) -> int:
    return sum(1 for w in k8s.writes if w.plural == "sftjobs" and w.subresource == "status" and w.name == name)


# ------------------------------------------------------------------------------------------------ tests


async def test_create_makes_one_rayjob_owned_by_the_sftjob(k8s: Any, api: Api, operator: Any, tmp_path: Path) -> None:
    async with operator():
        created = await api.create_sftjob(make_sftjob("demo", output_uri=str(tmp_path)))
        rayjob = await wait_for(lambda: api.get_rayjob(NS, "demo-a1"), what="the RayJob of attempt 1")
        status = await status_where(api, "demo", lambda s: s.get("attempt") == 1, "attempt 1 recorded")
        # Kopf posts events from a background queue that stops with the operator: wait for them here.
        await wait_for(
            lambda: _has_reasons(api, "demo", {"Validated", "RayJobCreated"}), what="Validated and RayJobCreated"
        )

    owner = rayjob["metadata"]["ownerReferences"]
    assert owner == [
        {
            "apiVersion": "sftjob.dev/v1alpha1",
            "kind": "SFTJob",
            "name": "demo",
            "uid": created["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert rayjob["metadata"]["labels"]["sftjob.dev/name"] == "demo"
    assert rayjob["metadata"]["labels"]["sftjob.dev/attempt"] == "1"
    assert env_of(rayjob)["SFTJOB_ATTEMPT"] == "1"
    assert json.loads(env_of(rayjob)["SFTJOB_CONFIG"])["metadata"] == {"name": "demo", "namespace": NS}
    assert status["phase"] == "Pending"
    assert status["rayJob"]["name"] == "demo-a1"
    assert status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Validated"] == "True"
    # Kopf's bookkeeping lives in annotations, never in the status.
    body = await api.get_sftjob(NS, "demo")
    assert "sftjob.dev/last-handled-configuration" in body["metadata"]["annotations"]
    assert "kopf" not in body["status"]
    assert k8s.count_writes("create", "rayjobs") == 1


async def test_running_progress_then_success_with_s3_output(k8s: Any, api: Api, operator: Any, s3_server: Any) -> None:
    bucket = s3_server.create_bucket("sft-out")
    await api.create_secret(
        NS,
        "s3-creds",
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": s3_server.endpoint,
            "AWS_REGION": "us-east-1",
        },
    )
    job = make_sftjob(
        "chat", output_uri=f"{bucket}/runs", output={"uri": f"{bucket}/runs", "secretRef": {"name": "s3-creds"}}
    )
    out = OutputWriter(f"{bucket}/runs/{NS}/chat", s3_server.client())
    async with operator():
        await api.create_sftjob(job)
        await wait_for(lambda: api.get_rayjob(NS, "chat-a1"), what="RayJob")
        await api.play_kuberay(NS, "chat-a1", {"jobDeploymentStatus": "Initializing"})
        await status_where(api, "chat", lambda s: s["phase"] == "Initializing", "Initializing")

        await api.play_kuberay(NS, "chat-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        checkpoint = {"step": 20, "uri": f"{bucket}/runs/{NS}/chat/checkpoints/step-20", "evalLoss": 1.2}
        await out.progress(
            step=25, total=100, loss=1.5, checkpoints=[checkpoint], estimatedFinishTime="2099-01-01T00:00:00Z"
        )
        status = await status_where(
            api,
            "chat",
            lambda s: s["phase"] == "Running" and (s.get("progress") or {}).get("step") == 25,
            "Running at step 25",
        )
        assert status["progress"]["percentage"] == 25.0
        assert status["progress"]["totalSteps"] == 100
        assert status["metrics"]["trainLoss"] == 1.5
        assert status["bestCheckpoint"]["step"] == 20
        assert status["startTime"]
        assert "output" not in status  # no manifest.json yet

        # Nothing changes for several timer ticks: no status write.
        writes = status_writes(k8s, "chat")
        await asyncio.sleep(1.0)
        assert status_writes(k8s, "chat") == writes

        await out.progress(phase="Succeeded", step=100, total=100, loss=0.9)
        await out.manifest()
        await api.play_kuberay(NS, "chat-a1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
        status = await status_where(api, "chat", lambda s: s["phase"] == "Succeeded", "Succeeded")

    base = f"{bucket}/runs/{NS}/chat"
    assert status["output"] == {"uri": base, "adapterUri": f"{base}/adapter", "manifestUri": f"{base}/manifest.json"}
    assert status["completionTime"]
    assert status["progress"]["step"] == 100
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    reasons = await reasons_of(api, "chat")
    assert {"Running", "CheckpointSaved", "Succeeded"} <= set(reasons)


async def test_retryable_failure_starts_attempt_two_that_resumes(api: Api, operator: Any, tmp_path: Path) -> None:
    out = OutputWriter(f"{tmp_path}/{NS}/flaky")
    async with operator():
        await api.create_sftjob(make_sftjob("flaky", output_uri=str(tmp_path)))
        await wait_for(lambda: api.get_rayjob(NS, "flaky-a1"), what="RayJob a1")
        await api.play_kuberay(NS, "flaky-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        await out.progress(
            step=20, total=100, loss=1.4, checkpoints=[{"step": 20, "uri": f"{out.base}/checkpoints/step-20"}]
        )
        await status_where(api, "flaky", lambda s: (s.get("progress") or {}).get("step") == 20, "step 20")
        # The node under a worker is lost: the trainer reports nothing, KubeRay reports the job failed.
        await api.play_kuberay(
            NS, "flaky-a1", {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}
        )
        a2 = await wait_for(lambda: api.get_rayjob(NS, "flaky-a2"), what="RayJob a2")
        assert env_of(a2)["SFTJOB_ATTEMPT"] == "2"
        assert json.loads(env_of(a2)["SFTJOB_CONFIG"])["spec"]["checkpointing"]["resumeFrom"] == "latest"

        await api.play_kuberay(NS, "flaky-a2", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        await out.progress(attempt=2, step=30, total=100, loss=1.3, resumedFromStep=20)
        status = await status_where(
            api, "flaky", lambda s: s["phase"] == "Running" and s["progress"]["step"] == 30, "attempt 2 running"
        )

    assert status["attempt"] == 2
    first, second = status["attempts"]
    assert (first["attempt"], first["result"], first["reason"]) == (1, "Failed", "WorkerCrashed")
    assert (second["attempt"], second["result"], second["resumedFromStep"]) == (2, "Running", 20)
    assert "Retrying" in await reasons_of(api, "flaky")


async def test_non_retryable_failure_fails_at_once(api: Api, operator: Any, tmp_path: Path) -> None:
    out = OutputWriter(f"{tmp_path}/{NS}/baddata")
    async with operator():
        await api.create_sftjob(make_sftjob("baddata", output_uri=str(tmp_path)))
        await wait_for(lambda: api.get_rayjob(NS, "baddata-a1"), what="RayJob")
        error = {"code": "InvalidDataset", "message": "train.jsonl:3: not JSON", "field": "train.jsonl:3"}
        await out.progress(phase="Failed", error=error)
        await api.play_kuberay(
            NS, "baddata-a1", {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}
        )
        status = await status_where(api, "baddata", lambda s: s["phase"] == "Failed", "Failed")
        await asyncio.sleep(0.5)  # a few timer ticks: still no second attempt
        assert await api.get_rayjob(NS, "baddata-a2") is None

    assert status["error"]["code"] == "InvalidDataset"
    assert status["error"]["retryable"] is False
    assert "Failed" in await reasons_of(api, "baddata")


async def test_invalid_spec_fails_without_rayjob_until_fixed(k8s: Any, api: Api, operator: Any, tmp_path: Path) -> None:
    # The CRD's schema accepts it (the emulator checks the schema, not CEL); the operator's checks do not.
    job = make_sftjob("broken", output_uri=str(tmp_path), method={"type": "qlora"})
    async with operator():
        await api.create_sftjob(job)
        status = await status_where(api, "broken", lambda s: s["phase"] == "Failed", "Failed")
        writes = status_writes(k8s, "broken")
        await asyncio.sleep(0.6)
        assert status_writes(k8s, "broken") == writes, "a permanent error is not retried"
        assert await api.list_rayjobs(NS, "sftjob.dev/name=broken") == []
        events = await events_of(api, "broken")

        await api.patch_sftjob(NS, "broken", {"spec": {"method": {"quantization": {"bits": 4}}}})
        await wait_for(lambda: api.get_rayjob(NS, "broken-a1"), what="RayJob after the fix")
        fixed = await status_where(api, "broken", lambda s: s["phase"] == "Pending", "Pending after the fix")

    assert status["error"]["code"] == "InvalidSpec"
    assert status["error"]["field"] == "spec.method.quantization"
    assert "qlora needs quantization" in status["error"]["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Validated"]["status"], conditions["Validated"]["reason"]) == ("False", "InvalidSpec")
    assert any(e["type"] == "Warning" and "InvalidSpec" in e["message"] for e in events)
    assert "error" not in fixed and fixed["observedGeneration"] == 2


async def test_suspend_and_resume(api: Api, operator: Any, tmp_path: Path) -> None:
    async with operator():
        await api.create_sftjob(make_sftjob("paused", output_uri=str(tmp_path), runPolicy={"suspend": True}))
        rayjob = await wait_for(lambda: api.get_rayjob(NS, "paused-a1"), what="RayJob")
        assert rayjob["spec"]["suspend"] is True
        await api.play_kuberay(NS, "paused-a1", {"jobDeploymentStatus": "Suspended"})
        await status_where(api, "paused", lambda s: s["phase"] == "Suspended", "Suspended")

        await api.patch_sftjob(NS, "paused", {"spec": {"runPolicy": {"suspend": False}}})
        await wait_for(lambda: _rayjob_suspend_is(api, "paused-a1", False), what="the RayJob resumed")
        await api.play_kuberay(NS, "paused-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        await status_where(api, "paused", lambda s: s["phase"] == "Running", "Running")

        # Suspending a running job suspends its RayJob; the attempt stays the same.
        await api.patch_sftjob(NS, "paused", {"spec": {"runPolicy": {"suspend": True}}})
        await wait_for(lambda: _rayjob_suspend_is(api, "paused-a1", True), what="the RayJob suspended")
        status = await status_where(api, "paused", lambda s: s["phase"] == "Suspended", "Suspended again")

    assert status["attempt"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Suspended"] == "True"
    assert {"Suspended", "Resumed", "Running"} <= set(await reasons_of(api, "paused"))


async def _rayjob_suspend_is(api: Api, name: str, value: bool) -> bool:
    rayjob = await api.get_rayjob(NS, name)
    return rayjob is not None and rayjob["spec"].get("suspend") is value


async def test_deadline_fails_the_job_and_stops_its_rayjob(api: Api, operator: Any, tmp_path: Path) -> None:
    async with operator():
        await api.create_sftjob(make_sftjob("slow", output_uri=str(tmp_path), runPolicy={"activeDeadlineSeconds": 1}))
        rayjob = await wait_for(lambda: api.get_rayjob(NS, "slow-a1"), what="RayJob")
        assert rayjob["spec"]["activeDeadlineSeconds"] == 1
        await api.play_kuberay(NS, "slow-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        status = await status_where(api, "slow", lambda s: s["phase"] == "Failed", "Failed at the deadline", timeout=10)
        await wait_for(lambda: _gone(api, "slow-a1"), what="the RayJob deleted")

    assert status["error"]["code"] == "DeadlineExceeded"
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Failed"] == "DeadlineExceeded"


async def _gone(api: Api, rayjob: str) -> bool:
    return await api.get_rayjob(NS, rayjob) is None


async def test_delete_takes_the_rayjobs_along(api: Api, operator: Any, tmp_path: Path) -> None:
    async with operator():
        await api.create_sftjob(make_sftjob("doomed", output_uri=str(tmp_path)))
        await wait_for(lambda: api.get_rayjob(NS, "doomed-a1"), what="RayJob")
        await api.delete_sftjob(NS, "doomed")
        await wait_for(lambda: _sftjob_gone(api, "doomed"), what="the SFTJob deleted (finalizer released)")
        await wait_for(lambda: _gone(api, "doomed-a1"), what="the RayJob garbage-collected")


async def _sftjob_gone(api: Api, name: str) -> bool:
    return await api.get_sftjob(NS, name) is None


async def test_ttl_deletes_a_finished_job_and_keeps_its_artifacts(api: Api, operator: Any, tmp_path: Path) -> None:
    out = OutputWriter(f"{tmp_path}/{NS}/brief")
    async with operator():
        await api.create_sftjob(
            make_sftjob("brief", output_uri=str(tmp_path), runPolicy={"ttlSecondsAfterFinished": 0})
        )
        await wait_for(lambda: api.get_rayjob(NS, "brief-a1"), what="RayJob")
        await out.progress(phase="Succeeded", step=10, total=10)
        await out.manifest()
        await api.play_kuberay(NS, "brief-a1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
        await wait_for(lambda: _sftjob_gone(api, "brief"), what="the SFTJob deleted by its TTL")
        await wait_for(lambda: _gone(api, "brief-a1"), what="the RayJob garbage-collected")
    assert (Path(out.base) / "manifest.json").is_file()


async def test_restart_mid_job_creates_no_duplicate_and_status_continues(
    k8s: Any, api: Api, operator: Any, tmp_path: Path
) -> None:
    out = OutputWriter(f"{tmp_path}/{NS}/steady")
    async with operator():
        await api.create_sftjob(make_sftjob("steady", output_uri=str(tmp_path)))
        await wait_for(lambda: api.get_rayjob(NS, "steady-a1"), what="RayJob")
        await api.play_kuberay(NS, "steady-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        await out.progress(step=10, total=50)
        await status_where(api, "steady", lambda s: (s.get("progress") or {}).get("step") == 10, "step 10")

    # Progress goes on while no operator runs; then a new operator starts (and sees every object twice).
    await out.progress(step=30, total=50)
    async with operator():
        status = await status_where(api, "steady", lambda s: s["progress"]["step"] == 30, "step 30 after the restart")
        await asyncio.sleep(0.5)

    assert k8s.count_writes("create", "rayjobs") == 1
    assert [r["metadata"]["name"] for r in await api.list_rayjobs(NS, "sftjob.dev/name=steady")] == ["steady-a1"]
    assert status["phase"] == "Running" and status["attempt"] == 1
    assert (await reasons_of(api, "steady")).count("Running") == 1


async def test_api_faults_are_retried(k8s: Any, api: Api, operator: Any, tmp_path: Path) -> None:
    k8s.inject_fault("create", "rayjobs", status=503, times=2)
    k8s.inject_fault("update", "sftjobs", subresource="status", status=409, times=1)
    async with operator():
        await api.create_sftjob(make_sftjob("bumpy", output_uri=str(tmp_path)))
        await wait_for(lambda: api.get_rayjob(NS, "bumpy-a1"), what="RayJob despite two 503s")
        await status_where(api, "bumpy", lambda s: s.get("attempt") == 1, "status despite a 409")
        await asyncio.sleep(0.5)
    assert k8s.count_writes("create", "rayjobs") == 1


async def test_metrics_endpoint(api: Api, operator: Any, tmp_path: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with operator(metrics_port=port):
        await api.create_sftjob(make_sftjob("counted", output_uri=str(tmp_path)))
        await status_where(api, "counted", lambda s: s.get("attempt") == 1, "attempt 1")
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        )
    assert 'sftjob_jobs{phase="Pending"}' in text
    assert "sftjob_reconcile_duration_seconds_bucket" in text
    assert 'sftjob_kubernetes_api_requests_total{resource="rayjobs",verb="create"}' in text
    assert "sftjob_kubernetes_api_errors_total" in text


@pytest.mark.parametrize("leak_through", ["output", "model"])
async def test_a_planted_secret_never_appears(
    k8s: Any,
    api: Api,
    operator: Any,
    s3_env: Any,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    leak_through: str,
) -> None:
    # Without an output Secret (the "model" case) the operator reads S3 with its own environment (s3_env).
    s3_server = s3_env
    planted = "PLANTED-s3cr3t-9f8e7d6c5b4a"
    bucket = s3_server.create_bucket("sft-secret")
    await api.create_secret(
        NS,
        "creds",
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": planted,
            "HF_TOKEN": planted,
            "AWS_ENDPOINT_URL": s3_server.endpoint,
        },
    )
    caplog.set_level("DEBUG")  # from here on: every log line of the operator, Kopf and the clients
    ref = {"secretRef": {"name": "creds"}}
    spec: dict[str, Any] = {"output": {"uri": f"{bucket}/o", **(ref if leak_through == "output" else {})}}
    if leak_through == "model":
        spec["model"] = {"source": "hf://org/gated", **ref}
    out = OutputWriter(f"{bucket}/o/{NS}/hush", s3_server.client())
    async with operator():
        await api.create_sftjob(make_sftjob("hush", output_uri=f"{bucket}/o", **spec))
        await wait_for(lambda: api.get_rayjob(NS, "hush-a1"), what="RayJob")
        await api.play_kuberay(NS, "hush-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        await out.progress(step=5, total=10, loss=2.0)
        await status_where(
            api, "hush", lambda s: (s.get("progress") or {}).get("step") == 5, "progress read with the Secret"
        )
        await api.play_kuberay(
            NS, "hush-a1", {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "boom"}
        )
        await wait_for(lambda: api.get_rayjob(NS, "hush-a2"), what="a retry")

    rayjobs = await api.list_rayjobs(NS)
    body = await api.get_sftjob(NS, "hush")
    events = await events_of(api, "hush")
    text = json.dumps([rayjobs, body, events]) + caplog.text + "".join(capsys.readouterr())
    assert planted not in text
    assert base64.b64encode(planted.encode()).decode() not in text
    assert any(
        entry.get("secretRef", {}).get("name") == "creds"
        for entry in rayjobs[0]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
            "envFrom"
        ]
    )
    assert "runtimeEnvYAML" not in rayjobs[0]["spec"]
