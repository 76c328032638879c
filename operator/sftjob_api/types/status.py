"""The observed state (`status`), written by the operator only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sftjob_api.base import ApiModel, Name, StorageUri, Text
from sftjob_api.types.common import MAX_HISTORY
from sftjob_api.types.dataset import MAX_SOURCES
from sftjob_api.types.distillation import DistillationStats
from sftjob_api.types.evaluation import EvaluationStatus
from sftjob_api.types.output import OutputStatus, TrackingStatus

Phase = Literal[
    "Pending", "Queued", "Initializing", "Generating", "Running", "Exporting", "Succeeded", "Failed", "Suspended"
]


class Condition(ApiModel):
    """A condition in the shape of metav1.Condition."""

    type: Name
    """Condition type in CamelCase: `Validated`, `Running`, `Succeeded`, `Failed`, `Suspended`, `Degraded`
    (succeeded, but the outputs are marked: e.g. reason `ForgettingExceeded`)."""

    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""

    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """Machine-readable CamelCase reason, e.g. `InvalidSpec`, `DeadlineExceeded`."""

    message: Text = ""
    """Human-readable detail."""

    last_transition_time: str = Field(json_schema_extra={"format": "date-time"}, max_length=64)
    """When `status` last changed (RFC 3339)."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The `.metadata.generation` the condition was computed from."""


class AttemptRecord(ApiModel):
    """One attempt: a RayJob and how it ended."""

    attempt: int = Field(ge=1)
    """Attempt number, from 1."""

    ray_job_name: Name
    """The attempt's RayJob."""

    result: Literal["Running", "Succeeded", "Failed", "Suspended"] = "Running"
    """How the attempt ended (Running while it runs)."""

    reason: Name | None = None
    """Why it ended, e.g. `NodeLost`, `OutOfMemory`."""

    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the RayJob was created."""

    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the attempt ended."""

    resumed_from_step: int | None = Field(default=None, ge=0)
    """The checkpoint step the attempt resumed from."""


class RayJobStatus(ApiModel):
    """The current attempt's RayJob as KubeRay reports it."""

    name: Name
    """RayJob name (`<sftjob>-a<attempt>`)."""

    job_status: Name | None = None
    """Ray job status: PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED."""

    job_deployment_status: Name | None = None
    """KubeRay deployment status: Initializing, Running, Complete, Failed, Suspended, ..."""

    dashboard_url: Name | None = Field(default=None, alias="dashboardURL")
    """Ray dashboard address."""


class ResolvedSettings(ApiModel):
    """The values the trainer chose for `auto` and unset fields."""

    learning_rate: float | None = None
    """Peak learning rate used."""

    per_device_batch_size: int | None = None
    """Examples per worker per forward pass."""

    gradient_accumulation_steps: int | None = None
    """Forward passes per optimizer step on each worker."""

    global_batch_size: int | None = None
    """perDeviceBatchSize x gradientAccumulationSteps x numWorkers."""

    num_workers: int | None = None
    """Ray Train workers."""

    precision: Name | None = None
    """bf16, fp16 or fp32."""

    gradient_checkpointing: bool | None = None
    """Whether activations were recomputed."""

    max_seq_length: int | None = None
    """Longest example in tokens."""

    batching: Name | None = None
    """How batches were formed: `packed` (padding-free) or `length_grouped` (padded)."""

    attention: Name | None = None
    """Attention implementation, e.g. `sdpa`, `flash_attention_2`."""

    kernels: Name | None = None
    """Fused training kernels: `liger` (Liger's Triton kernels, chosen on CUDA when liger-kernel is
    installed) or `none`."""

    chat_template: Name | None = None
    """The template that rendered conversations: `tokenizer`, a named template or `inline`."""

    total_steps: int | None = None
    """Optimizer steps planned."""

    device: Name | None = None
    """Device type of the workers: `cuda` or `cpu`."""


class DatasetStats(ApiModel):
    """What the data pipeline made of the dataset."""

    format: Name | None = None
    """The detected or configured schema."""

    rows: int | None = None
    """Rows read from the training file."""

    train_examples: int | None = None
    """Examples trained on after filtering."""

    validation_examples: int | None = None
    """Held-out examples."""

    dropped: dict[str, int] = Field(default_factory=dict, max_length=32)
    """Dropped rows by reason (duplicate, empty_response, too_long, ...)."""

    truncated: int | None = None
    """Examples cut to maxSeqLength."""

    tokens: int | None = None
    """Tokens in the training examples."""

    trainable_tokens: int | None = None
    """Tokens that carry loss."""

    sha256: Name | None = None
    """Digest of the training file."""

    cache: Name | None = None
    """The trainer's data cache: `hit <key>` (prepared data reused, nothing re-tokenized) or
    `miss <key>` (prepared and stored for the next attempt); `<key>` is the first 12 hex digits of
    the content hash."""

    sources: list[SourceStats] | None = Field(default=None, max_length=MAX_SOURCES)
    """Per source of a mixture (`dataset.train.sources`): what was read, requested and realised."""


