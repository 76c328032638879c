"""Distillation in the operator: the trainer's `Generating` phase, `status.distillation`, the teacher's Secret.

Pure tests of derive_status and build_rayjob (a fixed clock, no I/O), then the operator against the realistic
emulator with progress.json in moto's S3: `Generating` (the teacher answers) and then `Running` (training).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest

from sftjob_api.codes import ErrorCode
from sftjob_api.progress import ProgressFile
from sftjob_api.types import SFTJob, SFTJobStatus, parse_sftjob
from sftjob_operator.progress_status import ProgressSnapshot
from sftjob_operator.rayjob import JUDGE_KEY_ENV, TEACHER_KEY_ENV, TEACHER_SECRET_KEY, build_rayjob
from sftjob_operator.settings import Settings
from sftjob_operator.status import Derivation, derive_status
from support.operator_env import Api, OutputWriter, make_sftjob, wait_for

NS = "ml"
TEACHER_SECRET = "teacher-key"  # the Secret's name, not a key
NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
STATS = {"uri": "s3://out/sft/ns/j/data/distilled.jsonl", "complete": True, "prompts": 10, "requests": 10,
         "responses": 10, "kept": 8, "dropped": {"wrong_answer": 1, "duplicate": 1}, "completionTokens": 420,
         "cache": "miss 0123456789ab"}


def distillation(secret_name: str | None = TEACHER_SECRET) -> dict[str, Any]:
    teacher: dict[str, Any] = {"endpoint": "http://vllm.llm.svc:8000/v1", "model": "Qwen/Qwen3-8B"}
    if secret_name is not None:
        teacher["secretRef"] = {"name": secret_name}
    return {"teacher": teacher, "prompts": {"uri": "s3://data/prompts.jsonl"}}


def job(secret_name: str | None = TEACHER_SECRET, **spec: Any) -> SFTJob:
    return parse_sftjob({
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": "u-1"},
        "spec": {"model": {"source": "hf://org/m"}, "dataset": {"train": {"uri": "distilled"}},
                 "output": {"uri": "s3://out/sft"}, "distillation": distillation(secret_name), **spec},
    })


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def rayjob(deployment: str, job_status: str = "") -> dict[str, Any]:
    status = {"jobDeploymentStatus": deployment, **({"jobStatus": job_status} if job_status else {})}
    return {"metadata": {"name": "j-a1"}, "spec": {"suspend": False}, "status": status}


def snapshot(phase: str, written: dt.datetime, **fields: Any) -> ProgressSnapshot:
    return ProgressSnapshot(progress=ProgressFile.model_validate(
        {"phase": phase, "attempt": 1, "updatedAt": stamp(written), **fields}))


def step(the_job: SFTJob, previous: SFTJobStatus, now: dt.datetime, ray: dict[str, Any] | None,
         seen: ProgressSnapshot | None = None) -> Derivation:
    return derive_status(the_job, previous, generation=1, now=now, rayjob=ray, snapshot=seen)


def running_condition(status: SFTJobStatus) -> tuple[str, str, str]:
    found = next(c for c in status.conditions if c.type == "Running")
    return found.status, found.reason, found.message


GENERATING = {"percentage": 40.0, "message": "answers: prompts 4/10, ETA 30s", "tokensPerSecond": 12.5,
              "estimatedFinishTime": stamp(at(130))}


def generating(the_job: SFTJob) -> Derivation:
    """Attempt 1 created, its Ray cluster up, the trainer generating at t=100."""
    created = step(the_job, SFTJobStatus(), NOW, None).status
    started = step(the_job, created, at(5), rayjob("Initializing")).status
    return step(the_job, started, at(100), rayjob("Running", "RUNNING"), snapshot("Generating", at(100), **GENERATING))


# ------------------------------------------------------------------------------------------------- status


def test_generating_is_a_phase_of_its_own_then_running_with_the_distillation_stats() -> None:
    the_job = job()
    gen = generating(the_job)
    status = gen.status
    assert status.phase == "Generating"
    assert running_condition(status) == ("True", "Generating", "answers: prompts 4/10, ETA 30s")
    assert status.progress is not None
    assert (status.progress.percentage, status.progress.tokens_per_second, status.progress.eta) == (40.0, 12.5, "30s")
    assert status.start_time == stamp(at(5))  # Initializing started it
    assert [(e.reason, e.message) for e in gen.events] == [
        ("Generating", "generating the training data with the teacher on RayJob j-a1")]

    training = step(the_job, status, at(200), rayjob("Running", "RUNNING"),
                    snapshot("Running", at(200), step=3, totalSteps=10, percentage=30.0, distillation=STATS))
    assert training.status.phase == "Running"
    assert running_condition(training.status)[:2] == ("True", "Running")
    assert training.status.distillation is not None
    wire = training.status.distillation.to_wire()
    assert {key: wire[key] for key in STATS} == STATS
    assert [e.reason for e in training.events] == ["Running"]
    # The Running condition did not flip between generating and training: one transition time.
    assert next(c for c in training.status.conditions if c.type == "Running").last_transition_time == stamp(at(5))


def test_a_reconcile_that_did_not_read_progress_keeps_generating() -> None:
    the_job = job()
    status = generating(the_job).status
    again = step(the_job, status, at(110), rayjob("Running", "RUNNING"), None)
    assert again.status.phase == "Generating"
    assert running_condition(again.status) == running_condition(status)
    assert again.events == []


def test_another_attempts_generating_file_is_not_this_attempts_phase() -> None:
    the_job = job()
    created = step(the_job, SFTJobStatus(), NOW, None).status
    old = ProgressSnapshot(progress=ProgressFile.model_validate(
        {"phase": "Generating", "attempt": 2, "updatedAt": stamp(at(50))}))
    assert step(the_job, created, at(60), rayjob("Running", "RUNNING"), old).status.phase == "Running"


def test_a_stalled_generation_is_stopped_and_retried_like_a_stalled_training() -> None:
    the_job = job(runPolicy={"stallTimeoutSeconds": 600, "backoffLimit": 1})
    status = generating(the_job).status
    quiet = snapshot("Generating", at(100), **GENERATING)
    fine = step(the_job, status, at(100 + 599), rayjob("Running", "RUNNING"), quiet)
    assert (fine.status.phase, fine.create_attempt) == ("Generating", None)
    stalled = step(the_job, fine.status, at(100 + 600), rayjob("Running", "RUNNING"), quiet)
    assert (stalled.delete_rayjob, stalled.create_attempt, stalled.status.phase) == ("j-a1", 2, "Pending")
    assert stalled.status.error is not None and stalled.status.error.code == ErrorCode.STALLED
    assert "phase Generating" in stalled.status.error.message


def test_teacher_unavailable_is_retried_with_the_partial_stats_in_the_status() -> None:
    the_job = job(runPolicy={"backoffLimit": 2})
    status = generating(the_job).status
    partial = {**STATS, "complete": False, "kept": 0, "requests": 4, "uri": None, "dropped": {}}
    error = {"code": "TeacherUnavailable", "message": "the teacher did not answer", "retryable": True}
    failed = step(the_job, status, at(300), rayjob("Failed", "FAILED"),
                  snapshot("Failed", at(290), error=error, distillation=partial))
    assert failed.create_attempt == 2
    assert failed.status.error is not None and failed.status.error.code == "TeacherUnavailable"
    assert failed.status.distillation is not None and failed.status.distillation.complete is False


# ------------------------------------------------------------------------------------------------- RayJob


def _container_env(manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    container = manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["env"] == container["env"] and worker.get("envFrom") == container.get("envFrom")
    return container["env"], container.get("envFrom", [])


def test_the_teachers_key_reaches_the_pods_by_reference_apart_from_the_judges() -> None:
    judge = {"judge": {"endpoint": "https://api.openai.com/v1", "model": "gpt-4o", "secretRef": {"name": "judge-key"}}}
    env, env_from = _container_env(build_rayjob(job(evaluation=judge), 1, Settings()))
    teacher = [e for e in env if e["name"] == TEACHER_KEY_ENV]
    assert teacher == [{"name": TEACHER_KEY_ENV,
                        "valueFrom": {"secretKeyRef": {"name": "teacher-key", "key": TEACHER_SECRET_KEY}}}]
    # The judge's key has a variable of its own: neither Secret is spread into envFrom (no plain OPENAI_API_KEY).
    assert [e for e in env if e["name"] == JUDGE_KEY_ENV] == [
        {"name": JUDGE_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "judge-key", "key": TEACHER_SECRET_KEY}}}]
    assert all(entry["secretRef"]["name"] not in ("teacher-key", "judge-key") for entry in env_from)


def test_a_teacher_without_a_secret_gets_no_key_and_the_trainer_reads_the_same_name() -> None:
    from sftjob_trainer.distill.core import API_KEY_ENVS

    env, _ = _container_env(build_rayjob(job(secret_name=None), 1, Settings()))
    assert TEACHER_KEY_ENV not in {e["name"] for e in env}
    assert API_KEY_ENVS[0] == TEACHER_KEY_ENV  # the operator's name is the one the trainer reads first


# ------------------------------------------------------------------------------------ live, on the emulator


async def status_where(api: Api, name: str, check: Any, what: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status = ((await api.get_sftjob(NS, name)) or {}).get("status") or {}
        return status if status and check(status) else None

    return await wait_for(probe, timeout=15, what=f"{name}: {what}")


async def test_the_operator_shows_generating_then_running(api: Api, operator: Any, s3_env: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    planted = "sk-PLANTED-teacher-7c1e9a"
    bucket = s3_env.create_bucket("sft-distill")
    await api.create_secret(NS, "teacher-key", {"OPENAI_API_KEY": planted})
    caplog.set_level("DEBUG")
    body = make_sftjob("distilled", output_uri=f"{bucket}/runs", dataset={"train": {"uri": "distilled"}},
                       distillation={**distillation(), "prompts": {"uri": f"{bucket}/prompts.jsonl"}})
    out = OutputWriter(f"{bucket}/runs/{NS}/distilled", s3_env.client())
    async with operator():
        await api.create_sftjob(body)
        rayjob_body = await wait_for(lambda: api.get_rayjob(NS, "distilled-a1"), what="the RayJob")
        await api.play_kuberay(NS, "distilled-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        await out.progress(phase="Generating", step=0, total=0, totalSteps=None, percentage=40.0,
                           message="answers: prompts 4/10", tokensPerSecond=12.5,
                           estimatedFinishTime="2099-01-01T00:00:00Z")
        status = await status_where(api, "distilled", lambda s: s.get("phase") == "Generating", "Generating")
        assert status["progress"]["percentage"] == 40.0
        assert status["progress"]["tokensPerSecond"] == 12.5
        running = next(c for c in status["conditions"] if c["type"] == "Running")
        assert (running["status"], running["reason"], running["message"]) == ("True", "Generating",
                                                                             "answers: prompts 4/10")

        await out.progress(step=2, total=10, loss=1.5, distillation=STATS)
        status = await status_where(api, "distilled", lambda s: s.get("phase") == "Running", "Running")
        assert status["distillation"]["kept"] == 8
        assert status["distillation"]["dropped"] == STATS["dropped"]
        assert status["progress"]["step"] == 2

        async def both_events() -> bool:
            reasons = {e["reason"] for e in await api.events(NS) if e["involvedObject"]["name"] == "distilled"}
            return {"Generating", "Running"} <= reasons

        await wait_for(both_events, what="the Generating and Running events")

    env = rayjob_body["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": TEACHER_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "teacher-key", "key": "OPENAI_API_KEY"}}} \
        in env
    text = json.dumps([await api.list_rayjobs(NS), await api.get_sftjob(NS, "distilled"), await api.events(NS)])
    for leaked in (planted, base64.b64encode(planted.encode()).decode()):
        assert leaked not in text + caplog.text
