"""The Ray cluster a driver starts for itself (`sftjob run` on a laptop): training gets the CPU first.

On Kubernetes the RayJob's head and worker pods are separate, and nothing here applies. On one machine,
Ray's control plane (GCS, log monitor, the autoscaler monitor, Ray Train's controller and its helper
actors) shares the cores with the training worker: about a dozen processes, each waking up many times a
second (every Python worker checks for signals every 10 ms), together about 10% of one core. A wake-up that
preempts one of the worker's OpenMP threads stalls the other thread at the next barrier too, so an idle
cluster beside a plain training process cost it 9.3% of its tokens/s with the control plane at nice 10
(a lower share, but it still preempts on wake-up) and 4.6% under SCHED_IDLE, which never preempts a
normal thread (one run each, windows alternating with the cluster stopped). So a cluster started here
runs its training workers at normal priority, the rest of its control plane under SCHED_IDLE (nice 10
where there is no SCHED_IDLE), and without the two Ray Train helpers a laptop has no use for: the
preemption watcher (spot-instance notices) and metrics export (no Prometheus scrapes it). The raylet
keeps normal priority: it forks the workers, and a child inherits its scheduling.

Linux keeps scheduling per thread, and setpriority()/sched_setscheduler() on a process id change only its
main thread; a thread inherits the settings of the thread that creates it. So every thread of a
control-plane process is lowered, and the scan repeats, for threads and processes started later. A
process is lowered only once its title says what it is: a fresh worker (`default_worker.py`, not yet
titled) may become a training worker, and lowering its main thread would lower every thread it starts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from types import TracebackType

from sftjob_api.codes import ErrorCode
from sftjob_trainer.trainer_error import TrainerError

RAY_WORKER_NICENESS_ENV = "RAY_worker_niceness"
# Ray's default worker niceness is 15, which would put the training workers below every other process.
TRAINING_NICENESS = "0"
# The control plane's scheduling: Linux's SCHED_IDLE runs a thread only in what normal threads leave (and
# never preempts one on wake-up), plenty for processes that need about 1% of a core each. Where there is
# none (macOS), niceness 10: about 1/10 of a nice-0 thread's CPU weight.
IDLE_POLICY: int | None = getattr(os, "SCHED_IDLE", None)
CONTROL_PLANE_NICENESS = 10
# Ray Train helpers that a cluster on one machine has no use for, off unless the user set them.
LOCAL_CLUSTER_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # an actor watching for spot-instance preemption notices
    "RAY_TRAIN_METRICS_ENABLED": "0",  # controller and worker metrics for a Prometheus that is not there
}
# Ray Train starts its actors with fit() and again on a restart: new processes are looked for this often while
# scans find something to lower, and half as often after each scan that finds nothing, down to MAX_SCAN_INTERVAL_S.
# A scan costs about 7 ms of CPU with Ray Train's ~15 processes: 0.1% of a core at the slowest rate.
SCAN_INTERVAL_S = 1.0
MAX_SCAN_INTERVAL_S = 8.0
# Processes that keep normal priority: the training workers and pooled workers that may become one.
KEEP_PRIORITY_TITLES = ("ray::RayTrainWorker", "ray::IDLE")
# The script a Ray worker runs until it titles itself (ray::IDLE, ray::<Actor>): not yet known to be control plane.
UNTITLED_WORKER_SCRIPT = "default_worker.py"
# The raylet forks every new worker, and a child inherits its niceness (Ray's worker niceness is an increment).
RAYLET_BINARY = "raylet"
# Seconds the processes of a stopped local cluster get to exit after ray.shutdown() before they are killed;
# ray.shutdown() itself gives the raylet and GCS 1 s after SIGTERM, and the raylet stops its workers.
SHUTDOWN_GRACE_S = 5.0


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
    if not address:
        for name, value in LOCAL_CLUSTER_ENV.items():
            os.environ.setdefault(name, value)  # read by fit() here and passed on to Ray Train's controller
    ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    return not address


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def check_resources(cluster: Mapping[str, float], num_workers: int, cpus_per_worker: int,
                    gpus_per_worker: int) -> None:
    """Fail when a cluster of one machine cannot place the Ray Train workers, instead of waiting for ever.

    Only for a cluster the driver started itself (`init_ray` returned True): a cluster it joins may grow
    (the autoscaler, KubeRay), so there the workers wait for their resources.

    Args:
        cluster: `ray.cluster_resources()`.
        num_workers: `spec.compute.numWorkers`.
        cpus_per_worker: CPUs each worker reserves (`driver.worker_cpus`: cpusPerWorker capped by the cluster).
        gpus_per_worker: `spec.compute.gpusPerWorker`.

    Raises:
        TrainerError: `Unschedulable`, naming the field to change and the value that fits.
    """
    cpus = int(cluster.get("CPU", 0))
    check_gpus(int(cluster.get("GPU", 0)), num_workers, gpus_per_worker, "this machine's Ray cluster")
    asks = f"the job asks for {_count(num_workers, 'worker')} x"
    if num_workers * cpus_per_worker > cpus:
        raise TrainerError(
            ErrorCode.UNSCHEDULABLE,
            f"this machine's Ray cluster has {_count(cpus, 'CPU')} but {asks} {_count(cpus_per_worker, 'CPU')}"
            f": set spec.compute.numWorkers: {max(1, cpus // cpus_per_worker)}",
            "spec.compute.numWorkers",
        )


def check_gpus(gpus: int, num_workers: int, gpus_per_worker: int, where: str) -> None:
    """Fail when `gpus` cannot hold the workers' GPUs (`check_resources`; before a local cluster starts, too).

    Args:
        gpus: The GPUs there are.
        num_workers: `spec.compute.numWorkers`.
        gpus_per_worker: `spec.compute.gpusPerWorker`.
        where: What has them, for the message (e.g. "this machine's Ray cluster").

    Raises:
        TrainerError: `Unschedulable`, naming `spec.compute.gpusPerWorker` and the values that fit.
    """
    if num_workers * gpus_per_worker <= gpus:
        return
    fits = gpus // gpus_per_worker
    fixes = [f"spec.compute.numWorkers: {fits}"] if fits else []
    fixes.append("spec.compute.gpusPerWorker: 0 to train on CPU")
    raise TrainerError(
        ErrorCode.UNSCHEDULABLE,
        f"{where} has {_count(gpus, 'GPU')} but the job asks for {_count(num_workers, 'worker')} x "
        f"{_count(gpus_per_worker, 'GPU')}{' (gpusPerWorker defaults to 1)' if gpus_per_worker == 1 else ''}: "
        f"set {' or '.join(fixes)}",
        "spec.compute.gpusPerWorker",
    )


def shutdown(grace_s: float = SHUTDOWN_GRACE_S) -> None:
    """Disconnect from Ray; for a cluster started here, return only once every process it started has exited.

    The processes are this driver's descendants, listed before `ray.shutdown()`: the raylet's workers are
    re-parented when it exits, so they could not be found afterwards. Those left after `grace_s` are killed.
    A driver that joined a cluster has no such processes, and leaves the cluster running.
    """
    import psutil
    import ray

    started = psutil.Process().children(recursive=True)
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace_s)


def is_control_plane(cmdline: list[str]) -> bool:
    """Whether a process of the local cluster, by its command line, is control plane (to be lowered)."""
    if not cmdline:
        return False
    title = cmdline[0]
    if title.startswith(KEEP_PRIORITY_TITLES) or os.path.basename(title) == RAYLET_BINARY:
        return False
    return not any(os.path.basename(arg) == UNTITLED_WORKER_SCRIPT for arg in cmdline)


def lower_thread(thread_id: int) -> bool:
    """Put one thread below training: IDLE_POLICY where there is one, else CONTROL_PLANE_NICENESS.

    Returns:
        Whether it was changed (False when it already was that low).
    """
    if IDLE_POLICY is not None:
        if os.sched_getscheduler(thread_id) == IDLE_POLICY:
            return False
        os.sched_setscheduler(thread_id, IDLE_POLICY, os.sched_param(0))
        return True
    if os.getpriority(os.PRIO_PROCESS, thread_id) >= CONTROL_PLANE_NICENESS:
        return False
    os.setpriority(os.PRIO_PROCESS, thread_id, CONTROL_PLANE_NICENESS)
    return True


def lower_control_plane_priority(root_pid: int) -> int:
    """Lower every thread of the Ray control-plane processes descended from `root_pid` (see `lower_thread`).

    Only descendants are touched, so a cluster this process merely joined is left alone. Lowering
    needs no privilege; processes and threads that exit meanwhile are skipped.

    Args:
        root_pid: The driver's process id.

    Returns:
        How many threads were lowered by this call.
    """
    import psutil

    changed = 0
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            if not is_control_plane(process.cmdline()):
                continue
        except psutil.Error:
            continue
        for thread_id in _thread_ids(process.pid):
            try:
                changed += lower_thread(thread_id)
            except OSError:  # the thread or process exited
                continue
    return changed


def _thread_ids(pid: int) -> list[int]:
    """The ids of a process's threads; just its own id where there is no /proc (niceness is per process there)."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]  # 30x cheaper than psutil's threads()
    except FileNotFoundError:
        return [pid]


class ControlPlanePriority:
    """While open, keeps lowering the priority of this driver's local Ray control plane (a daemon thread)."""

    def __init__(self, root_pid: int | None = None, interval_s: float = SCAN_INTERVAL_S) -> None:
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.interval_s = interval_s
        self.lowered = 0
        """Threads lowered so far."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sftjob-control-plane-priority", daemon=True)

    def _run(self) -> None:
        wait = self.interval_s
        while True:
            changed = lower_control_plane_priority(self.root_pid)
            self.lowered += changed
            wait = self.interval_s if changed else min(2 * wait, MAX_SCAN_INTERVAL_S)
            if self._stop.wait(wait):
                return

    def __enter__(self) -> ControlPlanePriority:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
