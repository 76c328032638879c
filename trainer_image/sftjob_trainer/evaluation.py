"""Evaluation of the fine-tuned model against its base: answers, task metrics, the judge, status and samples.

Rank 0 generates the answers (before and after training, `sftjob_trainer.worker`) and scores the
lm-eval tasks; the driver scores the answers, asks the judge (an HTTP endpoint, no model needed) and
writes `eval_samples.jsonl` and `eval_report.md` (`sftjob_trainer.eval_report`). `sftjob eval` reuses
the same steps on an existing output.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sftjob_api.types import (
    BenchmarkResult,
    EvaluationSpec,
    EvaluationStatus,
    ForgettingResult,
    JudgeResult,
    MetricResult,
)
from sftjob_trainer.task_metrics import Scorer, headline

log = logging.getLogger(__name__)

# metrics.jsonl keys of the task metrics measured during training (`evaluation.duringTraining`).
DURING_TRAINING_PREFIX = "eval_task_"


@dataclass(frozen=True)
class Sample:
    """A held-out prompt the base and the fine-tuned model answer."""

    prompt: str
    """The rendered prompt (decoded from `prompt_ids`, special tokens kept)."""
    prompt_ids: list[int]
    """The prompt's token ids, exactly as training rendered them."""
    reference: str
    """The held-out answer."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The conversation up to the answer (role/content dicts), for the serving check; empty for plain rows."""


@dataclass(frozen=True)
class Answers:
    """Greedy answers of both models to the samples, in the samples' order."""

    base: list[str]
    """The base model's answers (generated before training)."""
    tuned: list[str]
    """The fine-tuned model's answers."""


def scorer(spec: EvaluationSpec) -> Scorer:
    """The task-metric scorer of `evaluation.metrics` and `evaluation.regex`."""
    return Scorer(tuple(spec.metrics), spec.regex)


def samples_jsonl(samples: Sequence[Sample], answers: Answers, spec: EvaluationSpec) -> bytes:
    """eval_samples.jsonl: prompt, its token ids, reference, both answers and every metric's score of each."""
    references = [s.reference.strip() for s in samples]
    score = scorer(spec)
    base = score.per_answer(answers.base, references)
    tuned = score.per_answer(answers.tuned, references)
    lines = []
    for i, sample in enumerate(samples):
        lines.append(json.dumps({
            "prompt": sample.prompt,
            "prompt_ids": sample.prompt_ids,
            "reference": references[i],
            "base": answers.base[i],
            "finetuned": answers.tuned[i],
            "base_exact_match": answers.base[i].strip() == references[i],
            "finetuned_exact_match": answers.tuned[i].strip() == references[i],
            "scores": {name: {"base": base[name][i], "finetuned": tuned[name][i]} for name in spec.metrics},
        }, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def read_samples(text: str) -> tuple[list[Sample], Answers]:
    """The samples and answers of an eval_samples.jsonl (for `sftjob eval`)."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    samples = [Sample(r["prompt"], list(r.get("prompt_ids") or []), r["reference"]) for r in rows]
    return samples, Answers([r["base"] for r in rows], [r["finetuned"] for r in rows])


def judge_answers(spec: EvaluationSpec, samples: Sequence[Sample], answers: Answers) -> JudgeResult | None:
    """The judge's verdict on the answers (None without `evaluation.judge`); an unreachable judge sets `error`."""
    if spec.judge is None:
        return None
    from sftjob_trainer.judge import JudgeItem, api_key_from_env, judge_pairwise

    items = [JudgeItem(prompt=s.prompt, reference=s.reference, base=b, tuned=t)
             for s, b, t in zip(samples, answers.base, answers.tuned, strict=True)]
    return judge_pairwise(spec.judge, items, api_key_from_env())


def evaluate(spec: EvaluationSpec, samples: Sequence[Sample], answers: Answers,
             benchmarks: Sequence[BenchmarkResult] = (), forgetting: ForgettingResult | None = None,
             worker_seconds: float = 0.0) -> EvaluationStatus:
    """Score the answers, ask the judge and gather everything into `status.evaluation`.

    Args:
        spec: `spec.evaluation`.
        samples: The held-out prompts.
        answers: Both models' answers to them.
        benchmarks: lm-eval results from rank 0.
        forgetting: The forgetting figure from rank 0.
        worker_seconds: Time rank 0 spent evaluating (generation, benchmarks, reference losses).

    Returns:
        The evaluation status; `seconds` adds the driver's share (scoring and the judge).
    """
    started = time.monotonic()
    metrics: list[MetricResult] = (
        scorer(spec).compare(answers.base, answers.tuned, [s.reference.strip() for s in samples]) if samples else [])
    judge = judge_answers(spec, samples, answers) if samples else None
    if judge is not None and judge.error:
        log.warning("the judge gave up: %s", judge.error)
    return EvaluationStatus(
        score=headline(metrics), metrics=metrics, tasks=list(benchmarks), judge=judge, forgetting=forgetting,
        seconds=round(worker_seconds + time.monotonic() - started, 3),
    )


def during_training_callback(writer: Any, model_samples: Sequence[Sample], spec: EvaluationSpec,
                             tokenizer: Any, stop_token_ids: list[int]) -> Any:
    """A Trainer callback that scores the task metrics at every evaluation (rank 0; `evaluation.duringTraining`).

    The figures go to metrics.jsonl as `eval_task_<metric>` beside `eval_loss`, so the report draws their
    curves. Only the fine-tuned side is generated: the base's answers do not change during training.
    """
    from transformers import TrainerCallback

    from sftjob_trainer.artifacts import generate_answers

    score = scorer(spec)
    references = [s.reference.strip() for s in model_samples]

    class TaskMetricCallback(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is None or not model_samples:
                return
            answers = generate_answers(model, tokenizer, [s.prompt_ids for s in model_samples],
                                       spec.max_new_tokens, stop_token_ids)
            corpus = score.corpus(answers, references)
            writer.append_metrics({"step": state.global_step, "epoch": state.epoch, "time": time.time(),
                                   **{f"{DURING_TRAINING_PREFIX}{name}": value for name, value in corpus.items()}})

    return TaskMetricCallback()


__all__ = ["DURING_TRAINING_PREFIX", "Answers", "Sample", "during_training_callback", "evaluate", "judge_answers",
           "read_samples", "samples_jsonl", "scorer"]
