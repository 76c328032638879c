"""Where the artifacts go (`spec.output`, `status.output`) and experiment tracking (`spec.tracking`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sftjob_api.base import ApiModel, Name, StorageUri, Text
from sftjob_api.types.common import HttpUrl, SecretReference


class OutputSpec(ApiModel):
    """Where the artifacts go."""

    uri: StorageUri
    """`s3://bucket/prefix` or a filesystem path. Artifacts land in `<uri>/<namespace>/<name>/`
    (local runs: `<uri>/<name>/`)."""

    save_adapter: bool = True
    """Save the adapter (`adapter/`, PEFT format) for adapter methods."""

    merge_adapter: bool = False
    """Also save the base with the adapter merged (`model/`); QLoRA merges into the unquantised base."""

    secret_ref: SecretReference | None = None
    """Secret with credentials to write the output."""

    select: Literal["last", "best"] = "last"
    """Which weights are exported: `last` (the end of training) or `best` (the checkpoint with the lowest
    evaluation loss; needs validation data, and evaluation at every checkpoint: `evalInterval` equal to
    `checkpointing.interval`, which `best` sets when they are unset)."""


class MlflowTrackingSpec(ApiModel):
    """An MLflow tracking server that receives the job's run."""

    tracking_uri: HttpUrl
    """Base URL of the MLflow tracking server (e.g. `http://mlflow.mlops.svc:5000`). Artifacts go through the
    server (`mlflow server --serve-artifacts`, its default), so the trainer needs no artifact-store credentials."""

    experiment: Name = "sftjob"
    """The experiment the run belongs to (created when missing)."""

    secret_ref: SecretReference | None = None
    """Secret with the server's credentials: `MLFLOW_TRACKING_TOKEN` (a bearer token), or
    `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD` (basic auth). Unset: no authentication."""


class WandbTrackingSpec(ApiModel):
    """A Weights & Biases project that receives the job's run."""

    project: Name
    """The W&B project."""

    entity: Name | None = None
    """The W&B team or user owning the project (unset: the API key's default entity)."""

    secret_ref: SecretReference | None = None
    """Secret holding `WANDB_API_KEY` (and `WANDB_BASE_URL` for a self-hosted server). Not needed offline."""

    mode: Literal["online", "offline"] = "online"
    """`online` streams to the W&B server; `offline` writes the run's files under `<output>/wandb/` without any
    network (upload them later with `wandb sync`)."""


class TrackingSpec(ApiModel):
    """Experiment tracking: one run per job, continued by every attempt, each step logged once."""

    mlflow: MlflowTrackingSpec | None = None
    """Log to an MLflow tracking server: hyperparameters as params, training and evaluation metrics per step,
    and the dataset statistics, evaluation results and `manifest.json` as artifacts at the end."""

    tensorboard: bool = False
    """Write TensorBoard event files (the same metrics) under `<output>/tensorboard/`."""

    wandb: WandbTrackingSpec | None = None
    """Log to Weights & Biases (the same params, metrics and artifacts)."""


class OutputStatus(ApiModel):
    """The artifacts; filled only once `manifest.json` exists."""

    uri: StorageUri
    """The job's output directory."""

    adapter_uri: StorageUri | None = None
    """The PEFT adapter (`adapter/`)."""

    model_uri: StorageUri | None = None
    """Full or merged weights (`model/`)."""

    manifest_uri: StorageUri | None = None
    """`manifest.json`: sha256 of every file, resolved settings, versions."""

    size_bytes: int | None = Field(default=None, ge=0)
    """Total size of the artifacts."""


class MlflowRunStatus(ApiModel):
    """The job's MLflow run."""

    run_id: Name
    """The run id; every attempt of the job logs to this run."""

    experiment_id: Name
    """The id of the run's experiment."""

    url: str = Field(max_length=2048)
    """The run's page on the tracking server."""


class WandbRunStatus(ApiModel):
    """The job's Weights & Biases run."""

    run_id: Name
    """The run id; every attempt of the job resumes this run."""

    mode: Literal["online", "offline"]
    """`offline`: the run's files are under `<output>/wandb/`, to upload with `wandb sync`."""

    url: str | None = Field(default=None, max_length=2048)
    """The run's page (online mode only)."""


class TrackingStatus(ApiModel):
    """Where the job's experiment tracking runs are (`spec.tracking`)."""

    mlflow: MlflowRunStatus | None = None
    """The MLflow run."""

    wandb: WandbRunStatus | None = None
    """The Weights & Biases run."""

    tensorboard_uri: StorageUri | None = None
    """The directory of the TensorBoard event files (`tensorboard --logdir` it, or its synced copy)."""

    message: Text | None = None
    """Why a tracker is missing: its server could not be reached (training goes on without it)."""
