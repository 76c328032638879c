"""The local Ray cluster (sftjob_trainer.local_ray): its control plane runs below the training workers, and workers
it cannot place fail at once."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from sftjob_api.codes import ErrorCode
from sftjob_trainer import local_ray
from sftjob_trainer.local_ray import (
    CONTROL_PLANE_NICENESS,
    ControlPlanePriority,
    check_resources,
    is_control_plane,
    lower_control_plane_priority,
)
from sftjob_trainer.trainer_error import TrainerError

# Each stand-in process starts this many threads besides its main thread, as Ray's processes start theirs
# before the driver can see them (Linux keeps a niceness per thread).
THREADS = 3
# A Python process that starts THREADS threads and blocks; its last argument names its role in the test.
THREADED = ("import threading; e = threading.Event(); "
            f"[threading.Thread(target=e.wait, daemon=True).start() for _ in range({THREADS})]; e.wait()")
# (role, argv[0] as Ray sets it, extra arguments): control-plane actors and services, the training worker,
# a pooled worker, the raylet, and a fresh worker that has not titled itself yet.
PROCESSES = (
    ("controller", "ray::TrainController.run", ()),
    ("log-monitor", "/usr/bin/python3", ("/ray/_private/log_monitor.py",)),
    ("training-worker", "ray::RayTrainWorker", ()),
    ("pooled-worker", "ray::IDLE", ()),
    ("raylet", "/opt/ray/core/src/ray/raylet/raylet", ()),
    ("untitled-worker", "/usr/bin/python3", ("/ray/_private/workers/default_worker.py",)),
)
LOWERED = {"controller", "log-monitor"}


def thread_scheduling(process: psutil.Process) -> set[tuple[int, int]]:
    """The (scheduling policy, niceness) pairs of all of a process's threads."""
    return {(os.sched_getscheduler(t.id), os.getpriority(os.PRIO_PROCESS, t.id)) for t in process.threads()}


NORMAL = (os.SCHED_OTHER, os.nice(0))  # what the children start with: the test runner's own scheduling
IDLE = (os.SCHED_IDLE, os.nice(0))


@pytest.fixture
def fake_cluster() -> Iterator[tuple[int, dict[str, psutil.Process]]]:
    """A shell whose threaded children carry Ray's process titles (argv[0]), as a driver's local cluster would."""
    script = "".join(
        f"(exec -a {shlex.quote(title)} {shlex.quote(sys.executable)} -c {shlex.quote(THREADED)} "
        f"{' '.join(map(shlex.quote, extra))} {role}) & "
        for role, title, extra in PROCESSES
    ) + "wait"
    shell = subprocess.Popen(["bash", "-c", script])
    try:
        root = psutil.Process(shell.pid)
        children: list[psutil.Process] = []
        for _ in range(200):  # the shell forks them at once; this waits until every thread of each has started
            children = root.children()
            if len(children) == len(PROCESSES) and all(c.num_threads() == THREADS + 1 for c in children):
                break
            time.sleep(0.05)
        yield shell.pid, {c.cmdline()[-1]: c for c in children}
    finally:
        for child in psutil.Process(shell.pid).children():
            child.kill()
        shell.kill()
        shell.wait()


def test_every_thread_of_the_control_plane_is_lowered_and_workers_and_raylet_are_not(
    fake_cluster: tuple[int, dict[str, psutil.Process]],
) -> None:
    root, by_role = fake_cluster
    assert sorted(by_role) == sorted(role for role, _, _ in PROCESSES)
    assert lower_control_plane_priority(root) == len(LOWERED) * (THREADS + 1)
    assert {role: thread_scheduling(process) for role, process in by_role.items()} == {
        role: {IDLE if role in LOWERED else NORMAL} for role, _, _ in PROCESSES
    }
    assert lower_control_plane_priority(root) == 0  # already lowered: nothing left to do


