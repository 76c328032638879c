"""Evaluation after training (`spec.evaluation`) and its results (`status.evaluation`).

Task metrics on generated answers, lm-evaluation-harness benchmarks, a pairwise judge, and forgetting
on a reference set.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from sftjob_api.base import MAX_NAME, ApiModel, CelRule, Name, StorageUri, Text, matches
from sftjob_api.types.common import HttpUrl, SecretReference
from sftjob_api.types.dataset import DataSource


class ReferenceSet(DataSource):
    """Text the base model handles and the fine-tuned model must keep handling: the yardstick of forgetting."""

    max_rows: int = Field(default=256, ge=1, le=100_000)
    """Rows read from the start of the file; later rows are ignored, so the check stays cheap."""

    max_tokens: int = Field(default=16384, ge=16, le=10_000_000)
    """Tokens (prompt and answer) scored at most: rows are taken in file order until this budget is spent,
    each cut to the job's resolved `maxSeqLength`. The check costs two forward passes over them."""


# Task metrics computed on generated answers (`evaluation.metrics`); `sftjob_trainer.task_metrics` implements them.
TaskMetricName = Literal["exact_match", "json_equal", "contains", "regex", "chrf", "rouge_l"]


DEFAULT_METRICS: tuple[TaskMetricName, ...] = ("exact_match",)
_TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
TaskName = Annotated[
    str,
    Field(max_length=MAX_NAME, json_schema_extra={"pattern": _TASK_NAME}),
    matches(_TASK_NAME, "an lm-eval task name: letters, digits, '_', '.', '-' (e.g. arc_easy)"),
]


class BenchmarkTask(ApiModel):
    """An lm-evaluation-harness task run on the base and the fine-tuned model."""

    cel_rules = (
        CelRule(
            rule="!has(self.type) || has(self.uri)",
            message="type describes a custom task file: set uri too (a built-in task has neither)",
            field_path=".type",
        ),
    )

    name: TaskName
    """A built-in lm-eval task (e.g. `arc_easy`, `hellaswag`: its data must be reachable from the trainer,
    through the Hub or a local Hugging Face cache), or the name of the custom task in `uri`."""

    uri: StorageUri | None = None
    """A custom task: a JSONL file (`s3://` or a path). `generate_until` rows are `{"input", "target"}` and are
    scored by exact match of the greedy answer (whitespace trimmed); `multiple_choice` rows are
    `{"input", "choices": [...], "label": index}` and scored by accuracy of the most likely choice."""

    type: Literal["generate_until", "multiple_choice"] | None = None
    """How a custom task is scored (required with `uri`)."""

    limit: int | None = Field(default=None, ge=1, le=100_000)
    """Score at most this many rows of the task (unset: all)."""

    @model_validator(mode="after")
    def _custom_needs_both(self) -> BenchmarkTask:
        if (self.uri is None) != (self.type is None):
            raise ValueError("type: a custom task needs both uri and type (a built-in task has neither)")
        return self


