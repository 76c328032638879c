"""Diagnose the pods of an attempt: why its Ray cluster does not start, or why its containers die. Pure: no I/O.

The operator lists the pods of the current attempt with the label selector `pod_selector` returns
(`sftjob.dev/name=<job>,sftjob.dev/attempt=<n>`: `build_rayjob` puts both labels on the head, worker and
submitter pod templates; KubeRay's own `ray.io/cluster=<RayCluster name>` would miss the submitter pod and needs
the RayCluster's name, which KubeRay reports only once it has created the cluster). `diagnose_pods` turns what the
scheduler and the kubelet wrote into each pod's status into `PodProblem`s, each naming the pod and container, the
reason, the scheduler's or kubelet's message, and what to do. It reads the core/v1 `PodStatus` fields:

- `conditions[type=PodScheduled]` with `status: "False"`, `reason: Unschedulable` and the scheduler's message
  (`0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: ...`);
- `initContainerStatuses[]` and `containerStatuses[]`: `state.waiting.reason` `ErrImagePull` / `ImagePullBackOff`
  / `InvalidImageName` (reported as ImagePullBackOff), `CreateContainerConfigError` (a Secret or key the pod needs
  is missing), `CrashLoopBackOff` (with the last exit from `lastState.terminated`), and `OOMKilled` as
  `state.terminated.reason` or `lastState.terminated.reason` (the memory limit comes from the pod's spec).

Messages leave out what changes from one look to the next while nothing else does (the kubelet's growing
back-off delay, the restart count), so a problem that persists does not rewrite the SFTJob's status at every look.

`should_list_pods` is the throttle: which reconciles list pods at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sftjob_api.codes import ErrorCode, Reason
from sftjob_operator.rayjob import LABEL_ATTEMPT, LABEL_NAME, WORKER_CONTAINER

# The kubelet's waiting reasons of a container whose image cannot be pulled.
_PULL_REASONS = frozenset({"ErrImagePull", ErrorCode.IMAGE_PULL_BACK_OFF, "InvalidImageName"})
# The order in which problems are reported (the condition's reason is the first's): what blocks every pod
# first, then what the spec can fix, then what needs the logs, then capacity.
PRIORITY = (
    ErrorCode.IMAGE_PULL_BACK_OFF,
    ErrorCode.CREATE_CONTAINER_CONFIG_ERROR,
    Reason.OOM_KILLED,
    ErrorCode.CRASH_LOOP_BACK_OFF,
    ErrorCode.UNSCHEDULABLE,
)
# At most this many further problems are named after the first one in a summary.
MAX_LISTED = 5
# While an attempt runs with pods that looked healthy, they are listed once every this many progress intervals
# (5 minutes at the default 30 s): a crash loop or an OOM kill shows within minutes, at one list per job.
RUNNING_CHECK_INTERVALS = 10
# Kubelet messages are cut to this many characters (an image pull error can quote a whole registry answer).
_MAX_DETAIL = 300


@dataclass(frozen=True)
class PodProblem:
    """One thing wrong with one pod (or one of its containers)."""

    reason: str
    """ImagePullBackOff, CreateContainerConfigError, OOMKilled, CrashLoopBackOff or Unschedulable."""
    pod: str
    """The pod's name."""
    container: str | None
    """The container's name; None for the pod as a whole (Unschedulable)."""
    detail: str
    """What the scheduler or the kubelet said."""
    advice: str
    """What to do about it."""

    def describe(self) -> str:
        """One sentence: where, what, the scheduler's or kubelet's words, and what to do."""
        where = f"pod {self.pod}" + (f" container {self.container}" if self.container else "")
        detail = f": {self.detail}" if self.detail else ""
        return f"{where}: {self.reason}{detail}; {self.advice}"


def pod_selector(job_name: str, attempt: int) -> str:
    """The label selector of the pods of one attempt (head, workers and the submitter)."""
    return f"{LABEL_NAME}={job_name},{LABEL_ATTEMPT}={attempt}"


def should_list_pods(
    *,
    attempt_phase: str,
    started: bool,
    suspended: bool,
    unhealthy: bool,
    timer: bool,
    since_last: float | None,
    interval: float,
) -> bool:
    """Whether this reconcile lists the attempt's pods.

    - starting (Pending once KubeRay reports any state, Initializing): at every progress interval (timer
      reconciles only, not on each of KubeRay's status changes), as that is where pods get stuck;
    - running: at every interval while the `PodsHealthy` condition is False (to see it clear), else once every
      `RUNNING_CHECK_INTERVALS` intervals (the operator's own memory of its last look: after a restart, at once);
    - failed: once, in the reconcile that records the failure, to name its cause (an OOM kill);
    - suspended, queued, succeeded: never.

    Args:
        attempt_phase: The attempt's state as `classify_rayjob` reports it (Pending, Initializing, Running, ...).
        started: Whether KubeRay has picked the RayJob up (any `jobDeploymentStatus`): before, it has no pods.
        suspended: Whether the RayJob is suspended (by the spec or by Kueue): it has no pods.
        unhealthy: Whether the status shows `PodsHealthy=False`.
        timer: Whether the progress timer triggered the reconcile.
        since_last: Seconds since the operator last listed this job's pods; None when it has not.
        interval: The progress interval in seconds.

    Returns:
        True to list the pods.
    """
    if suspended or not started:
        return False
    if attempt_phase == "Failed":
        return True
    if not timer:
        return False
    if attempt_phase in ("Pending", "Initializing"):
        return True
    if attempt_phase == "Running":
        return unhealthy or since_last is None or since_last >= RUNNING_CHECK_INTERVALS * interval
    return False


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _memory_limit(pod: Mapping[str, Any], container: str) -> str | None:
    spec = pod.get("spec") or {}
    for entry in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if entry.get("name") == container:
            limit = ((entry.get("resources") or {}).get("limits") or {}).get("memory")
            return str(limit) if limit is not None else None
    return None


