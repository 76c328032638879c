"""The RayJob entrypoint (`python -m sftjob_trainer`) on a Ray cluster it joins, as in a KubeRay head pod.

Kubernetes stops a pod with SIGTERM (a deleted RayJob, a drained node): the trainer reports `Cancelled`, never
leaves progress.json `Running`, and the Ray Train workers stop while the cluster itself keeps running.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
from tests.support.trainer_process import (
    CRASH_MARKERS,
    STOP_TIMEOUT_S,
    read_progress,
    start,
    wait_for,
    wait_for_exit,
)

from sftjob_api.codes import ErrorCode
from sftjob_trainer.interrupts import EXIT_CANCELLED

from .conftest import job_document

pytestmark = pytest.mark.slow

# Process titles of Ray Train's actors for one run.
RAY_TRAIN_TITLES = ("ray::RayTrainWorker", "ray::TrainController")


def ray_train_processes() -> list[str]:
    """Titles of the Ray Train actor processes of this test run's shared Ray cluster (this process's descendants)."""
    titles = []
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if cmdline and cmdline[0].startswith(RAY_TRAIN_TITLES):
            titles.append(cmdline[0])
    return titles


def test_sigterm_reports_cancelled_and_stops_the_workers_of_a_joined_cluster(
    ray_cluster: None, tiny_model_dir: Path, copy_data: Path, tmp_path: Path,
) -> None:
    import ray

    doc = job_document("entrypoint", str(tiny_model_dir), str(copy_data / "train.jsonl"),
                       str(copy_data / "validation.jsonl"), str(tmp_path), hyperparameters={"maxSteps": 1000},
                       checkpointing={"interval": 2, "keep": 2})
    env = {**os.environ, "SFTJOB_CONFIG": json.dumps(doc), "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "SFTJOB_PROGRESS_INTERVAL": "0"}
    stderr = tmp_path / "stderr"
    proc = start([sys.executable, "-m", "sftjob_trainer"], env, stderr)
    output = tmp_path / "entrypoint"
    wait_for(proc, stderr, output, lambda p: p.phase == "Running" and bool(p.checkpoints))
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends the container
    wait_for_exit(proc, stderr, STOP_TIMEOUT_S)
    text = stderr.read_text()
    assert proc.returncode == EXIT_CANCELLED, text[-3000:]
    assert f"{ErrorCode.CANCELLED}: stopped by SIGTERM" in text
    for marker in CRASH_MARKERS:
        assert marker not in text, text[-3000:]
    # The cluster outlives its job; the job's actors do not (Ray ends them with their owner, asynchronously).
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while ray_train_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_train_processes() == []
    assert ray.cluster_resources().get("CPU")
    progress = read_progress(output)  # read after rank 0 is gone: nothing can overwrite it any more
    assert progress is not None and progress.phase == "Failed" and progress.error is not None
    assert progress.error.code == ErrorCode.CANCELLED and progress.error.retryable
    assert progress.checkpoints and progress.step >= max(c.step for c in progress.checkpoints)
    assert not (output / "manifest.json").exists()
