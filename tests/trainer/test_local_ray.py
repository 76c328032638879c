"""The local Ray cluster's control plane runs below the training workers (sftjob_trainer.local_ray)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest

from sftjob_trainer.local_ray import CONTROL_PLANE_NICENESS, ControlPlanePriority, lower_control_plane_priority

# Process titles as Ray sets them: control-plane actors, the training worker, a pooled worker, the raylet.
TITLES = ("ray::TrainController", "ray::RayTrainWorker", "ray::IDLE", "/opt/ray/core/src/ray/raylet/raylet",
          "/usr/bin/python3")


@pytest.fixture
def fake_cluster() -> Iterator[tuple[int, dict[str, psutil.Process]]]:
    """A shell whose children carry Ray's process titles (argv[0]), as a driver's local cluster would."""
    script = "".join(f"(exec -a '{title}' sleep 60) & " for title in TITLES) + "wait"
    shell = subprocess.Popen(["bash", "-c", script])
    try:
        root = psutil.Process(shell.pid)
        children: list[psutil.Process] = []
        for _ in range(100):  # the shell forks them at once; this only waits for exec to finish
            children = root.children()
            if len(children) == len(TITLES) and all(c.cmdline() and c.cmdline()[0] in TITLES for c in children):
                break
            time.sleep(0.05)
        yield shell.pid, {c.cmdline()[0]: c for c in children}
    finally:
        for child in psutil.Process(shell.pid).children():
            child.kill()
        shell.kill()
        shell.wait()


def test_control_plane_is_reniced_and_workers_and_raylet_are_not(
    fake_cluster: tuple[int, dict[str, psutil.Process]],
) -> None:
    root, by_title = fake_cluster
    assert len(by_title) == len(TITLES)
    assert lower_control_plane_priority(root) == 2
    niceness = {title: process.nice() for title, process in by_title.items()}
    inherited = os.nice(0)  # the children start at the test runner's own niceness
    assert niceness == {
        "ray::TrainController": CONTROL_PLANE_NICENESS,
        "ray::RayTrainWorker": inherited,
        "ray::IDLE": inherited,
        "/opt/ray/core/src/ray/raylet/raylet": inherited,
        "/usr/bin/python3": CONTROL_PLANE_NICENESS,
    }
    assert lower_control_plane_priority(root) == 0  # already lowered: nothing left to do


def test_the_priority_thread_renices_in_the_background(
    fake_cluster: tuple[int, dict[str, psutil.Process]],
) -> None:
    root, by_title = fake_cluster
    with ControlPlanePriority(root_pid=root, interval_s=0.05) as watcher:
        for _ in range(100):
            if watcher.reniced == 2:
                break
            time.sleep(0.05)
    assert watcher.reniced == 2
    assert by_title["ray::TrainController"].nice() == CONTROL_PLANE_NICENESS
    assert by_title["ray::RayTrainWorker"].nice() == os.nice(0)
