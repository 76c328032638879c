"""Load: 200 SFTJobs created at once against one operator process on the emulator.

The operator runs as `python -m sftjob_operator` (a child process, so that its memory is its own) with
a short progress interval; the test creates the jobs 16 at a time, waits until every one has its RayJob
and a status, plays KubeRay (every RayJob Running) and the trainer (every progress.json rewritten four
times per interval), and counts the operator's status writes over a window of whole intervals.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from support.operator_env import Api, OperatorProcess, OutputWriter, make_sftjob, progress_document, wait_for

NS = "load"
JOBS = 200
# Parallel create requests (what a GitOps tool or a script applying a folder does).
CONCURRENCY = 16
# The operator's progress interval here (30 s by default). Each interval every job's timer reads its
# RayJob: 200 jobs at 8 s are 25 requests/s to the emulator, a quarter of what it serves on this machine.
INTERVAL_S = 8.0
# Status writes are counted over this many whole intervals once every job runs.
WINDOW_INTERVALS = 2
# How often the test lists the 200 jobs while it waits (each list is 200 objects for the emulator to copy).
POLL_S = 1.0
# How often the operator's RSS is sampled.
RSS_SAMPLE_S = 0.1
# Reaching 200 reconciled jobs takes ~15-30 s here; a loaded CI machine gets far more.
READY_TIMEOUT_S = 300
DEFAULT_INTERVAL_S = 30.0
MIB = 1024 * 1024


async def _all(api: Api, check: Any) -> dict[str, dict[str, Any]] | None:
    listed = await asyncio.to_thread(api.custom.list_namespaced_custom_object, "sftjob.dev", "v1alpha1", NS,
                                     "sftjobs")
    found = {o["metadata"]["name"]: o.get("status") or {} for o in listed["items"]}
    return found if len(found) == JOBS and all(check(s) for s in found.values()) else None


@pytest.mark.slow
@pytest.mark.scenario("Load", f"{JOBS} SFTJobs at once on the emulator → every one reconciled (one RayJob create "
                      "each, a status), operator RSS reported, status writes ≤ one per job per progress interval "
                      "(writes per job per minute reported)")
async def test_200_sftjobs_at_once(k8s: Any, api: Api, tmp_path: Path, figures: dict[str, str]) -> None:
    await api.create_namespace(NS)
    operator = OperatorProcess(k8s.kubeconfig, tmp_path / "operator.log", SFTJOB_WATCH_NAMESPACES=NS,
                               SFTJOB_PROGRESS_INTERVAL_SECONDS=str(INTERVAL_S))
    operator.start()
    try:
        # A first job shows the operator up and watching: its RSS then is the baseline.
        await api.create_sftjob(make_sftjob("warmup", NS, output_uri=str(tmp_path)))
        await wait_for(lambda: api.get_rayjob(NS, "warmup-a1"), timeout=60, what="the warm-up job's RayJob")
        await api.delete_sftjob(NS, "warmup")
        await wait_for(lambda: _absent(api, "warmup"), timeout=60, what="the warm-up job deleted")
        process = psutil.Process(operator.pid)
        baseline = peak = process.memory_info().rss

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(RSS_SAMPLE_S)

        sampler = asyncio.create_task(sample())
        names = [f"job-{i:03d}" for i in range(JOBS)]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            loop = asyncio.get_running_loop()
            bodies = [make_sftjob(name, NS, output_uri=str(tmp_path)) for name in names]
            create = api.custom.create_namespaced_custom_object
            await asyncio.gather(*(loop.run_in_executor(pool, create, "sftjob.dev", "v1alpha1", NS, "sftjobs", body)
                                   for body in bodies))
            created_s = time.monotonic() - started
            pending = await wait_for(lambda: _all(api, lambda s: s.get("attempt") == 1), timeout=READY_TIMEOUT_S,
                                     interval=POLL_S, what=f"all {JOBS} jobs with a status")
            ready_s = time.monotonic() - started
            creates = Counter(w.name for w in k8s.writes if w.plural == "rayjobs" and w.action == "CREATE")

            # Every RayJob runs; the trainer rewrites progress.json four times per interval.
            running = {"status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}}
            patch = api.custom.patch_namespaced_custom_object_status
            await asyncio.gather(*(loop.run_in_executor(pool, patch, "ray.io", "v1", NS, "rayjobs", f"{name}-a1",
                                                        running) for name in names))
        await wait_for(lambda: _all(api, lambda s: s.get("phase") == "Running"), timeout=READY_TIMEOUT_S,
                       interval=POLL_S, what=f"all {JOBS} jobs Running")
        writers = [OutputWriter(str(tmp_path / NS / name)) for name in names]
        step = 0
        window_start = time.monotonic()
        window_end = window_start + WINDOW_INTERVALS * INTERVAL_S
        while time.monotonic() < window_end:
            step += 1
            document = progress_document("Running", step=step, total=100_000, loss=2.0 / (1 + step / 100))
            for writer in writers:
                writer.write("progress.json", document)
            await asyncio.sleep(INTERVAL_S / 4)
        window_end = time.monotonic()
        sampler.cancel()
        final = await _all(api, lambda s: s.get("phase") == "Running")
    finally:
        operator.stop()

    window = window_end - window_start
    in_window = [w for w in k8s.writes if window_start <= w.at < window_end and w.namespace == NS]
    status_writes = Counter(w.name for w in in_window if w.plural == "sftjobs" and w.subresource == "status")
    per_job_minute = sum(status_writes.values()) / JOBS / (window / 60)
    per_refresh = sum(status_writes.values()) / JOBS / (window / INTERVAL_S)
    # At most one status write per job per refresh; a window of k intervals can hold k+1 refreshes of one job.
    bound = math.ceil(window / INTERVAL_S) + 1
    bound_per_minute = bound / (window / 60)
    rss_delta = (peak - baseline) / MIB
    print(f"{JOBS} SFTJobs created in {created_s:.1f} s, all with RayJob and status after {ready_s:.1f} s; "
          f"operator RSS {baseline / MIB:.0f} MiB -> peak {peak / MIB:.0f} MiB (+{rss_delta:.0f} MiB); "
          f"{sum(status_writes.values())} status writes in {window:.1f} s = {per_job_minute:.2f}/job/min "
          f"(bound {bound_per_minute:.1f}), {per_refresh:.2f} per job per refresh; other writes: "
          f"{Counter(w.plural for w in in_window if w.subresource != 'status')}")
    figures[f"Load: {JOBS} SFTJobs at once, time until all have RayJob and status"] = (
        f"{ready_s:.1f} s (creates took {created_s:.1f} s, {CONCURRENCY} in parallel)")
    figures[f"Load: operator RSS with {JOBS} SFTJobs"] = (
        f"+{rss_delta:.0f} MiB peak over the idle operator ({baseline / MIB:.0f} → {peak / MIB:.0f} MiB)")
    figures[f"Load: status writes while {JOBS} jobs train"] = (
        f"{per_job_minute:.2f} writes/job/min at a {INTERVAL_S:g} s interval ({per_refresh:.2f} per job per refresh "
        f"→ {per_refresh * 60 / DEFAULT_INTERVAL_S:.2f}/job/min at the default {DEFAULT_INTERVAL_S:g} s; "
        f"bound {bound_per_minute:.1f})")

    assert set(pending) == set(names)
    assert {name: creates[f"{name}-a1"] for name in names} == dict.fromkeys(names, 1)
    assert sum(creates.values()) == JOBS + 1  # and the warm-up job's
    assert final is not None and all(s["rayJob"]["name"] == f"{n}-a1" for n, s in final.items())
    assert max(status_writes.values(), default=0) <= bound, status_writes.most_common(3)
    assert per_job_minute <= bound_per_minute
    assert sum(status_writes.values()) > 0  # not vacuous: the operator did refresh the jobs in the window


async def _absent(api: Api, name: str) -> bool:
    return await api.get_sftjob(NS, name) is None
