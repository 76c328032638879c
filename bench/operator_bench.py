"""Operator benchmark: N SFTJobs on the realistic emulator, measured against the emulator's own create speed.

    python bench/operator_bench.py [--jobs 200] [--interval 5] [--train-seconds 30]

It prints, all measured in the same run on the same machine:

1. the emulator's raw create throughput: N SFTJobs created (in a namespace the operator does not
   watch) by the same client, at the same concurrency;
2. the time until all N SFTJobs created in the watched namespace have their RayJob and a status,
   and its ratio to the raw time for N creates (1.0 would mean the operator adds nothing);
3. the API writes the operator makes while the jobs train: every RayJob is Running, the "trainer"
   rewrites each job's progress.json several times per progress interval, and every write the
   emulator receives during the window is the operator's. Reported per job per minute at the
   bench's interval, and per job per progress refresh (which, at the default 30 s interval,
   gives the per-minute figure of a production operator).

It asserts nothing about speed (a benchmark, not a test); it does check that every RayJob was
created exactly once. A smoke test runs it with a handful of jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

WATCHED, RAW = "bench", "raw"
DEFAULT_INTERVAL_S = 30.0
READY_TIMEOUT_S = 600


def _job(name: str, namespace: str, output: str) -> dict[str, Any]:
    from support.operator_env import make_sftjob

    return make_sftjob(name, namespace, output_uri=output)


async def _create_all(api: Any, bodies: list[dict[str, Any]], pool: ThreadPoolExecutor) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    def create(body: dict[str, Any]) -> Any:
        return api.custom.create_namespaced_custom_object(
            "sftjob.dev", "v1alpha1", body["metadata"]["namespace"], "sftjobs", body)

    await asyncio.gather(
        *(
            loop.run_in_executor(pool, create, body)
            for body in bodies
        )
    )
    return time.perf_counter() - started


async def _count_ready(api: Any) -> int:
    jobs = await asyncio.to_thread(
        api.custom.list_namespaced_custom_object, "sftjob.dev", "v1alpha1", WATCHED, "sftjobs"
    )
    rayjobs = await api.list_rayjobs(WATCHED)
    have_rayjob = {r["metadata"]["labels"]["sftjob.dev/name"] for r in rayjobs}
    return sum(
        1 for j in jobs["items"] if (j.get("status") or {}).get("attempt") and j["metadata"]["name"] in have_rayjob
    )


async def run(jobs: int, interval: float, train_seconds: float, concurrency: int) -> dict[str, Any]:
    """Run the benchmark; returns the figures it printed."""
    import kubernetes

    from sftjob_operator.settings import Settings
    from support.operator_env import Api, EmulatorThread, OutputWriter, run_operator, write_kubeconfig

    out_root = Path(tempfile.mkdtemp(prefix="sftjob-bench-"))
    server = EmulatorThread()
    with server as emulator:
        kubeconfig = write_kubeconfig(str(emulator.url), out_root / "kubeconfig")
        os.environ["KUBECONFIG"] = str(kubeconfig)
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
        api = Api(kubeconfig)
        pool = ThreadPoolExecutor(max_workers=concurrency)

        for namespace in (WATCHED, RAW):
            await api.create_namespace(namespace)
        raw_s = await _create_all(api, [_job(f"raw-{i}", RAW, str(out_root)) for i in range(jobs)], pool)
        print(f"raw creates: {jobs} SFTJobs in {raw_s:.2f} s ({jobs / raw_s:.1f}/s, concurrency {concurrency})")

        # The operator watches its namespace only (as SFTJOB_WATCH_NAMESPACES would set it): the raw jobs stay.
        settings = Settings(progress_interval_seconds=interval, metrics_port=0, watch_namespaces=(WATCHED,))
        async with run_operator(settings, namespaces=(WATCHED,)):
            started = time.perf_counter()
            await _create_all(api, [_job(f"job-{i}", WATCHED, str(out_root)) for i in range(jobs)], pool)
            while (ready := await _count_ready(api)) < jobs:
                if time.perf_counter() - started > READY_TIMEOUT_S:
                    raise SystemExit(
                        f"only {ready} of {jobs} jobs had their RayJob and status after {READY_TIMEOUT_S} s"
                    )
                await asyncio.sleep(0.1)
            ready_s = time.perf_counter() - started
            ratio = ready_s / raw_s
            print(f"operator: {jobs} SFTJobs with their RayJob and status in {ready_s:.2f} s", end=" ")
            print(f"= {ratio:.2f}x the raw create time")

            # Every RayJob runs; the trainer writes progress more often than the operator reads it.
            await asyncio.gather(
                *(
                    api.play_kuberay(WATCHED, f"job-{i}-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
                    for i in range(jobs)
                )
            )
            writers = [OutputWriter(str(out_root / WATCHED / f"job-{i}")) for i in range(jobs)]
            await asyncio.sleep(2 * interval)  # let the Running transitions settle before counting
            window_start = time.monotonic()
            step = 0
            while time.monotonic() - window_start < train_seconds:
                step += 1
                for writer in writers:
                    writer.write("progress.json", _progress(step))
                await asyncio.sleep(max(interval / 4, 0.05))
            window_end = time.monotonic()
        pool.shutdown()

    window = window_end - window_start
    writes = [w for w in emulator.writes if window_start <= w.at < window_end]
    kinds = Counter(f"{w.plural}/{w.subresource}" if w.subresource else w.plural for w in writes)
    per_job_minute = len(writes) / jobs / (window / 60)
    refreshes = window / interval
    per_refresh = len(writes) / jobs / refreshes
    at_default = per_refresh * 60 / DEFAULT_INTERVAL_S
    creates = emulator.count_writes("create", "rayjobs")
    print(
        f"training window {window:.1f} s, progress.json rewritten {step} times per job: {len(writes)} API writes "
        f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items())) or 'none'})"
    )
    print(
        f"= {per_job_minute:.2f} writes/job/min at a {interval:g} s interval; {per_refresh:.2f} per job per refresh "
        f"-> {at_default:.2f} writes/job/min at the default {DEFAULT_INTERVAL_S:g} s"
    )
    print(f"RayJob creates: {creates} for {jobs} jobs")
    if creates != jobs:
        raise SystemExit(f"expected exactly one RayJob create per job, got {creates}")
    return {
        "jobs": jobs,
        "raw_create_seconds": raw_s,
        "ready_seconds": ready_s,
        "ratio_to_raw": ratio,
        "writes_per_job_per_minute": per_job_minute,
        "writes_per_job_per_refresh": per_refresh,
        "writes_per_job_per_minute_at_default_interval": at_default,
        "rayjob_creates": creates,
    }


def _progress(step: int) -> dict[str, Any]:
    from support.operator_env import progress_document

    return progress_document("Running", step=step, total=100_000, loss=2.0 / (1 + step / 100))


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="SFTJobs to create (default 200)")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="progress interval of the operator in seconds (default 5)"
    )
    parser.add_argument("--train-seconds", type=float, default=30.0, help="length of the training window (default 30)")
    parser.add_argument("--concurrency", type=int, default=16, help="parallel create requests (default 16)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    print(f"operator_bench: {args.jobs} SFTJobs, progress interval {args.interval:g} s", end=", ")
    print(f"training window {args.train_seconds:g} s")
    figures = asyncio.run(run(args.jobs, args.interval, args.train_seconds, args.concurrency))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
