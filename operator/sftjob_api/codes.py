"""The typed vocabulary both sides share: error codes and condition reasons, with the retry sets beside them.

A code is written by one side (the trainer in `progress.json`, or the operator from what KubeRay and the pods
say) and read by the other (the operator's retry policy, `sftjob run`'s exit status, the status a user reads).
Both import these enums, so no code is spelled twice. Members are `StrEnum`s: they serialise as their plain
string on the wire (`status.error.code`, condition reasons, event reasons).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why an attempt or a job failed: `status.error.code` and `progress.json`'s `error.code`."""

    INVALID_SPEC = "InvalidSpec"
    """The SFTJob does not validate, or names something that cannot run (a field and a message say which)."""
    INVALID_DATASET = "InvalidDataset"
    """A dataset row is malformed or does not fit the schema (the message names file:line)."""
    DATASET_UNREADABLE = "DatasetUnreadable"
    """The dataset (or an evaluation task) is missing or cannot be read."""
    MODEL_UNREADABLE = "ModelUnreadable"
    """The base model is missing or cannot be loaded."""
    ACCESS_DENIED = "AccessDenied"
    """The storage credentials are refused for this object."""
    MISSING_CREDENTIALS = "MissingCredentials"
    """No storage credentials were given where the object needs some."""
    PREFLIGHT_FAILED = "PreflightFailed"
    """A check before training (sequence length, batch shape, template) found the job cannot train."""
    UNSUPPORTED_DEVICE = "UnsupportedDevice"
    """The method or precision needs a device the workers do not have (QLoRA without CUDA, bf16 on CPU)."""
    FORGETTING_EXCEEDED = "ForgettingExceeded"
    """The tuned model lost more on the reference set than `evaluation.maxForgetting` allows (`onForgetting:
    fail`). Another attempt would train the same model again."""
    UNSCHEDULABLE = "Unschedulable"
    """The workers ask for more than the cluster has (`sftjob run`: this machine; the operator: KubeRay's
    pre-running deadline passed). The same request cannot be placed again."""
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    """The attempt's pods could not pull their image by `runPolicy.startupDeadlineSeconds`."""
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    """The attempt's pods kept crashing on start by `runPolicy.startupDeadlineSeconds`."""
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    """The attempt's pods name a Secret or key that does not exist."""
    NODE_LOST = "NodeLost"
    """A node under the workers went away."""
    PREEMPTED = "Preempted"
    """The workers were preempted."""
    NCCL_TIMEOUT = "NcclTimeout"
    """A collective between workers timed out."""
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    """The object store stayed unreachable after the retries."""
    WORKER_CRASHED = "WorkerCrashed"
    """A worker or the driver died without a report of its own."""
    CANCELLED = "Cancelled"
    """SIGINT or SIGTERM stopped the trainer (Ctrl-C, `kill`, a deleted pod). Retried: in a cluster the pod's
    SIGTERM comes from a node drain or preemption as often as from a user, and a user stops a job by suspending
    or deleting the SFTJob, which the operator does not retry. `sftjob run` never retries; rerunning resumes."""
    STALLED = "Stalled"
    """progress.json was not updated for `runPolicy.stallTimeoutSeconds` while the attempt ran: the operator
    stops the attempt and retries it (a hung collective or storage call rarely repeats)."""
    TEACHER_UNAVAILABLE = "TeacherUnavailable"
    """The distillation teacher stayed unreachable after its retries. What was generated is kept under the
    output, and the next attempt continues from it."""
    OUT_OF_MEMORY = "OutOfMemory"
    """The workers ran out of memory. It repeats with the same settings: retried only with
    `runPolicy.retryOnOutOfMemory`."""
    NON_FINITE_LOSS = "NonFiniteLoss"
    """The loss or gradient norm became NaN or infinite; the trainer stopped before the optimizer applied it.
    The trainer decides `retryable` itself: true the first time in a job, false once progress.json's
    `nonFiniteSteps` records an earlier one (the same data and settings diverge again)."""
    SUBMISSION_FAILED = "SubmissionFailed"
    """KubeRay could not submit the Ray job."""
    STOPPED = "Stopped"
    """KubeRay stopped the Ray job."""
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    """`runPolicy.activeDeadlineSeconds` passed."""
    RAY_JOB_INVALID = "RayJobInvalid"
    """KubeRay rejected the RayJob the operator rendered (its ValidationFailed)."""
    OUTPUT_INCOMPLETE = "OutputIncomplete"
    """The trainer said it succeeded, but manifest.json never appeared under the output."""
    RAYJOB_DELETED = "RayJobDeleted"
    """The attempt's RayJob was deleted by someone other than the operator while the attempt ran (the operator
    deletes RayJobs only of jobs that end). The next attempt resumes from the latest checkpoint."""


RETRYABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.NODE_LOST,
        ErrorCode.PREEMPTED,
        ErrorCode.NCCL_TIMEOUT,
        ErrorCode.STORAGE_UNAVAILABLE,
        ErrorCode.WORKER_CRASHED,
        ErrorCode.CANCELLED,
        ErrorCode.STALLED,
        ErrorCode.TEACHER_UNAVAILABLE,
        ErrorCode.RAYJOB_DELETED,
    }
)
"""Codes the operator retries (up to `runPolicy.backoffLimit`): the same job may well succeed next time."""

USER_ERRORS: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.INVALID_SPEC,
        ErrorCode.INVALID_DATASET,
        ErrorCode.DATASET_UNREADABLE,
        ErrorCode.MODEL_UNREADABLE,
        ErrorCode.ACCESS_DENIED,
        ErrorCode.MISSING_CREDENTIALS,
        ErrorCode.PREFLIGHT_FAILED,
        ErrorCode.UNSUPPORTED_DEVICE,
        ErrorCode.UNSCHEDULABLE,
        ErrorCode.IMAGE_PULL_BACK_OFF,
        ErrorCode.CRASH_LOOP_BACK_OFF,
        ErrorCode.CREATE_CONTAINER_CONFIG_ERROR,
    }
)
"""Codes that only the user can fix (the spec, the data, the credentials, the image or the request): never
retried, and `sftjob run` exits 2 on them."""

NOT_RETRYABLE: frozenset[ErrorCode] = USER_ERRORS | {ErrorCode.FORGETTING_EXCEEDED}
"""Codes never retried: the user errors, and a model that forgot too much (another attempt trains it again)."""


class Reason(StrEnum):
    """Reasons of conditions and events that are not error codes."""

    JUDGE_UNAVAILABLE = "JudgeUnavailable"
    """The judge (`evaluation.judge`) stayed unreachable after its retries: the job still succeeds; the
    judgement is missing from the report, never the training."""
    OOM_KILLED = "OOMKilled"
    """A container of the attempt was OOMKilled (a failure without a trainer report becomes OutOfMemory)."""
    VALIDATED = "Validated"
    """The condition that says whether the spec validates, and the event of a spec found valid."""
    VALID = "Valid"
    """The reason of `Validated=True`."""
    DEGRADED = "Degraded"
    """The condition of a job that succeeded with outputs marked degraded (`evaluation.onForgetting: degrade`)."""
    PODS_HEALTHY = "PodsHealthy"
    """The condition the pod diagnosis sets: False with the most urgent problem's reason while one shows, True
    once it cleared; absent on a job whose pods never showed one."""
    HEALTHY = "Healthy"
    """The reason of `PodsHealthy=True` once a problem the pods showed cleared."""
    PROGRESSING = "Progressing"
    """The reason of `Stalled=False` once the attempt after a stall writes progress.json again."""
    RESUMING = "Resuming"
    """The reason of a Pending job whose RayJob's `suspend` is being cleared (KubeRay brings the cluster back)."""
    RESUMED = "Resumed"
    """The reason of `Suspended=False`, and the event of a job that left Suspended."""
    RETRYING = "Retrying"
    """The Warning event of a failed attempt that the next attempt retries."""
    CHECKPOINT_SAVED = "CheckpointSaved"
    """The event of a checkpoint newer than any the status listed."""
    RAYJOB_CREATED = "RayJobCreated"
    """The event of an attempt's RayJob the operator created."""


__all__ = ["NOT_RETRYABLE", "RETRYABLE", "USER_ERRORS", "ErrorCode", "Reason"]
