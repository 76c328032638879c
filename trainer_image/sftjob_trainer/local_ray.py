"""The Ray cluster a driver starts for itself (`sftjob run` on a laptop): training gets the CPU first.

On Kubernetes the RayJob's head and worker pods are separate, and nothing here applies. On one machine,
Ray's control plane (GCS, raylet, the dashboard agent, Ray Train's controller and helper actors) shares
the cores with the training worker. Each of those processes wakes up about a hundred times a second.
At equal priority every wake-up preempts one of the worker's OpenMP threads, and the other thread then
waits for it at the next barrier. So a cluster started here runs its training workers at normal priority
and the rest of its control plane at a lower one (not the raylet: it forks the workers). The control
plane still gets the CPU it needs (well under 10% of one core), in the gaps between the training
threads' time slices.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Any

RAY_WORKER_NICENESS_ENV = "RAY_worker_niceness"
# Ray's default worker niceness is 15, which would put the training workers below every other process.
TRAINING_NICENESS = "0"
# The control plane's niceness: 10 gives it about 1/10 of a nice-0 thread's CPU weight. That is plenty for
# processes that need well under 1% of a core each, and low enough that they do not preempt training.
CONTROL_PLANE_NICENESS = 10
# Ray Train starts its actors with fit() and again on a restart: new processes are looked for this often.
SCAN_INTERVAL_S = 1.0
# Processes that keep normal priority: the training workers, pooled workers that may become one, and the
# raylet, which forks every new worker (a child inherits its niceness; Ray's worker niceness is an increment).
KEEP_PRIORITY_TITLES = ("ray::RayTrainWorker", "ray::IDLE")
RAYLET_BINARY = "raylet"


def init_ray(address: str | None) -> bool:
    """Connect to `address` (or `RAY_ADDRESS`), or start a local cluster whose workers run at normal priority.

    Args:
        address: A Ray cluster address, or None to use `RAY_ADDRESS` or start one here.

    Returns:
        Whether no cluster address was given, i.e. the cluster is local (see ControlPlanePriority).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault(RAY_WORKER_NICENESS_ENV, TRAINING_NICENESS)
    ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    return not address


def _title(process: Any) -> str:
    cmdline = process.cmdline()
    return cmdline[0] if cmdline else process.name()


def lower_control_plane_priority(root_pid: int) -> int:
    """Renice the Ray control-plane processes descended from `root_pid` to CONTROL_PLANE_NICENESS.

    Only descendants are touched, so a cluster this process merely joined is left alone. Raising
    niceness needs no privilege; processes that exit meanwhile are skipped.

    Args:
        root_pid: The driver's process id.

    Returns:
        How many processes were reniced by this call.
    """
    import psutil

    changed = 0
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            title = _title(process)
            keep = title.startswith(KEEP_PRIORITY_TITLES) or os.path.basename(title) == RAYLET_BINARY
            if keep or process.nice() >= CONTROL_PLANE_NICENESS:
                continue
            process.nice(CONTROL_PLANE_NICENESS)
            changed += 1
        except psutil.Error:
            continue
    return changed


class ControlPlanePriority:
    """While open, keeps lowering the priority of this driver's local Ray control plane (a daemon thread)."""

    def __init__(self, root_pid: int | None = None, interval_s: float = SCAN_INTERVAL_S) -> None:
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.interval_s = interval_s
        self.reniced = 0
        """Processes reniced so far."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sftjob-control-plane-priority", daemon=True)

    def _run(self) -> None:
        while True:
            self.reniced += lower_control_plane_priority(self.root_pid)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> ControlPlanePriority:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