def test_without_sched_idle_the_control_plane_gets_niceness(
    fake_cluster: tuple[int, dict[str, psutil.Process]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_ray, "IDLE_POLICY", None)  # as on macOS
    root, by_role = fake_cluster
    assert lower_control_plane_priority(root) == len(LOWERED) * (THREADS + 1)
    assert {role: thread_scheduling(process) for role, process in by_role.items()} == {
        role: {(os.SCHED_OTHER, CONTROL_PLANE_NICENESS) if role in LOWERED else NORMAL} for role, _, _ in PROCESSES
    }


def test_the_priority_thread_lowers_in_the_background(
    fake_cluster: tuple[int, dict[str, psutil.Process]],
) -> None:
    root, by_role = fake_cluster
    expected = len(LOWERED) * (THREADS + 1)
    with ControlPlanePriority(root_pid=root, interval_s=0.05) as watcher:
        for _ in range(100):
            if watcher.lowered == expected:
                break
            time.sleep(0.05)
    assert watcher.lowered == expected
    assert thread_scheduling(by_role["controller"]) == {IDLE}
    assert thread_scheduling(by_role["training-worker"]) == {NORMAL}


@pytest.mark.parametrize(("cmdline", "lowered"), [
    (["ray::SynchronizationActor"], True),
    (["/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp"], True),
    (["/venv/bin/python", "-u", "/venv/lib/python3.11/site-packages/ray/autoscaler/_private/monitor.py"], True),
    (["ray::RayTrainWorker.run_train_fn"], False),
    (["ray::IDLE"], False),
    (["/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=x"], False),
    (["/venv/bin/python", "/venv/lib/python3.11/site-packages/ray/_private/workers/default_worker.py"], False),
    ([], False),
])
def test_which_processes_count_as_control_plane(cmdline: list[str], lowered: bool) -> None:
    assert is_control_plane(cmdline) is lowered


def test_a_local_cluster_goes_without_the_helpers_a_laptop_has_no_use_for(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str | None] = []
    monkeypatch.setattr("ray.init", lambda address=None, **_: started.append(address))
    for name in local_ray.LOCAL_CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(local_ray.RAY_WORKER_NICENESS_ENV, local_ray.TRAINING_NICENESS)  # restored afterwards
    monkeypatch.setenv("RAY_TRAIN_METRICS_ENABLED", "1")  # a user's own setting wins
    assert local_ray.init_ray(None) is True
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert os.environ["RAY_TRAIN_METRICS_ENABLED"] == "1"
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
    assert local_ray.init_ray("ray://head:10001") is False  # a cluster's helpers are its own business
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ
    assert started == [None, "ray://head:10001"]


@pytest.mark.parametrize(("cluster", "workers", "cpus", "gpus", "field", "fix"), [
    # a new user's job file on a laptop: gpusPerWorker left at its default
    ({"CPU": 2.0}, 1, 1, 1, "spec.compute.gpusPerWorker", "set spec.compute.gpusPerWorker: 0 to train on CPU"),
    ({"CPU": 8.0, "GPU": 1.0}, 2, 1, 1, "spec.compute.gpusPerWorker",
     "set spec.compute.numWorkers: 1 or spec.compute.gpusPerWorker: 0 to train on CPU"),
    ({"CPU": 8.0, "GPU": 2.0}, 1, 1, 4, "spec.compute.gpusPerWorker",
     "set spec.compute.gpusPerWorker: 0 to train on CPU"),
    ({"CPU": 2.0}, 3, 1, 0, "spec.compute.numWorkers", "set spec.compute.numWorkers: 2"),
])
def test_workers_a_cluster_of_one_machine_cannot_place_fail_naming_the_field_and_fix(
    cluster: dict[str, float], workers: int, cpus: int, gpus: int, field: str, fix: str,
) -> None:
    with pytest.raises(TrainerError) as failed:
        check_resources(cluster, workers, cpus, gpus)
    assert (failed.value.code, failed.value.field, failed.value.retryable) == (ErrorCode.UNSCHEDULABLE, field, False)
    assert failed.value.message.endswith(fix)


def test_the_gpu_message_says_what_the_machine_has_and_what_the_job_asks() -> None:
    with pytest.raises(TrainerError) as failed:
        check_resources({"CPU": 2.0}, 1, 1, 1)
    assert failed.value.message == ("this machine's Ray cluster has 0 GPUs but the job asks for 1 worker x 1 GPU "
                                    "(gpusPerWorker defaults to 1): set spec.compute.gpusPerWorker: 0 to train on CPU")


@pytest.mark.parametrize(("cluster", "workers", "cpus", "gpus"), [
    ({"CPU": 2.0}, 2, 1, 0),
    ({"CPU": 16.0, "GPU": 2.0}, 2, 4, 1),
    ({"CPU": 4.0, "GPU": 4.0}, 1, 4, 4),
])
def test_workers_that_fit_pass(cluster: dict[str, float], workers: int, cpus: int, gpus: int) -> None:
    check_resources(cluster, workers, cpus, gpus)
