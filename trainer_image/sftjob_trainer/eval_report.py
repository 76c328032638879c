"""eval_report.md: base vs fine-tuned per metric, task and judge, forgetting, curves, and the answers side by side."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from sftjob_api.types import DatasetStats, EvaluationSpec, EvaluationStatus
from sftjob_trainer.artifacts import EVAL_REPORT_FILE
from sftjob_trainer.data.mixture import eval_loss_table
from sftjob_trainer.evaluation import DURING_TRAINING_PREFIX, Answers, Sample, scorer
from sftjob_trainer.task_metrics import format_score

METRIC_PLOT_FILE = "eval_metrics.png"
# Rows of the side-by-side table (worst regressions first); eval_samples.jsonl holds them all.
SIDE_BY_SIDE_ROWS = 20
# Characters of a prompt or answer shown in a table cell.
CELL_CHARS = 300


def metric_curves(records: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """`{metric: [(step, value)]}` of the task metrics measured during training, from metrics.jsonl records."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith(DURING_TRAINING_PREFIX):
                curves.setdefault(key[len(DURING_TRAINING_PREFIX):], []).append((int(record["step"]), float(value)))
    return curves


def metric_plot_png(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    """eval_metrics.png: every task metric over optimizer steps (chrF scaled to 0..1 to share the axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, points in curves.items():
        scale = 100.0 if name == "chrf" else 1.0
        ax.plot([s for s, _ in points], [v / scale for _, v in points], marker="o",
                label=f"{name}{' / 100' if scale != 1 else ''}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("task metric (fine-tuned, held-out)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _cell(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) > CELL_CHARS:
        flat = flat[:CELL_CHARS] + "…"
    return flat.replace("|", "\\|") or "∅"


def _signed(name: str, value: float) -> str:
    return ("+" if value >= 0 else "−") + format_score(name, abs(value))


def side_by_side(spec: EvaluationSpec, samples: Sequence[Sample], answers: Answers,
                 rows: int = SIDE_BY_SIDE_ROWS) -> str:
    """The table of prompts with both answers, sorted by the headline metric's change (worst regressions first)."""
    if not samples:
        return "No held-out prompts were generated (`evaluation.numSamples: 0` or no validation data).\n"
    name = spec.metrics[0]
    references = [s.reference.strip() for s in samples]
    score = scorer(spec)
    base = score.per_answer(answers.base, references)[name]
    tuned = score.per_answer(answers.tuned, references)[name]
    order = sorted(range(len(samples)), key=lambda i: (tuned[i] - base[i], i))
    lines = [f"| # | Δ {name} | prompt | reference | base | fine-tuned |", "|---|---|---|---|---|---|"]
    for i in order[:rows]:
        lines.append(f"| {i + 1} | {_signed(name, tuned[i] - base[i])} | {_cell(samples[i].prompt)} | "
                     f"{_cell(references[i])} | {_cell(answers.base[i])} | {_cell(answers.tuned[i])} |")
    more = f"\n{len(samples) - rows} more in `eval_samples.jsonl`.\n" if len(samples) > rows else "\n"
    return "\n".join(lines) + "\n" + more


def _metrics_section(status: EvaluationStatus) -> str:
    if not status.metrics:
        return ""
    lines = ["| metric | base | fine-tuned | change | prompts |", "|---|---|---|---|---|"]
    for m in status.metrics:
        lines.append(f"| {m.name} | {format_score(m.name, m.base)} | {format_score(m.name, m.tuned)} | "
                     f"{_signed(m.name, m.tuned - m.base)} | {m.samples} |")
    return "## Task metrics on held-out prompts\n\n" + "\n".join(lines) + "\n\n"


def _estimate(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")


def _tasks_section(status: EvaluationStatus) -> str:
    if not status.tasks:
        return ""
    lines = ["| task | metric | base | fine-tuned | rows |", "|---|---|---|---|---|"]
    for t in status.tasks:
        lines.append(f"| {t.task} | {t.metric} | {_estimate(t.base, t.base_stderr)} | "
                     f"{_estimate(t.tuned, t.tuned_stderr)} | {t.samples} |")
    return ("## Benchmarks (lm-evaluation-harness)\n\n" + "\n".join(lines)
            + "\n\nValues ± their standard error, as lm-eval reports them.\n\n")


def _judge_section(status: EvaluationStatus, spec: EvaluationSpec) -> str:
    judge = status.judge
    if judge is None:
        return ""
    if judge.error:
        return (f"## Judge\n\n**Unavailable** (`{judge.model}`): {judge.error}. The job succeeded without a "
                "judgement; `sftjob eval` asks again.\n\n")
    interval = (f", 95% interval {judge.ci_low:.2f}–{judge.ci_high:.2f}"
                if judge.ci_low is not None and judge.ci_high is not None else "")
    rate = f"{judge.win_rate:.2f}" if judge.win_rate is not None else "—"
    rubric = spec.judge.rubric if spec.judge and spec.judge.rubric else "the default rubric"
    return (f"## Judge\n\n`{judge.model}` compared the answers to {judge.prompts} prompts, each in both orders "
            f"(to cancel position bias), by {rubric}: fine-tuned won {judge.tuned_wins:g}, base won "
            f"{judge.base_wins:g}, ties {judge.ties:g}. Win rate of the fine-tuned model {rate}{interval} "
            "(above 0.5: preferred).\n\n")


def render(job_name: str, spec: EvaluationSpec, status: EvaluationStatus, samples: Sequence[Sample],
           answers: Answers, loss_plot: str | None, metric_plot: str | None,
           dataset: DatasetStats | None = None) -> str:
    """The text of eval_report.md.

    Args:
        job_name: The SFTJob's name.
        spec: `spec.evaluation`.
        status: The evaluation results.
        samples: The held-out prompts.
        answers: Both models' answers.
        loss_plot: File name of the loss curves in the output, if any.
        metric_plot: File name of the task-metric curves, if any.
        dataset: The dataset statistics: a mixture's sources get a table with their evaluation loss.
    """
    parts = [f"# Evaluation of {job_name}\n\n"]
    if status.score:
        parts.append(f"**{status.score}** — the headline: `{spec.metrics[0]}` of the fine-tuned model "
                     "(base in brackets) on held-out prompts.\n\n")
    parts.append(_metrics_section(status))
    parts.append(_tasks_section(status))
    parts.append(_judge_section(status, spec))
    sources = eval_loss_table(dataset) if dataset is not None else ""
    if sources:
        parts.append("## Mixture sources\n\nRealised proportions and the fine-tuned model's evaluation loss on "
                     f"each source's held-out rows.\n\n{sources}\n")
    if status.forgetting is not None:
        parts.append(f"## Forgetting\n\n{status.forgetting.summary()}. Above 1 the fine-tuned model predicts the "
                     "reference set worse than its base.\n\n")
    curves = [f"![loss curves]({loss_plot})" if loss_plot else "",
              f"![task metrics during training]({metric_plot})" if metric_plot else ""]
    if any(curves):
        parts.append("## Curves\n\n" + "\n\n".join(c for c in curves if c) + "\n\n")
    if status.seconds is not None:
        parts.append(f"Evaluation took {status.seconds:.1f} s (apart from training).\n\n")
    parts.append("## Answers side by side\n\nWorst regressions first (the headline metric's change per prompt).\n\n")
    parts.append(side_by_side(spec, samples, answers))
    return "".join(parts)


__all__ = ["EVAL_REPORT_FILE", "METRIC_PLOT_FILE", "metric_curves", "metric_plot_png", "render", "side_by_side"]