class JudgeSpec(ApiModel):
    """A model that compares base and fine-tuned answers pairwise, through an OpenAI-compatible endpoint."""

    endpoint: HttpUrl
    """Base URL of the OpenAI-compatible API, up to and including `/v1` (e.g. `http://vllm.llm.svc:8000/v1`,
    `https://api.openai.com/v1`)."""

    model: Name
    """The judge model's name at the endpoint."""

    secret_ref: SecretReference | None = None
    """Secret holding the API key as `OPENAI_API_KEY`, sent as a bearer token (unset: the placeholder `unused`
    is sent, which a server without authentication ignores)."""

    rubric: Text | None = None
    """What makes an answer better (e.g. "correct JSON with every field of the order"). Unset: helpfulness,
    correctness and faithfulness to the reference answer."""

    max_samples: int = Field(default=32, ge=1, le=1000)
    """Held-out prompts judged (each twice, with the answers in both orders to cancel position bias)."""

    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Timeout of one judge request."""

    max_retries: int = Field(default=4, ge=0, le=20)
    """Retries of a request that times out or answers 429 or 5xx (exponential backoff). Once they are spent
    on one request, the judge is given up: the job still succeeds, with a `JudgeUnavailable` condition."""


class EvaluationSpec(ApiModel):
    """Evaluation after training: task metrics on generated answers, benchmarks, a judge, forgetting, a report.

    Everything lands in `eval_report.md` (base vs fine-tuned) and its headline in `status.evaluation`.
    """

    cel_rules = (
        CelRule(
            rule="!has(self.maxForgetting) || has(self.reference)",
            message="maxForgetting needs a reference set (evaluation.reference) to measure forgetting on",
            field_path=".maxForgetting",
        ),
        CelRule(
            rule="!has(self.metrics) || !self.metrics.exists(m, m == 'regex') || has(self.regex)",
            message="the regex metric needs evaluation.regex (the pattern whose match is compared)",
            field_path=".regex",
        ),
    )

    num_samples: int = Field(default=16, ge=0, le=1000)
    """How many validation prompts to answer with the base and the fine-tuned model."""

    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    """Longest generated answer in tokens."""

    metrics: list[TaskMetricName] = Field(default_factory=lambda: list(DEFAULT_METRICS), min_length=1, max_length=6)
    """Task metrics on the generated answers, for the base and the fine-tuned model: `exact_match` (whitespace
    trimmed), `json_equal` (both parse as JSON and are equal), `contains` (the reference appears in the answer),
    `regex` (the first match of `regex` in the answer equals its first match in the reference, e.g. a final
    number), `chrf` (sacrebleu's chrF, 0-100) and `rouge_l` (rouge-score's ROUGE-L F1). The first is the
    headline (`status.evaluation.score`, the `Score` column)."""

    regex: Text | None = None
    """Pattern of the `regex` metric (Python syntax); its first group, if it has one, is what is compared."""

    during_training: bool = False
    """Also generate answers and compute the metrics at every evaluation during training (`hyperparameters.
    evalInterval`), so their curves appear beside the loss curve in the report. Costs one generation pass each."""

    tasks: list[BenchmarkTask] = Field(default_factory=list, max_length=16)
    """lm-evaluation-harness tasks run on the base and the fine-tuned model; results with their stderr."""

    judge: JudgeSpec | None = None
    """A judge model comparing base and fine-tuned answers pairwise (win rate with a 95% interval)."""

    reference: ReferenceSet | None = None
    """A reference set to measure forgetting on: the mean token loss of the base model (before training) and
    of the fine-tuned model on it, and their ratio, are reported in `status.evaluation.forgetting`,
    `manifest.json` and the model card. Rows with a `text` column are scored on every token; chat rows
    (`messages`, or any other `dataset.schema` layout) on their assistant turns, rendered with
    `dataset.chatTemplate`. Read with the dataset's credentials (`dataset.secretRef`)."""

    max_forgetting: float | None = Field(default=None, gt=0)
    """Largest accepted ratio of the fine-tuned to the base model's loss on `reference` (e.g. 1.1: at most
    10% higher). Above it the job ends as `onForgetting` says. Unset: forgetting is reported, never enforced."""

    on_forgetting: Literal["degrade", "fail"] = "degrade"
    """What a ratio above `maxForgetting` does. `degrade`: the job succeeds with its outputs kept and marked
    (a `Degraded` condition with reason `ForgettingExceeded`, and a warning in `manifest.json` and the model
    card). `fail`: the job fails with the non-retryable error `ForgettingExceeded` and writes no
    `manifest.json`, so no reader trusts the weights left in the output."""

    @model_validator(mode="after")
    def _gate_needs_reference(self) -> EvaluationSpec:
        if self.max_forgetting is not None and self.reference is None:
            raise ValueError("maxForgetting: needs a reference set (evaluation.reference) to measure forgetting on")
        if "regex" in self.metrics and self.regex is None:
            raise ValueError("regex: the regex metric needs evaluation.regex (the pattern whose match is compared)")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"regex: not a valid regular expression: {err}") from None
        return self


