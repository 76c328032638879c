"""conditions: what a finished evaluation adds (Degraded, JudgeUnavailable), as conditions and events."""

from __future__ import annotations

from typing import Any

from status_cases import NOW, job, progress, rayjob, running_status

from sftjob_api.codes import ErrorCode, Reason
from sftjob_operator.progress_status import ProgressSnapshot
from sftjob_operator.status import derive_status

# ---------------------------------------------------------------------------------------- forgetting


def forgetting(exceeded: bool) -> dict[str, Any]:
    ratio = 1.3 if exceeded else 1.05
    return {"forgetting": {"baseLoss": 2.0, "tunedLoss": 2.0 * ratio, "ratio": ratio, "tokens": 500, "rows": 8,
                           "maxForgetting": 1.1, "exceeded": exceeded}}


def test_forgetting_within_the_gate_is_reported_and_nothing_is_marked() -> None:
    snapshot = ProgressSnapshot(progress=progress("Succeeded", attempt=1, evaluation=forgetting(False)),
                                output_complete=True)
    out = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Complete", "SUCCEEDED"), snapshot=snapshot
    )
    assert out.status.phase == "Succeeded"
    assert out.status.evaluation is not None and out.status.evaluation.forgetting is not None
    assert (out.status.evaluation.forgetting.ratio, out.status.evaluation.forgetting.tokens) == (1.05, 500)
    assert "Degraded" not in {c.type for c in out.status.conditions}
    assert [e.reason for e in out.events] == ["Succeeded"]


def test_forgetting_above_the_gate_in_degrade_mode_succeeds_with_a_degraded_condition() -> None:
    exporting = ProgressSnapshot(progress=progress("Exporting", attempt=1, evaluation=forgetting(True)))
    before = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Running", "RUNNING"), snapshot=exporting
    )
    assert before.status.phase == "Exporting" and before.status.evaluation is not None
    assert "Degraded" not in {c.type for c in before.status.conditions}  # only a finished job is degraded

    snapshot = ProgressSnapshot(progress=progress("Succeeded", attempt=1, evaluation=forgetting(True)),
                                output_complete=True)
    out = derive_status(
        job(), before.status, generation=1, now=NOW, rayjob=rayjob("Complete", "SUCCEEDED"), snapshot=snapshot
    )
    assert out.status.phase == "Succeeded" and out.status.error is None and out.status.output is not None
    conditions = {c.type: c for c in out.status.conditions}
    assert conditions["Succeeded"].status == "True"
    degraded = conditions["Degraded"]
    assert (degraded.status, degraded.reason) == ("True", ErrorCode.FORGETTING_EXCEEDED)
    assert "ratio 1.300, above evaluation.maxForgetting 1.1" in degraded.message
    assert [(e.type, e.reason) for e in out.events] == [("Normal", "Succeeded"),
                                                        ("Warning", ErrorCode.FORGETTING_EXCEEDED)]


def test_a_judge_that_stayed_down_leaves_the_job_succeeded_with_a_judge_unavailable_condition() -> None:
    evaluation = {"score": "json_equal 0.92 (base 0.00)",
                  "metrics": [{"name": "json_equal", "base": 0.0, "tuned": 0.92, "samples": 50}],
                  "judge": {"model": "judge-7b", "error": "APITimeoutError after 5 attempts"}, "seconds": 41.5}
    snapshot = ProgressSnapshot(progress=progress("Succeeded", attempt=1, evaluation=evaluation), output_complete=True)
    out = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Complete", "SUCCEEDED"), snapshot=snapshot
    )
    assert out.status.phase == "Succeeded" and out.status.error is None
    assert out.status.evaluation is not None and out.status.evaluation.score == "json_equal 0.92 (base 0.00)"
    assert out.status.evaluation.seconds == 41.5
    conditions = {c.type: c for c in out.status.conditions}
    unavailable = conditions[Reason.JUDGE_UNAVAILABLE]
    assert (unavailable.status, unavailable.reason) == ("True", Reason.JUDGE_UNAVAILABLE)
    assert "judge-7b stayed unreachable" in unavailable.message and "APITimeoutError" in unavailable.message
    assert [(e.type, e.reason) for e in out.events] == [("Normal", "Succeeded"), ("Warning", Reason.JUDGE_UNAVAILABLE)]


def test_forgetting_above_the_gate_in_fail_mode_fails_at_once_with_the_figure() -> None:
    error = {"code": ErrorCode.FORGETTING_EXCEEDED, "message": "forgetting ... above evaluation.maxForgetting 1.1",
             "field": "spec.evaluation.maxForgetting"}
    snapshot = ProgressSnapshot(progress=progress("Failed", attempt=1, error=error, evaluation=forgetting(True)))
    out = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Failed", "FAILED"), snapshot=snapshot
    )
    assert out.create_attempt is None and out.status.phase == "Failed"
    assert out.status.error is not None
    assert (out.status.error.code, out.status.error.retryable) == (ErrorCode.FORGETTING_EXCEEDED, False)
    assert out.status.evaluation is not None and out.status.evaluation.forgetting is not None
    assert out.status.evaluation.forgetting.exceeded
    conditions = {c.type: c.reason for c in out.status.conditions}
    assert conditions["Failed"] == ErrorCode.FORGETTING_EXCEEDED and "Degraded" not in conditions
