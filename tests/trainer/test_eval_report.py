"""eval_report.md: the tables, worst regressions first, the judge's verdict or why it is missing, the curves."""

from __future__ import annotations

from sftjob_api.types import BenchmarkResult, EvaluationSpec, JudgeResult
from sftjob_trainer.eval_report import metric_curves, metric_plot_png, render, side_by_side
from sftjob_trainer.evaluation import Answers, Sample, evaluate

SAMPLES = [Sample(f"prompt {i}", [i], ref) for i, ref in enumerate(["a", "b", "c", "d"])]
# Prompt 2 regresses (base right, tuned wrong); prompts 0 and 1 improve; 3 stays wrong.
ANSWERS = Answers(base=["x", "x", "c", "x"], tuned=["a", "b", "z", "x"])


def test_side_by_side_puts_the_worst_regression_first() -> None:
    table = side_by_side(EvaluationSpec(), SAMPLES, ANSWERS).splitlines()
    assert table[0] == "| # | Δ exact_match | prompt | reference | base | fine-tuned |"
    assert table[2] == "| 3 | −1.00 | prompt 2 | c | c | z |"
    assert table[3].startswith("| 4 | +0.00 |")
    assert [row.split(" | ")[1] for row in table[4:6]] == ["+1.00", "+1.00"]


def test_cells_are_flattened_escaped_and_cut() -> None:
    samples = [Sample("a | b\nc", [1], "ref")]
    table = side_by_side(EvaluationSpec(), samples, Answers(["x" * 400], [""]))
    row = table.splitlines()[2]
    assert "a \\| b c" in row
    assert "x" * 300 + "…" in row and "x" * 301 not in row
    assert row.endswith("| ∅ |")


def test_report_has_metrics_benchmarks_judge_and_forgetting() -> None:
    spec = EvaluationSpec(metrics=["exact_match", "chrf"])
    status = evaluate(spec, SAMPLES, ANSWERS).model_copy(update={
        "tasks": [BenchmarkResult(task="orders", metric="exact_match", base=0.1, base_stderr=0.05, tuned=0.8,
                                  tuned_stderr=0.07, samples=20)],
        "judge": JudgeResult(model="smol", prompts=4, tuned_wins=2.5, base_wins=1, ties=0.5, win_rate=0.6875,
                             ci_low=0.29, ci_high=0.92),
    })
    text = render("demo", spec, status, SAMPLES, ANSWERS, "loss.png", None)
    assert text.startswith("# Evaluation of demo\n\n**exact_match 0.50 (base 0.25)**")
    assert "| exact_match | 0.25 | 0.50 | +0.25 | 4 |" in text
    assert "| orders | exact_match | 0.100 ± 0.050 | 0.800 ± 0.070 | 20 |" in text
    assert ("fine-tuned won 2.5, base won 1, ties 0.5. Win rate of the fine-tuned model 0.69, "
            "95% interval 0.29–0.92") in text
    assert "![loss curves](loss.png)" in text and "task metrics during training" not in text
    down = status.model_copy(update={"judge": JudgeResult(model="smol", error="connection refused after 5 tries")})
    assert "**Unavailable** (`smol`): connection refused after 5 tries" in render("demo", spec, down, SAMPLES, ANSWERS,
                                                                                  None, None)


def test_metric_curves_come_from_the_during_training_records() -> None:
    records = [{"step": 5, "loss": 2.0}, {"step": 10, "eval_loss": 1.0, "eval_task_json_equal": 0.2},
               {"step": 20, "eval_task_json_equal": 0.8, "eval_task_chrf": 70.0}]
    curves = metric_curves(records)
    assert curves == {"json_equal": [(10, 0.2), (20, 0.8)], "chrf": [(20, 70.0)]}
    assert metric_plot_png(curves).startswith(b"\x89PNG")
