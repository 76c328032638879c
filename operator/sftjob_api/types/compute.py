"""Where the workers run (`spec.compute`) and the job's lifecycle (`spec.runPolicy`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sftjob_api.base import ApiModel, Name
from sftjob_api.types.common import Quantity


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration)."""

    key: Name | None = None
    """Taint key; empty with operator Exists matches every taint."""

    operator: Literal["Exists", "Equal"] = "Equal"
    """How `value` is compared."""

    value: Name | None = None
    """Taint value for operator Equal."""

    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""

    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


class ComputeSpec(ApiModel):
    """Where and on what the Ray Train workers run."""

    num_workers: int = Field(default=1, ge=1, le=1024)
    """Ray Train workers (data-parallel ranks)."""

    gpus_per_worker: int = Field(default=1, ge=0, le=16)
    """GPUs per worker (`nvidia.com/gpu`); 0 trains on CPU."""

    cpus_per_worker: int = Field(default=4, ge=1, le=512)
    """CPU cores per worker."""

    memory_per_worker: Quantity = "32Gi"
    """Memory per worker as a Kubernetes quantity."""

    image: Name | None = None
    """Trainer image; unset uses the operator's default."""

    node_selector: dict[str, Name] = Field(default_factory=dict, max_length=64)
    """Node labels the worker pods must match."""

    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations of the worker pods (e.g. for tainted GPU nodes)."""

    priority_class_name: Name | None = None
    """PriorityClass of the Ray pods."""

    service_account_name: Name | None = None
    """ServiceAccount of the Ray pods (e.g. for IAM roles for service accounts)."""


class RunPolicySpec(ApiModel):
    """Lifecycle: suspension, deadlines, retries, cleanup and queueing."""

    suspend: bool = False
    """Suspend the job: no Ray pods run while true; resuming continues from the latest checkpoint."""

    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job with DeadlineExceeded when it has run this long."""

    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Retries after retryable failures (node lost, preemption, NCCL timeout)."""

    retry_on_out_of_memory: bool = False
    """Also retry attempts that ran out of memory (they usually fail again with the same settings)."""

    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the SFTJob this long after it finished; the artifacts stay."""

    queue_name: Name | None = None
    """Kueue LocalQueue that admits the job (`kueue.x-k8s.io/queue-name`)."""

    startup_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail an attempt whose Ray cluster has not started running this long after KubeRay began creating it
    (the RayJob's `preRunningDeadlineSeconds`, counted from its `status.startTime`). The failure is not retried
    and names what the pods were stuck on (Unschedulable, ImagePullBackOff, CrashLoopBackOff, ...). Unset: an
    attempt may wait for its pods forever (the `PodsHealthy` condition still says why)."""

    stall_timeout_seconds: int | None = Field(default=None, ge=1)
    """Stop and retry (within `backoffLimit`) an attempt whose trainer has not updated `progress.json` for this
    long while it runs: a hung trainer gets a `Stalled` condition and a new attempt that resumes from the latest
    checkpoint. The trainer writes at least every step and at each phase change; set this above the longest
    quiet stretch (loading the model, dataset preparation, an evaluation pass, a checkpoint upload)."""
