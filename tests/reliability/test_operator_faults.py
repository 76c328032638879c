"""Operator faults: the operator process killed at random points of job lives, RayJobs deleted by hand, API errors.

The kill test runs the real operator (`python -m sftjob_operator`'s main() in child processes, each forked
from one that imported the operator once: `OperatorProcess(zygote=True)`) against the realistic
emulator fed the real CRDs, with progress.json and manifest.json in moto's S3 server read through the
job's output Secret. The test plays KubeRay and the trainer through a whole job life: Initializing,
Running with checkpoints, a node lost (attempt 1 fails without a trainer report), attempt 2 resuming,
Succeeded without manifest.json (Exporting), the manifest, then `kubectl delete`.

Where to kill. What an operator leaves behind is only what it wrote: a kill between two writes leaves
the same state as a kill right before the second one. So the kill points are the operator's writes
for the job (status patches, Kopf's finalizer and annotation patches, RayJob creates, events), each
taken just before it is applied (the emulator refuses it: it never lands) or just after it is applied
(the operator never sees the answer). A reference life without kills lists those writes; each later
life gets a seeded random one of them, the emulator SIGKILLs the process there (`RealisticEmulator.trip`),
and a new process starts after a random pause while the life goes on. Each life must then end with
exactly one RayJob create per attempt, a final status that matches the RayJobs and progress.json, and
a status history (every stored version of the SFTJob) in which nothing went backwards. Lives run three
at a time, each in a namespace of its own watched by an operator of its own (`SFTJOB_WATCH_NAMESPACES`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reliability.conftest import OPERATOR_INTERVAL_S as OPERATOR_TICK_S
from support.kmock_realistic import Write
from support.operator_env import Api, OperatorProcess, OutputWriter, make_sftjob, wait_for

AREA = "Operator faults"
# Lives with a kill each; the issue asks for at least 20 kill points.
KILLED_LIVES = 24
MIN_KILL_POINTS = 20
# Lives run in this many namespaces at once, each with its own operator process.
LANES = 3
# Seeds the choice of kill points and the pauses before restarts (fixed: a failure reproduces).
SEED = 8
# The operator's progress timer (the default is 30 s).
INTERVAL_S = 0.2
# Longest pause between a kill and the restart; the job's life goes on meanwhile.
MAX_DOWNTIME_S = 0.6
# A wait covers an operator start-up (~1.5 s here) plus a few timer ticks on a loaded machine.
WAIT_S = 30
TERMINAL = ("Succeeded", "Failed")
PHASE_ORDER = {"Pending": 0, "Initializing": 1, "Running": 2, "Exporting": 3, "Succeeded": 4, "Failed": 4}


@dataclass
class Life:
    """One job life and what happened to it."""

    name: str
    point: tuple[int, bool] | None
    """(n-th operator write for the job, before it is applied) where the operator is killed; None: no kill."""
    fired: Write | None = None
    problems: list[str] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)


def operator_write(job: str) -> Callable[[Write], bool]:
    """Whether a write is the operator's and concerns `job` (the test's own writes are excluded)."""

    def match(write: Write) -> bool:
        if write.plural == "sftjobs":
            return write.action == "UPDATE" and write.name == job
        if write.plural == "rayjobs":
            return write.subresource is None and bool(write.name) and str(write.name).startswith(f"{job}-a")
        return write.plural == "events" and write.action == "CREATE" and write.involved == job

    return match


def describe(write: Write) -> str:
    """A kill point in words: the kind of write and what it carried."""
    body = write.body or {}
    if write.plural == "sftjobs" and write.subresource == "status":
        status = body.get("status")
        return f"status patch ({status.get('phase')}, attempt {status.get('attempt')})" if status else "status patch"
    if write.plural == "sftjobs":
        return "Kopf's finalizer/annotation patch"
    if write.plural == "rayjobs":
        return f"{write.action.lower()} RayJob {write.name}"
    return f"event {body.get('reason', '')}".rstrip()


def kind_of(write: Write) -> str:
    """The kind of a write, for the summary."""
    if write.plural == "sftjobs":
        return "status patch" if write.subresource == "status" else "finalizer/annotation patch"
    return "RayJob create" if write.plural == "rayjobs" else "event"


def regressions(statuses: list[dict[str, Any]]) -> list[str]:
    """What went backwards between consecutive stored statuses of one job."""
    found = []
    for before, after in itertools.pairwise(statuses):
        if not before:
            continue
        if not after:
            found.append("the status disappeared")
            continue
        if (after.get("attempt") or 0) < (before.get("attempt") or 0):
            found.append(f"attempt {before.get('attempt')} -> {after.get('attempt')}")
        if before.get("phase") in TERMINAL and after != before:
            found.append(f"a {before['phase']} status changed")
        same_attempt = after.get("attempt") == before.get("attempt")
        step_before = (before.get("progress") or {}).get("step")
        step_after = (after.get("progress") or {}).get("step")
        if same_attempt and step_before is not None and (step_after is None or step_after < step_before):
            found.append(f"step {step_before} -> {step_after} within attempt {after.get('attempt')}")
        if same_attempt and PHASE_ORDER.get(after.get("phase"), 0) < PHASE_ORDER.get(before.get("phase"), 0):
            found.append(f"phase {before.get('phase')} -> {after.get('phase')} within attempt {after.get('attempt')}")
        if before.get("startTime") and after.get("startTime") != before.get("startTime"):
            found.append("startTime changed")
        if len(after.get("attempts") or []) < len(before.get("attempts") or []):
            found.append("an attempt record disappeared")
    return found


async def live(api: Api, s3: Any, bucket: str, ns: str, name: str) -> None:
    """Play KubeRay and the trainer through one job life, from create to delete."""
    out = OutputWriter(f"{bucket}/runs/{ns}/{name}", s3)

    async def status_where(check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            status = ((await api.get_sftjob(ns, name)) or {}).get("status") or {}
            return status if status and check(status) else None

        return await wait_for(probe, timeout=WAIT_S, what=f"{name}: {what}")

    def at(attempt: int, step: int) -> Callable[[dict[str, Any]], bool]:
        return lambda s: s.get("attempt") == attempt and (s.get("progress") or {}).get("step") == step

    body = make_sftjob(name, ns, output={"uri": f"{bucket}/runs", "secretRef": {"name": "s3-creds"}})
    await api.create_sftjob(body)
    await wait_for(lambda: api.get_rayjob(ns, f"{name}-a1"), timeout=WAIT_S, what=f"{name}-a1")
    await api.play_kuberay(ns, f"{name}-a1", {"jobDeploymentStatus": "Initializing"})
    await status_where(lambda s: s.get("phase") == "Initializing", "Initializing")
    await api.play_kuberay(ns, f"{name}-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    for step in (10, 20):
        checkpoints = [{"step": s, "uri": f"{out.base}/checkpoints/step-{s}"} for s in range(10, step + 1, 10)]
        await out.progress(step=step, total=40, loss=2.0 - step / 40, checkpoints=checkpoints)
        await status_where(at(1, step), f"attempt 1 at step {step}")
    # The node under the driver is lost: no trainer report, KubeRay says Failed.
    await api.play_kuberay(
        ns, f"{name}-a1", {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}
    )
    await wait_for(lambda: api.get_rayjob(ns, f"{name}-a2"), timeout=WAIT_S, what=f"{name}-a2")
    await api.play_kuberay(ns, f"{name}-a2", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    await out.progress(attempt=2, step=30, total=40, loss=1.3, resumedFromStep=20)
    await status_where(at(2, 30), "attempt 2 at step 30")
    await out.progress(attempt=2, phase="Succeeded", step=40, total=40, loss=1.1)
    await api.play_kuberay(ns, f"{name}-a2", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    await status_where(lambda s: s.get("phase") == "Exporting" and s.get("attempt") == 2, "Exporting")
    await asyncio.to_thread(out.write, "manifest.json", {"files": {}})
    await status_where(lambda s: s.get("phase") == "Succeeded", "Succeeded")


async def judge(api: Api, s3: Any, bucket: str, ns: str, life: Life, creates: Counter[str]) -> list[str]:
    """The final status against the RayJobs and progress.json, and the count of RayJob creates per attempt."""
    problems = []
    name = life.name
    for attempt in (1, 2):
        if creates[f"{name}-a{attempt}"] != 1:
            problems.append(f"attempt {attempt}: {creates[f'{name}-a{attempt}']} RayJob creates")
    if creates[f"{name}-a3"]:
        problems.append("a third attempt was created")
    status = ((await api.get_sftjob(ns, name)) or {}).get("status") or {}
    rayjob = (await api.get_rayjob(ns, f"{name}-a2")) or {}
    ray = rayjob.get("status") or {}
    stored = s3.get_object(Bucket=bucket.removeprefix("s3://"), Key=f"runs/{ns}/{name}/progress.json")
    progress = json.loads(stored["Body"].read())
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}
    expected = {
        "phase": ("Succeeded", status.get("phase")),
        "attempt": (2, status.get("attempt")),
        "rayJob": (
            {"name": f"{name}-a2", "jobStatus": ray.get("jobStatus"),
             "jobDeploymentStatus": ray.get("jobDeploymentStatus")},
            {k: v for k, v in (status.get("rayJob") or {}).items() if k != "dashboardURL"},
        ),
        "progress.step": (progress["step"], (status.get("progress") or {}).get("step")),
        "attempts": (
            [(1, "Failed", "WorkerCrashed", None), (2, "Succeeded", None, 20)],
            [(r.get("attempt"), r.get("result"), r.get("reason"), r.get("resumedFromStep"))
             for r in status.get("attempts", [])],
        ),
        "conditions": (
            {"Validated": ("True", "Valid"), "Running": ("False", "Succeeded"), "Succeeded": ("True", "Succeeded")},
            conditions,
        ),
        "output.manifestUri": (f"{bucket}/runs/{ns}/{name}/manifest.json",
                               (status.get("output") or {}).get("manifestUri")),
        "error": (None, status.get("error")),
        "completionTime": (True, bool(status.get("completionTime"))),
    }
    problems += [f"{key}: expected {want!r}, got {got!r}" for key, (want, got) in expected.items() if want != got]
    if ray.get("jobDeploymentStatus") != "Complete":
        problems.append(f"RayJob a2 reads {ray!r}")
    return problems


class Lane:
    """One namespace with its own operator process (watching only that namespace), killed and restarted."""

    def __init__(self, index: int, k8s: Any, log: Path, rng: random.Random) -> None:
        self.ns = f"kills-{index}"
        self.rng = rng
        self.operator = OperatorProcess(k8s.kubeconfig, log, zygote=True, SFTJOB_WATCH_NAMESPACES=self.ns,
                                        SFTJOB_PROGRESS_INTERVAL_SECONDS=str(INTERVAL_S))
        self.killed = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def kill(self) -> None:
        """SIGKILL the operator (called in the emulator's thread, while the tripped write is held)."""
        self.operator.kill()
        self.loop.call_soon_threadsafe(self.killed.set)

    async def restarter(self) -> None:
        """Start the next operator process after each kill, after a random pause."""
        while True:
            await self.killed.wait()
            self.killed.clear()
            await asyncio.sleep(self.rng.uniform(0, MAX_DOWNTIME_S))
            await asyncio.to_thread(self.operator.start)


@pytest.mark.slow
@pytest.mark.scenario(AREA, f"operator process SIGKILLed at {KILLED_LIVES} seeded random points of a job's life "
                      "(its writes: status patches, finalizer, RayJob creates, events; before or after each lands) "
                      "→ exactly one RayJob create per attempt, final status matches the RayJobs and progress.json, "
                      "no status field goes backwards, deletion completes")
async def test_operator_killed_at_random_points(k8s: Any, api: Api, s3_server: Any, tmp_path: Path,
                                                record_cases: Any, figures: dict[str, str]) -> None:
    rng = random.Random(SEED)  # noqa: S311  (reproducible kill points, not cryptography)
    k8s.keep_bodies.update({"sftjobs", "events"})
    bucket = s3_server.create_bucket("sft-kills")
    s3 = s3_server.client()
    lanes = [Lane(i, k8s, tmp_path / f"operator-{i}.log", rng) for i in range(LANES)]
    for lane in lanes:
        await api.create_namespace(lane.ns)
        await api.create_secret(lane.ns, "s3-creds", {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": "us-east-1"})

    async def run(lane: Lane, life: Life) -> None:
        match = operator_write(life.name)
        if life.point is not None:

            def fire(write: Write) -> None:
                life.fired = write
                lane.kill()

            k8s.trip(match, life.point[0], before=life.point[1], trip=fire)
        try:
            await live(api, s3, bucket, lane.ns, life.name)
            creates = Counter(w.name for w in k8s.writes if w.plural == "rayjobs" and w.action == "CREATE")
            life.problems += await judge(api, s3, bucket, lane.ns, life, creates)
            await api.delete_sftjob(lane.ns, life.name)
            await wait_for(lambda: _gone(api, lane.ns, life.name), timeout=WAIT_S,
                           what=f"{life.name} deleted with its RayJobs")
        except AssertionError as err:  # a wait that timed out: this life failed, the next ones still run
            life.problems.append(str(err))
        life.writes = [w for w in k8s.writes if match(w)]
        history = [(w.body or {}).get("status") or {} for w in k8s.writes
                   if w.plural == "sftjobs" and w.name == life.name and w.body is not None]
        life.problems += regressions(history)
        # Events are at most once per transition: posted after the status write that records the transition.
        reasons = Counter((w.body or {}).get("reason") for w in life.writes if w.plural == "events")
        life.problems += [f"event {r} posted {reasons[r]} times" for r in ("Retrying", "Succeeded") if reasons[r] > 1]

    async def lane_lives(lane: Lane, lives: list[Life]) -> None:
        for life in lives:
            await run(lane, life)

    for lane in lanes:
        lane.operator.start()
    restarters = [asyncio.create_task(lane.restarter()) for lane in lanes]
    try:
        reference = Life("ref", None)
        await run(lanes[0], reference)
        assert reference.problems == [], reference.problems
        points = rng.sample([(n, before) for n in range(1, len(reference.writes) + 1) for before in (True, False)],
                            KILLED_LIVES)
        lives = [Life(f"k{i:02d}", point) for i, point in enumerate(points)]
        await asyncio.gather(*(lane_lives(lane, lives[i::LANES]) for i, lane in enumerate(lanes)))
    finally:
        for task in restarters:
            task.cancel()
        for lane in lanes:
            lane.operator.kill()
            lane.operator.stop()

    tried = [life for life in lives if life.fired is not None]
    passed = [life for life in tried if not life.problems]
    lines = [f"reference life: {len(reference.writes)} operator writes: "
             + ", ".join(describe(w) for w in reference.writes)]
    for life in lives:
        assert life.point is not None
        where = (f"{'before' if life.point[1] else 'after'} write {life.point[0]}: {describe(life.fired)}"
                 if life.fired is not None else f"write {life.point[0]} never came (no kill)")
        lines.append(f"{life.name} killed {where} -> {'ok' if not life.problems else life.problems}")
    print("\n".join(lines))
    kinds = Counter(kind_of(life.fired) for life in tried if life.fired is not None)
    starts = sum(lane.operator.starts for lane in lanes)
    figures["Operator SIGKILLed at random points of a job's life"] = (
        f"{len(tried)} points tried, {len(passed)} passed (seed {SEED}; "
        + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) + f"; {starts} operator starts)")
    record_cases(len(tried), len(passed))
    assert len(tried) >= MIN_KILL_POINTS, "\n".join(lines)
    assert all(not life.problems for life in lives), "\n".join(lines)


async def _gone(api: Api, ns: str, name: str) -> bool:
    if await api.get_sftjob(ns, name) is not None:
        return False
    return await api.list_rayjobs(ns, f"sftjob.dev/name={name}") == []


# ---------------------------------------------------------------------------------- RayJob deleted by hand


async def _status_where(api: Api, ns: str, name: str, check: Callable[[dict[str, Any]], bool],
                        what: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status = ((await api.get_sftjob(ns, name)) or {}).get("status") or {}
        return status if status and check(status) else None

    return await wait_for(probe, timeout=WAIT_S, what=f"{name}: {what}")


async def _events(api: Api, ns: str, name: str, reason: str, count: int = 1) -> list[dict[str, Any]]:
    """Wait until `count` events of `reason` are posted on the job (Kopf posts them from a queue)."""

    async def probe() -> list[dict[str, Any]] | None:
        found = [e for e in await api.events(ns) if e["involvedObject"]["name"] == name and e["reason"] == reason]
        return found if len(found) >= count else None

    return await wait_for(probe, timeout=WAIT_S, what=f"{count} {reason} event(s) on {name}")


async def _running(api: Api, ns: str, name: str, out: OutputWriter, attempt: int = 1) -> None:
    await wait_for(lambda: api.get_rayjob(ns, f"{name}-a{attempt}"), timeout=WAIT_S, what=f"{name}-a{attempt}")
    await api.play_kuberay(ns, f"{name}-a{attempt}", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    await out.progress(attempt=attempt, step=10, total=40,
                       checkpoints=[{"step": 10, "uri": f"{out.base}/checkpoints/step-10"}])
    await _status_where(api, ns, name, lambda s: s.get("phase") == "Running" and s.get("attempt") == attempt
                        and (s.get("progress") or {}).get("step") == 10, f"attempt {attempt} Running at step 10")


async def _job_running(api: Api, operator: Any, tmp_path: Path, name: str, **spec: Any) -> OutputWriter:
    """Start the operator and an SFTJob `name` in `ml` whose attempt 1 is Running at step 10; returns its output."""
    out = OutputWriter(f"{tmp_path}/ml/{name}")
    await operator()
    await api.create_sftjob(make_sftjob(name, "ml", output_uri=str(tmp_path), **spec))
    await _running(api, "ml", name, out)
    return out


@pytest.mark.scenario(AREA, "RayJob deleted by hand while the job runs → the attempt fails as RayJobDeleted (a "
                      "Warning event names it) and the next attempt starts, resuming from the latest checkpoint; "
                      "the deleted RayJob is never recreated")
async def test_rayjob_deleted_by_hand_starts_the_next_attempt(k8s: Any, api: Api, operator: Any,
                                                              tmp_path: Path) -> None:
    ns, name = "ml", "handdel"
    out = await _job_running(api, operator, tmp_path, name)
    await api.delete_rayjob(ns, f"{name}-a1")
    a2 = await wait_for(lambda: api.get_rayjob(ns, f"{name}-a2"), timeout=WAIT_S, what="attempt 2's RayJob")
    status = await _status_where(api, ns, name, lambda s: s.get("attempt") == 2, "attempt 2")
    retrying = await _events(api, ns, name, "Retrying")
    await _running(api, ns, name, out, attempt=2)

    assert a2["metadata"]["labels"]["sftjob.dev/attempt"] == "2"
    assert status["error"]["code"] == "RayJobDeleted" and status["error"]["retryable"] is True
    assert f"RayJob {name}-a1 of attempt 1 was deleted while the job was Running" in status["error"]["message"]
    first = status["attempts"][0]
    assert (first["attempt"], first["result"], first["reason"]) == (1, "Failed", "RayJobDeleted")
    assert retrying[0]["type"] == "Warning"
    assert retrying[0]["message"].startswith("attempt 1 failed (RayJobDeleted: RayJob handdel-a1 of attempt 1")
    assert "resuming from the latest checkpoint" in retrying[0]["message"]
    assert await api.get_rayjob(ns, f"{name}-a1") is None
    assert [w.name for w in k8s.writes if w.plural == "rayjobs" and w.action == "CREATE"] == [
        f"{name}-a1", f"{name}-a2"]
    running = await _status_where(api, ns, name, lambda s: s.get("phase") == "Running", "Running again")
    assert "error" not in running  # cleared once attempt 2 runs


@pytest.mark.scenario(AREA, "RayJob deleted by hand with no retries left (backoffLimit 0) → Failed/RayJobDeleted, "
                      "the Failed condition and a Warning event say what to check; nothing is recreated")
async def test_rayjob_deleted_with_no_retries_left_fails_the_job(k8s: Any, api: Api, operator: Any,
                                                                 tmp_path: Path) -> None:
    ns, name = "ml", "lastchance"
    await _job_running(api, operator, tmp_path, name, runPolicy={"backoffLimit": 0})
    await api.delete_rayjob(ns, f"{name}-a1")
    status = await _status_where(api, ns, name, lambda s: s.get("phase") == "Failed", "Failed")
    failed = (await _events(api, ns, name, "Failed"))[0]
    writes = len(k8s.writes)
    await asyncio.sleep(5 * OPERATOR_TICK_S)  # a few progress ticks: nothing more happens
    assert [w for w in k8s.writes[writes:] if w.plural in ("rayjobs", "sftjobs")] == []

    assert status["error"]["code"] == "RayJobDeleted"
    assert status["error"]["message"].endswith("(backoffLimit 0 reached)")
    condition = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert (condition["status"], condition["reason"]) == ("True", "RayJobDeleted")
    assert "the operator did not delete it: check who did" in condition["message"]
    assert failed["type"] == "Warning" and failed["message"].startswith(f"RayJobDeleted: RayJob {name}-a1")
    assert [w.name for w in k8s.writes if w.plural == "rayjobs" and w.action == "CREATE"] == [f"{name}-a1"]


@pytest.mark.scenario(AREA, "RayJob deleted after the job Succeeded → nothing recreated, status unchanged")
async def test_rayjob_deleted_after_success_changes_nothing(k8s: Any, api: Api, operator: Any,
                                                            tmp_path: Path) -> None:
    ns, name = "ml", "finished"
    out = await _job_running(api, operator, tmp_path, name)
    await out.progress(phase="Succeeded", step=40, total=40)
    await out.manifest()
    await api.play_kuberay(ns, f"{name}-a1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    done = await _status_where(api, ns, name, lambda s: s.get("phase") == "Succeeded", "Succeeded")
    await api.delete_rayjob(ns, f"{name}-a1")
    writes = len(k8s.writes)
    await asyncio.sleep(5 * OPERATOR_TICK_S)  # a few progress ticks: nothing happens
    assert [w for w in k8s.writes[writes:] if w.plural in ("rayjobs", "sftjobs")] == []
    assert ((await api.get_sftjob(ns, name)) or {}).get("status") == done
    assert await api.list_rayjobs(ns, f"sftjob.dev/name={name}") == []


# ------------------------------------------------------------------------------------------ API server faults


@pytest.mark.scenario(AREA, "API server answers 500/503 and 409 (RealisticEmulator.inject_fault) on the operator's "
                      "RayJob creates, status patches, finalizer patch and events through a whole job life → "
                      "retried: one RayJob create per attempt, the final status matches the RayJobs and progress.json")
async def test_api_server_faults_through_a_job_life(k8s: Any, api: Api, operator: Any, s3_server: Any) -> None:
    ns, name = "ml", "bumpy"
    k8s.keep_bodies.add("sftjobs")
    bucket = s3_server.create_bucket("sft-bumpy")
    s3 = s3_server.client()
    await api.create_secret(ns, "s3-creds", {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": "us-east-1"})
    faults = [
        k8s.inject_fault("create", "rayjobs", status=503, times=2),
        k8s.inject_fault("update", "sftjobs", status=500, times=1),  # Kopf's finalizer/annotation patch
        k8s.inject_fault("update", "sftjobs", subresource="status", status=409, times=2),
        k8s.inject_fault("update", "sftjobs", subresource="status", status=503, times=2),
        k8s.inject_fault("create", "events", status=503, times=2),
    ]
    await operator()
    await live(api, s3, bucket, ns, name)
    creates = Counter(w.name for w in k8s.writes if w.plural == "rayjobs" and w.action == "CREATE")
    problems = await judge(api, s3, bucket, ns, Life(name, None), creates)
    history = [(w.body or {}).get("status") or {} for w in k8s.writes if w.plural == "sftjobs" and w.name == name
               and w.body is not None]
    assert problems == []
    assert regressions(history) == []

    async def unmet() -> list[int] | None:
        left = [f.times for f in faults]
        return None if any(left) else left

    # Kopf posts events from a background queue, so the last event can reach the API server after
    # the status that caused it: wait for every fault to be met rather than racing the poster.
    assert await wait_for(unmet, timeout=WAIT_S, what="every injected fault to be met") == [0] * len(faults)