class SourceStats(ApiModel):
    """One source of a training mixture, as drawn."""

    name: Name
    """The source's name (`sources[].name`, or the one derived from its URI)."""

    format: Name | None = None
    """The detected or configured schema of this source."""

    files: int = Field(default=0, ge=0)
    """Files read (a glob's shards; fewer than `filesMatched` when a `samples` count needed only some)."""

    files_matched: int = Field(default=0, ge=0)
    """Files the URI or glob matched."""

    rows: int = Field(default=0, ge=0)
    """Rows read from this source's files."""

    available: int = Field(default=0, ge=0)
    """Usable distinct training examples the mixture was drawn from (after format checks, quality filter,
    de-duplication and the validation hold-out)."""

    weight: float | None = None
    """The requested weight, if any."""

    samples: int | None = None
    """The requested count, if any."""

    train_examples: int = Field(default=0, ge=0)
    """Training examples drawn from this source (after the length policy); above `available` when repeated."""

    proportion: float = Field(default=0.0, ge=0, le=1)
    """Realised share of the training examples."""

    tokens: int = Field(default=0, ge=0)
    """Training tokens from this source."""

    validation_examples: int = Field(default=0, ge=0)
    """Held-out examples of this source (with `validationSplit`)."""

    eval_loss: float | None = None
    """Evaluation loss on this source's held-out examples, after training."""


class Progress(ApiModel):
    """Training progress, from the trainer's progress.json."""

    percentage: float | None = Field(default=None, ge=0, le=100)
    """step / totalSteps in percent."""

    step: int | None = Field(default=None, ge=0)
    """Optimizer steps done."""

    total_steps: int | None = Field(default=None, ge=0)
    """Optimizer steps planned."""

    epoch: float | None = Field(default=None, ge=0)
    """Fractional epoch."""

    trained_tokens: int | None = Field(default=None, ge=0)
    """Loss-bearing tokens processed."""

    tokens_per_second: float | None = Field(default=None, ge=0)
    """Recent throughput in loss-bearing tokens per second, all workers."""

    skipped_batches: int | None = Field(default=None, ge=0)
    """Batches the loss-spike guard (`hyperparameters.lossSpike`) skipped: their steps applied no update."""

    estimated_finish_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When training is expected to end."""

    eta: Name | None = None
    """Time left as a duration, e.g. `12m30s` (the ETA column)."""

    last_update_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the trainer last wrote progress."""


class Metrics(ApiModel):
    """Latest training metrics."""

    train_loss: float | None = None
    """Training loss (mean over the last logging interval)."""

    eval_loss: float | None = None
    """Loss on the validation data at the last evaluation."""

    learning_rate: float | None = None
    """Current learning rate."""

    grad_norm: float | None = None
    """Gradient norm before clipping."""

    token_accuracy: float | None = None
    """Fraction of loss-bearing validation tokens predicted exactly."""


class CheckpointRef(ApiModel):
    """A saved checkpoint."""

    step: int = Field(ge=0)
    """Optimizer step of the checkpoint."""

    uri: StorageUri
    """Directory of the checkpoint."""

    eval_loss: float | None = None
    """Evaluation loss at that step, if evaluated."""

    trained_tokens: int | None = Field(default=None, ge=0)
    """Loss-bearing tokens trained up to that step; a run resumed from the checkpoint counts on from it."""


class ErrorStatus(ApiModel):
    """Why the job (or its last attempt) failed."""

    code: Name
    """Stable machine-readable code, e.g. `InvalidSpec`, `DatasetUnreadable`, `OutOfMemory`."""

    message: Text
    """What went wrong and what to do."""

    field: Name | None = None
    """The spec field (or file:line) at fault."""

    retryable: bool = False
    """Whether another attempt may succeed."""


class SFTJobStatus(ApiModel):
    """Observed state, written by the operator only."""

    phase: Phase = "Pending"
    """Pending, Queued, Initializing, Generating (distillation), Running, Exporting, Succeeded, Failed or
    Suspended."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The `.metadata.generation` this status describes."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations, one per condition type."""

    attempt: int | None = Field(default=None, ge=0)
    """The current attempt (1 is the first)."""

    attempts: list[AttemptRecord] = Field(default_factory=list, max_length=MAX_HISTORY)
    """The most recent attempts, oldest first."""

    ray_job: RayJobStatus | None = None
    """The current attempt's RayJob."""

    resolved: ResolvedSettings | None = None
    """The values the trainer chose for `auto` and unset fields."""

    dataset: DatasetStats | None = None
    """Dataset statistics from the trainer's preflight."""

    distillation: DistillationStats | None = None
    """What the distillation step generated and kept (`spec.distillation`): prompts, answers kept and dropped by
    reason, teacher requests and tokens, the cache state."""

    progress: Progress | None = None
    """Training progress."""

    metrics: Metrics | None = None
    """Latest metrics."""

    evaluation: EvaluationStatus | None = None
    """Evaluation results: forgetting on the reference set."""

    tracking: TrackingStatus | None = None
    """The experiment tracking runs (MLflow, Weights & Biases) and the TensorBoard directory, with their URLs."""

    best_checkpoint: CheckpointRef | None = None
    """The checkpoint with the lowest evaluation loss."""

    checkpoints: list[CheckpointRef] = Field(default_factory=list, max_length=MAX_HISTORY)
    """The most recent checkpoints, oldest first."""

    output: OutputStatus | None = None
    """Artifacts, once complete."""

    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the first attempt started."""

    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the job reached Succeeded or Failed."""

    error: ErrorStatus | None = None
    """Why the job failed."""
