"""The SFTJob resource: its spec, metadata and status, and `parse_sftjob`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from sftjob_api.base import ApiModel, CelRule
from sftjob_api.types.common import ObjectMeta
from sftjob_api.types.compute import ComputeSpec, RunPolicySpec
from sftjob_api.types.dataset import DatasetSpec
from sftjob_api.types.distillation import DISTILLED_TRAIN_URI, DistillationSpec
from sftjob_api.types.evaluation import EvaluationSpec
from sftjob_api.types.hyperparameters import CheckpointingSpec, HyperparametersSpec
from sftjob_api.types.model import MethodSpec, ModelSpec
from sftjob_api.types.output import OutputSpec, TrackingSpec
from sftjob_api.types.status import SFTJobStatus


class SFTJobSpec(ApiModel):
    """The desired fine-tuning run."""

    cel_rules = (
        CelRule(
            rule="self.model == oldSelf.model",
            message="model is immutable; create a new SFTJob",
            field_path=".model",
        ),
        CelRule(
            rule="self.dataset == oldSelf.dataset",
            message="dataset is immutable; create a new SFTJob",
            field_path=".dataset",
        ),
        CelRule(
            rule="self.method == oldSelf.method",
            message="method is immutable; create a new SFTJob",
            field_path=".method",
        ),
        CelRule(
            rule="self.hyperparameters == oldSelf.hyperparameters",
            message="hyperparameters are immutable; create a new SFTJob",
            field_path=".hyperparameters",
        ),
        CelRule(
            rule="self.output == oldSelf.output",
            message="output is immutable; create a new SFTJob",
            field_path=".output",
        ),
        CelRule(
            rule="!has(self.output.select) || self.output.select != 'best' || has(self.dataset.validation) "
                 "|| has(self.dataset.validationSplit)",
            message="output.select best picks the checkpoint with the lowest evaluation loss: set dataset.validation "
                    "or dataset.validationSplit",
            field_path=".output.select",
        ),
        CelRule(
            rule="has(self.distillation) == has(oldSelf.distillation) "
                 "&& (!has(self.distillation) || self.distillation == oldSelf.distillation)",
            message="distillation is immutable; create a new SFTJob",
            field_path=".distillation",
        ),
        CelRule(
            rule=f"!has(self.distillation) || (has(self.dataset.train.uri) "
                 f"&& self.dataset.train.uri == '{DISTILLED_TRAIN_URI}')",
            message="with distillation the job trains on the teacher's answers (<output>/data/distilled.jsonl): set "
                    f"dataset.train.uri: {DISTILLED_TRAIN_URI}",
            field_path=".dataset.train.uri",
        ),
        CelRule(
            rule=f"has(self.distillation) || !has(self.dataset.train.uri) "
                 f"|| self.dataset.train.uri != '{DISTILLED_TRAIN_URI}'",
            message=f"dataset.train.uri '{DISTILLED_TRAIN_URI}' names the teacher's answers: set distillation, or "
                    "point dataset.train.uri at a file",
            field_path=".dataset.train.uri",
        ),
        CelRule(
            rule="!has(self.distillation) || !has(self.dataset.schema) || self.dataset.schema == 'auto' "
                 "|| self.dataset.schema == 'messages'",
            message="distilled data is in the messages schema: set dataset.schema to auto or messages",
            field_path=".dataset.schema",
        ),
    )

    model: ModelSpec
    """The base model."""

    dataset: DatasetSpec
    """Training (and validation) data."""

    distillation: DistillationSpec | None = None
    """Generate the training data first: a teacher model answers prompts (or grows instructions from seed tasks),
    the answers are filtered, and the job trains on them (`dataset.train.uri: distilled`). Unset: the job trains
    on `dataset.train`."""

    method: MethodSpec = Field(default_factory=MethodSpec)
    """LoRA, QLoRA, full fine-tuning, layer freezing or prompt tuning."""

    hyperparameters: HyperparametersSpec = Field(default_factory=HyperparametersSpec)
    """Optimisation settings."""

    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    """Workers and their resources."""

    checkpointing: CheckpointingSpec = Field(default_factory=CheckpointingSpec)
    """Checkpoint cadence, retention and resume."""

    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Generated samples and forgetting on a reference set, after training."""

    output: OutputSpec
    """Where the artifacts go."""

    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)
    """Suspension, deadline, retries, TTL and queueing."""

    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Experiment tracking (MLflow, TensorBoard, Weights & Biases); off unless set."""

    @model_validator(mode="after")
    def _best_needs_evaluation(self) -> SFTJobSpec:
        if self.output.select != "best":
            return self
        if self.dataset.validation is None and self.dataset.validation_split is None:
            raise ValueError("output.select: best picks the checkpoint with the lowest evaluation loss: set "
                             "dataset.validation or dataset.validationSplit")
        every, save = self.hyperparameters.eval_interval, self.checkpointing.interval
        if every is not None and save is not None and every != save:
            raise ValueError(f"output.select: best compares evaluated checkpoints, so hyperparameters.evalInterval "
                             f"({every}) must equal checkpointing.interval ({save}); set one of them, or both equal")
        return self

    @model_validator(mode="after")
    def _distillation_trains_on_its_answers(self) -> SFTJobSpec:
        distilled = self.dataset.train.uri == DISTILLED_TRAIN_URI
        if self.distillation is not None and not distilled:
            raise ValueError(f"dataset: with distillation the job trains on the teacher's answers "
                             f"(<output>/data/distilled.jsonl): set dataset.train.uri: {DISTILLED_TRAIN_URI}")
        if self.distillation is None and distilled:
            raise ValueError(f"dataset: dataset.train.uri '{DISTILLED_TRAIN_URI}' names the teacher's answers: set "
                             "distillation, or point dataset.train.uri at a file")
        if self.distillation is not None and self.dataset.data_schema not in ("auto", "messages"):
            raise ValueError("dataset: distilled data is in the messages schema: set dataset.schema to auto or "
                             "messages")
        return self


class SFTJob(ApiModel):
    """A supervised fine-tuning job: one base model, one dataset, one method, one output."""

    api_version: Literal["sftjob.dev/v1alpha1"] = "sftjob.dev/v1alpha1"
    """`sftjob.dev/v1alpha1`."""

    kind: Literal["SFTJob"] = "SFTJob"
    """`SFTJob`."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""

    spec: SFTJobSpec
    """The desired run."""

    status: SFTJobStatus | None = None
    """The observed state."""

    @property
    def name(self) -> str:
        """The job's name (empty when the document has none)."""
        return self.metadata.name or ""


def parse_sftjob(document: Any) -> SFTJob:
    """Validate a decoded SFTJob document (camelCase, as stored by the API server).

    Args:
        document: The decoded YAML or JSON object.

    Returns:
        The validated job.

    Raises:
        pydantic.ValidationError: With one entry per problem.
    """
    return SFTJob.model_validate(document, by_alias=True)
