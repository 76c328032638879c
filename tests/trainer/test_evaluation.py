"""Evaluation on the driver: eval_samples.jsonl, the status it produces, and a judge that stays down."""

from __future__ import annotations

import json
import socket

from sftjob_api.types import EvaluationSpec, ForgettingResult
from sftjob_trainer.evaluation import Answers, Sample, evaluate, read_samples, samples_jsonl

SAMPLES = [Sample("<p>1", [1, 2], '{"id": 1}'), Sample("<p>2", [3], '{"id": 2}'), Sample("<p>3", [4, 5, 6], "x")]
ANSWERS = Answers(base=["{}", '{"id": 2}', "y"], tuned=['{"id":1}', '{"id": 2}', "x"])


def test_samples_jsonl_holds_both_answers_and_every_metrics_score() -> None:
    spec = EvaluationSpec(metrics=["json_equal", "exact_match"])
    rows = [json.loads(line) for line in samples_jsonl(SAMPLES, ANSWERS, spec).decode().splitlines()]
    assert [r["prompt_ids"] for r in rows] == [[1, 2], [3], [4, 5, 6]]
    assert rows[0]["scores"] == {"json_equal": {"base": 0.0, "finetuned": 1.0},
                                 "exact_match": {"base": 0.0, "finetuned": 0.0}}
    assert rows[2]["scores"]["exact_match"] == {"base": 0.0, "finetuned": 1.0}
    samples, answers = read_samples(samples_jsonl(SAMPLES, ANSWERS, spec).decode())
    assert samples == [Sample(s.prompt, s.prompt_ids, s.reference) for s in SAMPLES]
    assert answers == ANSWERS


def test_evaluate_scores_every_metric_and_sets_the_headline() -> None:
    forgetting = ForgettingResult(base_loss=1.0, tuned_loss=1.2, ratio=1.2, tokens=10, rows=2)
    status = evaluate(EvaluationSpec(metrics=["json_equal", "exact_match"]), SAMPLES, ANSWERS,
                      forgetting=forgetting, worker_seconds=12.5)
    assert status.score == "json_equal 0.67 (base 0.33)"
    assert [(m.name, round(m.base, 3), round(m.tuned, 3), m.samples) for m in status.metrics] == [
        ("json_equal", 0.333, 0.667, 3), ("exact_match", 0.333, 0.667, 3)]
    assert status.forgetting == forgetting
    assert status.judge is None
    assert status.seconds is not None and 12.5 <= status.seconds < 20


def test_a_judge_that_stays_down_is_reported_and_never_raises() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = EvaluationSpec.model_validate({"judge": {"endpoint": f"http://127.0.0.1:{port}/v1", "model": "judge",
                                                    "maxRetries": 0, "timeoutSeconds": 2}})
    status = evaluate(spec, SAMPLES, ANSWERS)
    assert status.judge is not None and status.judge.error
    assert status.judge.win_rate is None
    assert status.metrics[0].name == "exact_match"  # the rest of the evaluation is intact
