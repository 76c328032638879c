"""What crosses the process boundary between the driver and its Ray Train workers, both ways.

The driver hands every worker one `WorkerConfig` (Ray pickles it as `train_loop_config`); rank 0 hands back one
`Rank0Result` (Ray Train passes it on as `Result.return_value`). Both are frozen: neither side edits the other's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sftjob_api.types import SFTJobSpec
from sftjob_trainer.preparation import load_dtype

if TYPE_CHECKING:
    from ray import ObjectRef

    from sftjob_api.progress import ProgressFile
    from sftjob_api.types import BenchmarkResult, ForgettingResult
    from sftjob_trainer.evaluation import Answers, Sample
    from sftjob_trainer.faults import FaultPlan
    from sftjob_trainer.hparams import Plan
    from sftjob_trainer.job_context import JobContext
    from sftjob_trainer.preparation import Batching
    from sftjob_trainer.serving import ServingSample

Rows = list[dict[str, Any]]
"""Prepared sequences as the Trainer iterates them: `{"input_ids": [...], "labels": [...]}` per example."""


@dataclass(frozen=True)
class WorkerConfig:
    """What every Ray Train worker trains, evaluates and (rank 0) exports; built once by the driver's preflight."""

    context: JobContext
    """The job, its attempt number and its output directory."""
    plan: Plan
    """The resolved hyperparameters; each worker turns them into `SFTConfig` arguments for its own scratch
    directory (`hparams.training_arguments`)."""
    batching: Batching
    """`packed` (padding-free rows) or `length_grouped` (padded, length-grouped batches)."""
    progress: ProgressFile
    """progress.json as the driver left it before the workers started (checkpoints, tokens and the health record
    of earlier attempts). Rank 0 carries on from it, or from what an earlier rank 0 of this attempt wrote."""
    train: ObjectRef[Rows]
    """The training sequences, put into Ray's object store once."""
    validation: ObjectRef[Rows] | None
    """The held-out sequences, or None without validation data."""
    validation_sources: list[int] | None
    """A mixture's source index of each held-out sequence (evaluation loss per source); None for one source."""
    reference: ObjectRef[Rows] | None
    """`evaluation.reference` rows for the forgetting figure (rank 0), or None without a reference set."""
    samples: list[Sample]
    """The held-out prompts both models answer (rank 0; `eval_samples.jsonl`)."""
    stop_token_ids: list[int]
    """Tokens that end an answer: EOS and the template's end-of-turn markers."""
    export_template: str | None
    """The chat template training rendered with, saved with the exported tokenizer (None for plain text)."""
    serving_samples: list[ServingSample]
    """Held-out conversations the serving check of the exported weights renders and answers (rank 0)."""
    checkpoints_uri: str
    """`<output>/checkpoints/<run>`: where Ray Train persists this run's checkpoints."""
    cpus_per_worker: int
    """CPUs each worker reserved; it sizes torch's thread pool."""
    faults: FaultPlan | None = None
    """Test-only fault injection (`sftjob_trainer.faults`); None in production."""

    @property
    def spec(self) -> SFTJobSpec:
        """The job's spec."""
        return self.context.job.spec

    @property
    def load_dtype(self) -> str:
        """The dtype the base weights load in (`preparation.load_dtype`)."""
        return load_dtype(self.spec, self.plan)


@dataclass(frozen=True)
class Rank0Result:
    """What rank 0 hands back to the driver: its final progress and everything the driver's export needs."""

    progress: ProgressFile
    """Rank 0's progress once training and its evaluation ended (the last progress.json it wrote)."""
    metrics: list[dict[str, Any]]
    """The records of metrics.jsonl as rank 0 wrote them (the whole job's, earlier attempts included)."""
    files: dict[str, dict[str, Any]]
    """`{relative path: {sha256, size}}` of every file rank 0 wrote: the exported weights and metrics.jsonl."""
    answers: Answers
    """The base and fine-tuned answers to the held-out samples."""
    forgetting: ForgettingResult | None = None
    """Base and fine-tuned loss on `evaluation.reference` (None without a reference set)."""
    benchmarks: list[BenchmarkResult] = field(default_factory=list)
    """lm-eval results of `evaluation.tasks` on both models."""
    eval_seconds: float = 0.0
    """Time spent evaluating (generation, benchmarks, reference losses), apart from training."""
    serving: dict[str, Any] | None = None
    """The serving check of the exported weights (`sftjob_trainer.serving.ServingCheck.to_wire`)."""
    source_losses: dict[int, float] = field(default_factory=dict)
    """A mixture's evaluation loss per source index (`dataset.train.sources`), of the fine-tuned model."""