def _logs(namespace: str, pod: str, container: str) -> str:
    return f"kubectl logs -n {namespace} {pod} -c {container} --previous"


def _exit(terminated: Mapping[str, Any]) -> str:
    code = terminated.get("exitCode")
    reason = terminated.get("reason")
    text = f"last exit code {code}" + (f" ({reason})" if reason else "")
    message = terminated.get("message")
    return text + (f": {_clip(str(message))}" if message else "")


def _container_problem(pod: Mapping[str, Any], status: Mapping[str, Any], namespace: str) -> PodProblem | None:
    name = str((pod.get("metadata") or {}).get("name") or "")
    container = str(status.get("name") or "")
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    waiting_reason = str(waiting.get("reason") or "")
    waiting_message = str(waiting.get("message") or "")
    last = (status.get("lastState") or {}).get("terminated") or {}
    terminated = state.get("terminated") or {}
    if waiting_reason in _PULL_REASONS:
        image = status.get("image") or ""
        detail = f"image {image!r}: {_clip(waiting_message or waiting_reason)}"
        advice = (
            "check the image name (spec.compute.image, or the operator's trainer image when unset) and, for a "
            "private registry, that the pods' service account (spec.compute.serviceAccountName) has an "
            "imagePullSecret for it"
        )
        return PodProblem(ErrorCode.IMAGE_PULL_BACK_OFF, name, container, detail, advice)
    if waiting_reason == ErrorCode.CREATE_CONTAINER_CONFIG_ERROR:
        advice = (
            "create the Secret (or add the key) the message names in the job's namespace: the Secrets of "
            "spec.model/dataset/output.secretRef"
        )
        return PodProblem(ErrorCode.CREATE_CONTAINER_CONFIG_ERROR, name, container, _clip(waiting_message), advice)
    oom = next((t for t in (terminated, last) if t.get("reason") == Reason.OOM_KILLED), None)
    if oom is not None:
        limit = _memory_limit(pod, container)
        detail = "killed for using more memory than its limit" + (f" ({limit})" if limit else "")
        if container == WORKER_CONTAINER:
            advice = (
                "raise spec.compute.memoryPerWorker, or lower hyperparameters.perDeviceBatchSize or "
                f"dataset.maxSeqLength; its last output: {_logs(namespace, name, container)}"
            )
        else:
            advice = f"read its last output: {_logs(namespace, name, container)}"
        return PodProblem(Reason.OOM_KILLED, name, container, detail, advice)
    if waiting_reason == ErrorCode.CRASH_LOOP_BACK_OFF:
        detail = _exit(last) if last else "the container keeps exiting"
        return PodProblem(
            ErrorCode.CRASH_LOOP_BACK_OFF, name, container, detail,
            f"read its logs: {_logs(namespace, name, container)}",
        )
    return None


def _unschedulable(pod: Mapping[str, Any]) -> PodProblem | None:
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == ErrorCode.UNSCHEDULABLE
        ):
            name = str((pod.get("metadata") or {}).get("name") or "")
            advice = (
                "lower spec.compute (numWorkers, gpusPerWorker, cpusPerWorker, memoryPerWorker) or add nodes, and "
                "check spec.compute.nodeSelector and tolerations against the nodes' labels and taints"
            )
            return PodProblem(ErrorCode.UNSCHEDULABLE, name, None, _clip(str(condition.get("message") or "")), advice)
    return None


def diagnose_pods(pods: Iterable[Mapping[str, Any]], *, namespace: str) -> list[PodProblem]:
    """What is wrong with an attempt's pods, most urgent first (see `PRIORITY`); empty when nothing is.

    Args:
        pods: The pods as the API server returns them (`items` of a pod list).
        namespace: Their namespace (for the `kubectl logs` command in the advice).

    Returns:
        The problems, sorted by priority, then pod, then container.
    """
    problems: list[PodProblem] = []
    for pod in pods:
        unschedulable = _unschedulable(pod)
        if unschedulable is not None:
            problems.append(unschedulable)
        status = pod.get("status") or {}
        for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            problem = _container_problem(pod, container, namespace)
            if problem is not None:
                problems.append(problem)
    return sorted(problems, key=lambda p: (PRIORITY.index(p.reason), p.pod, p.container or ""))


def summarize(problems: list[PodProblem]) -> tuple[str, str]:
    """The reason and message of the `PodsHealthy=False` condition for a non-empty list of problems.

    Args:
        problems: As `diagnose_pods` returns them (the first is the most urgent).

    Returns:
        The first problem's reason, and its description followed by the pods and reasons of the others.
    """
    first, rest = problems[0], problems[1:]
    message = first.describe()
    if rest:
        named = ", ".join(f"{p.pod} {p.reason}" for p in rest[:MAX_LISTED])
        more = f" and {len(rest) - MAX_LISTED} more" if len(rest) > MAX_LISTED else ""
        message += f" (also: {named}{more})"
    return first.reason, message


__all__ = [
    "PRIORITY",
    "RUNNING_CHECK_INTERVALS",
    "PodProblem",
    "diagnose_pods",
    "pod_selector",
    "should_list_pods",
    "summarize",
]
