"""API types of forgetting: the reference set and its gate in the spec, the result in progress.json and status."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from sftjob_api.codes import NOT_RETRYABLE, ErrorCode
from sftjob_api.progress import ProgressFile
from sftjob_api.types import EvaluationSpec, ForgettingResult, SFTJobStatus, parse_sftjob
from support.crd_check import schema_errors, server_errors

REPO = Path(__file__).resolve().parents[2]


def _job(evaluation: dict[str, Any]) -> dict[str, Any]:
    document = yaml.safe_load((REPO / "examples" / "lora-chat.yaml").read_text())
    document["spec"]["evaluation"] = evaluation
    return document


def test_a_reference_set_with_a_gate_is_accepted_by_the_types_and_the_crd() -> None:
    document = _job({"reference": {"uri": "s3://bucket-a/reference.jsonl", "maxRows": 64, "maxTokens": 4096},
                     "maxForgetting": 1.1, "onForgetting": "fail"})
    assert server_errors(document) == []
    evaluation = parse_sftjob(document).spec.evaluation
    assert evaluation.reference is not None
    assert (evaluation.reference.uri, evaluation.reference.format) == ("s3://bucket-a/reference.jsonl", "auto")
    assert (evaluation.reference.max_rows, evaluation.reference.max_tokens) == (64, 4096)
    assert (evaluation.max_forgetting, evaluation.on_forgetting) == (1.1, "fail")


def test_the_defaults_report_without_a_gate() -> None:
    evaluation = EvaluationSpec.model_validate({"reference": {"uri": "ref.jsonl"}})
    assert evaluation.max_forgetting is None and evaluation.on_forgetting == "degrade"
    assert evaluation.reference is not None
    assert (evaluation.reference.max_rows, evaluation.reference.max_tokens) == (256, 16384)


@pytest.mark.parametrize(
    ("evaluation", "field"),
    [
        ({"maxForgetting": 1.1}, "maxForgetting"),
        ({"reference": {"uri": "ref.jsonl"}, "maxForgetting": 0}, "maxForgetting"),
        ({"reference": {"uri": "ref.jsonl"}, "onForgetting": "abort"}, "onForgetting"),
        ({"reference": {"uri": "ref.jsonl", "maxRows": 0}}, "maxRows"),
        ({"reference": {"uri": "ref.jsonl", "maxTokens": 8}}, "maxTokens"),
        ({"reference": {"uri": "https://example.com/ref.jsonl"}}, "uri"),
    ],
)
def test_bad_evaluation_settings_are_rejected_by_both(evaluation: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EvaluationSpec.model_validate(evaluation)
    assert field in str(caught.value)
    assert server_errors(_job(evaluation)) != []


def test_the_summary_states_the_figure_and_the_gate() -> None:
    plain = ForgettingResult(base_loss=2.0, tuned_loss=2.5, ratio=1.25, tokens=300, rows=4)
    assert plain.summary() == ("forgetting on the reference set (300 tokens): base loss 2.0000, tuned loss 2.5000, "
                               "ratio 1.250")
    above = plain.model_copy(update={"max_forgetting": 1.1, "exceeded": True})
    assert above.summary().endswith("ratio 1.250, above evaluation.maxForgetting 1.1")
    within = plain.model_copy(update={"max_forgetting": 1.5})
    assert within.summary().endswith("ratio 1.250, within evaluation.maxForgetting 1.5")
    diverged = ForgettingResult(base_loss=2.0, tokens=300, rows=4, max_forgetting=1.1, exceeded=True)
    assert "tuned loss not finite, ratio not finite, above" in diverged.summary()


def test_the_result_travels_from_progress_json_into_a_status_the_crd_accepts() -> None:
    result = {"baseLoss": 2.0, "tunedLoss": 2.5, "ratio": 1.25, "tokens": 300, "rows": 4, "maxForgetting": 1.1,
              "exceeded": True}
    progress = ProgressFile.model_validate({"phase": "Succeeded", "updatedAt": "2026-05-01T12:00:00Z",
                                            "evaluation": {"forgetting": result}})
    assert progress.evaluation is not None and progress.evaluation.forgetting is not None
    assert progress.evaluation.forgetting.ratio == 1.25
    status = SFTJobStatus(phase="Succeeded", evaluation=progress.evaluation)
    wire = status.to_wire()
    assert wire["evaluation"] == {"forgetting": result, "metrics": [], "tasks": []}
    document = copy.deepcopy(_job({}))
    document["status"] = wire
    assert schema_errors(document) == []


def test_forgetting_exceeded_is_never_retried() -> None:
    assert ErrorCode.FORGETTING_EXCEEDED == "ForgettingExceeded" and ErrorCode.FORGETTING_EXCEEDED in NOT_RETRYABLE


def test_a_parent_segment_is_refused_with_what_to_write_instead() -> None:
    from sftjob_api.types import ModelSpec

    with pytest.raises(ValidationError) as refused:
        ModelSpec(source="../sftjob/demo/model.gguf")
    assert ("must not contain '..' path segments: write the path without them (an absolute path, or one below the "
            "job file's folder)") in str(refused.value)
    assert ModelSpec(source="/abs/demo/model.gguf").source == "/abs/demo/model.gguf"