class ForgettingResult(ApiModel):
    """Forgetting on `spec.evaluation.reference`: the mean token loss of the base and the fine-tuned model.

    Losses are means over the loss-bearing tokens of the whole set (token-weighted, not a mean of row means).
    A loss that is not finite (a diverged model) is left out, and its ratio with it.
    """

    base_loss: float | None = None
    """Mean token loss of the base model, measured before training."""

    tuned_loss: float | None = None
    """Mean token loss of the fine-tuned model."""

    ratio: float | None = None
    """tunedLoss / baseLoss: above 1 the fine-tuned model predicts the reference set worse than the base."""

    tokens: int = Field(default=0, ge=0)
    """Loss-bearing tokens the means are taken over."""

    rows: int = Field(default=0, ge=0)
    """Reference rows scored."""

    max_forgetting: float | None = None
    """The `evaluation.maxForgetting` the ratio was held against (unset: no gate)."""

    exceeded: bool = False
    """Whether the ratio is above `maxForgetting` (or could not be measured while a gate was set)."""

    def summary(self) -> str:
        """One line: `forgetting on the reference set (N tokens): base loss X, tuned loss Y, ratio Z`.

        With a `maxForgetting`, the line ends with where the ratio stands against it.
        """

        def show(value: float | None, digits: int) -> str:
            return "not finite" if value is None else f"{value:.{digits}f}"

        line = (f"forgetting on the reference set ({self.tokens} tokens): base loss {show(self.base_loss, 4)}, "
                f"tuned loss {show(self.tuned_loss, 4)}, ratio {show(self.ratio, 3)}")
        if self.max_forgetting is not None:
            line += f", {'above' if self.exceeded else 'within'} evaluation.maxForgetting {self.max_forgetting}"
        return line


class MetricResult(ApiModel):
    """One task metric on the held-out prompts, for the base and the fine-tuned model."""

    name: Name
    """The metric (`evaluation.metrics`)."""

    base: float
    """The base model's score: a rate in 0..1, chrF in 0..100, ROUGE-L F1 in 0..1."""

    tuned: float
    """The fine-tuned model's score, on the same scale."""

    samples: int = Field(ge=0)
    """Held-out prompts scored."""


class BenchmarkResult(ApiModel):
    """One lm-evaluation-harness task on the base and the fine-tuned model."""

    task: Name
    """The task name."""

    metric: Name
    """lm-eval's metric (e.g. `acc`, `exact_match`)."""

    base: float | None = None
    """The base model's score."""

    base_stderr: float | None = None
    """Its standard error (lm-eval's bootstrap or analytic estimate)."""

    tuned: float | None = None
    """The fine-tuned model's score."""

    tuned_stderr: float | None = None
    """Its standard error."""

    samples: int = Field(default=0, ge=0)
    """Rows scored."""


class JudgeResult(ApiModel):
    """Pairwise judgement of fine-tuned against base answers: every prompt judged in both orders."""

    model: Name
    """The judge model."""

    prompts: int = Field(default=0, ge=0)
    """Prompts judged in both orders."""

    tuned_wins: float = Field(default=0, ge=0)
    """Prompts the fine-tuned answer won (a prompt whose two orders disagree counts half a win each side)."""

    base_wins: float = Field(default=0, ge=0)
    """Prompts the base answer won."""

    ties: float = Field(default=0, ge=0)
    """Prompts judged a tie."""

    win_rate: float | None = None
    """(tunedWins + ties / 2) / prompts: above 0.5 the judge prefers the fine-tuned model."""

    ci_low: float | None = None
    """Lower end of the 95% interval of the win rate (Wilson score interval)."""

    ci_high: float | None = None
    """Upper end of the 95% interval."""

    error: Text | None = None
    """Why the judge gave up (it stayed unreachable after its retries); the job still succeeds."""


class EvaluationStatus(ApiModel):
    """Evaluation of the fine-tuned model against its base, from the trainer."""

    score: Name | None = None
    """The headline, e.g. `json_equal 0.92 (base 0.00)`: the first of `evaluation.metrics` (the `Score` column)."""

    metrics: list[MetricResult] = Field(default_factory=list, max_length=8)
    """Task metrics on the generated answers (`evaluation.metrics`)."""

    tasks: list[BenchmarkResult] = Field(default_factory=list, max_length=16)
    """lm-evaluation-harness results (`evaluation.tasks`)."""

    judge: JudgeResult | None = None
    """The judge's verdict (`evaluation.judge`)."""

    forgetting: ForgettingResult | None = None
    """Loss on the reference set before and after training (set when `evaluation.reference` is)."""

    seconds: float | None = Field(default=None, ge=0)
    """Wall time spent evaluating (generation, benchmarks, judge, forgetting), apart from training."""
