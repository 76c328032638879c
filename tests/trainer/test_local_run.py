"""`sftjob run` on a laptop: resources the local Ray cluster cannot provide fail in seconds, and SIGINT/SIGTERM stop it.

Each test drives the real command line (`sftjob run job.yaml --no-progress`) in a session of its own, so the Ray
cluster its driver starts (raylet, GCS, Ray Train's controller and workers) can be looked for afterwards by session
id. The interrupted runs are shared: the first is stopped with SIGTERM after its first checkpoint, the rerun of the
same file resumes from it and is then stopped with a terminal's Ctrl-C (SIGINT to the whole process group).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.trainer_process import (
    CRASH_MARKERS,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    read_progress,
    session_processes,
    wait_for,
    wait_for_exit,
)
from tests.support.trainer_process import start as start_process

from sftjob_api.codes import ErrorCode
from sftjob_api.progress import ProgressFile
from sftjob_trainer.interrupts import EXIT_CANCELLED

from .conftest import job_document

pytestmark = pytest.mark.slow

SFTJOB = Path(sys.executable).parent / "sftjob"


@dataclass
class Stopped:
    """What an interrupted `sftjob run` left behind."""

    returncode: int
    stderr: str
    progress: ProgressFile
    """progress.json after the command exited."""
    before_signal: ProgressFile
    """progress.json when the signal was sent."""
    manifest: bool
    """Whether manifest.json exists."""
    leftovers: list[list[str]]
    """Command lines of the run's processes still alive after it exited (zombies excluded)."""


def write_job(directory: Path, name: str, tiny_model_dir: Path, copy_data: Path, **sections: Any) -> Path:
    """An SFTJob file over the tiny model and the copy data, with its output under `directory`."""
    doc = job_document(name, str(tiny_model_dir), str(copy_data / "train.jsonl"), str(copy_data / "validation.jsonl"),
                       str(directory / "out"), **sections)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(job_file: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `sftjob run job_file --no-progress` in a new session; returns the process and its stderr file."""
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the driver starts a cluster of its own
    full.update({"SFTJOB_PROGRESS_INTERVAL": "0", **env})
    stderr = job_file.with_suffix(f".{time.monotonic_ns()}.stderr")
    return start_process([str(SFTJOB), "run", str(job_file), "--no-progress"], full, stderr), stderr


def stop(proc: subprocess.Popen[bytes], stderr: Path, output: Path, before: ProgressFile,
         send: Callable[[], None]) -> Stopped:
    """Send the signal, wait for the command to exit and collect what it left."""
    send()
    wait_for_exit(proc, stderr, STOP_TIMEOUT_S)
    leftovers = session_processes(proc.pid)
    progress = read_progress(output)
    assert progress is not None
    return Stopped(proc.returncode, stderr.read_text(), progress, before, (output / "manifest.json").exists(),
                   leftovers)


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
                     copy_data: Path) -> dict[str, Stopped]:
    """`sftjob run` stopped by SIGTERM after its first checkpoint, then its rerun stopped by Ctrl-C once resumed."""
    directory = tmp_path_factory.mktemp("interrupted")
    # More steps than the test ever waits for: each run is stopped long before it could finish.
    job = write_job(directory, "interrupted", tiny_model_dir, copy_data, hyperparameters={"maxSteps": 1000},
                    checkpointing={"interval": 2, "keep": 2})
    output = directory / "out" / "interrupted"
    runs = {}
    proc, stderr = start(job)
    before = wait_for(proc, stderr, output, lambda p: p.phase == "Running" and bool(p.checkpoints))
    # As Kubernetes and `kill` send it: to the process alone.
    runs["sigterm"] = stop(proc, stderr, output, before, lambda: proc.send_signal(signal.SIGTERM))
    proc, stderr = start(job)
    before = wait_for(proc, stderr, output,
                      lambda p: p.resumed_from_step is not None and p.step > p.resumed_from_step)
    # As a terminal's Ctrl-C sends it: to the whole foreground process group.
    runs["sigint"] = stop(proc, stderr, output, before, lambda: os.killpg(proc.pid, signal.SIGINT))
    return runs


def assert_cancelled(run: Stopped, signal_name: str) -> None:
    assert run.returncode == EXIT_CANCELLED, run.stderr[-3000:]
    assert run.progress.phase == "Failed" and run.progress.error is not None, run.progress
    assert run.progress.error.code == ErrorCode.CANCELLED and signal_name in run.progress.error.message
    assert not run.manifest
    assert run.leftovers == []
    # The report keeps what rank 0 had written: its step and the checkpoints a rerun resumes from.
    assert run.progress.step >= run.before_signal.step
    assert max(c.step for c in run.progress.checkpoints) >= max(c.step for c in run.before_signal.checkpoints)
    assert f"{ErrorCode.CANCELLED}: stopped by {signal_name}" in run.stderr
    for marker in CRASH_MARKERS:
        assert marker not in run.stderr, run.stderr[-3000:]


def test_sigterm_stops_the_run_and_its_ray_cluster_and_reports_cancelled(
    interrupted_runs: dict[str, Stopped],
) -> None:
    assert_cancelled(interrupted_runs["sigterm"], "SIGTERM")


def test_ctrl_c_stops_the_run_and_its_ray_cluster_and_reports_cancelled(interrupted_runs: dict[str, Stopped]) -> None:
    assert_cancelled(interrupted_runs["sigint"], "SIGINT")


def test_a_rerun_after_an_interruption_resumes_from_its_last_checkpoint(
    interrupted_runs: dict[str, Stopped],
) -> None:
    first, rerun = interrupted_runs["sigterm"].progress, interrupted_runs["sigint"].before_signal
    last = max(c.step for c in first.checkpoints)
    assert last > 0 and rerun.resumed_from_step == last
    assert {c.uri for c in first.checkpoints} & {c.uri for c in rerun.checkpoints}  # the list carried over


def test_default_gpus_per_worker_without_a_gpu_exits_2_naming_the_field(tmp_path: Path, tiny_model_dir: Path,
                                                                        copy_data: Path) -> None:
    job = write_job(tmp_path, "wants-a-gpu", tiny_model_dir, copy_data)
    doc = yaml.safe_load(job.read_text())
    del doc["spec"]["compute"]["gpusPerWorker"]  # as a new user leaves it: the default, 1
    job.write_text(yaml.safe_dump(doc))
    # Ray counts no GPU whatever the machine has.
    proc, stderr = start(job, CUDA_VISIBLE_DEVICES="")
    wait_for_exit(proc, stderr, START_TIMEOUT_S)
    err = stderr.read_text()
    assert proc.returncode == 2, err[-3000:]
    assert "spec.compute.gpusPerWorker" in err and "gpusPerWorker: 0" in err and "Traceback" not in err
    # Said before a Ray cluster was started for nothing: torch sees the GPUs that cluster would have.
    assert "this machine has 0 GPUs but the job asks for 1 worker x 1 GPU (gpusPerWorker defaults to 1)" in err
    progress = read_progress(tmp_path / "out" / "wants-a-gpu")
    assert progress is not None and progress.phase == "Failed" and progress.error is not None
    assert (progress.error.code, progress.error.field) == (ErrorCode.UNSCHEDULABLE, "spec.compute.gpusPerWorker")
    assert progress.step == 0 and not (tmp_path / "out" / "wants-a-gpu" / "checkpoints").exists()  # no Ray Train
    assert not (tmp_path / "out" / "wants-a-gpu" / "manifest.json").exists()
    assert session_processes(proc.pid) == []
