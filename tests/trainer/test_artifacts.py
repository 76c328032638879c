"""The model card and manifest.json: how they report forgetting, and mark only an output whose gate was broken."""

from __future__ import annotations

import json

import pytest

from sftjob_api.codes import ErrorCode
from sftjob_api.layout import artifacts_for
from sftjob_api.progress import ProgressFile
from sftjob_api.types import ForgettingResult, parse_sftjob
from sftjob_trainer.artifacts import manifest, model_card

JOB = parse_sftjob({
    "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "j"},
    "spec": {"model": {"source": "hf://org/m"}, "dataset": {"train": {"uri": "train.jsonl"}},
             "evaluation": {"reference": {"uri": "s3://data/reference.jsonl"}, "maxForgetting": 1.1},
             "output": {"uri": "s3://out/sft"}},
})


def _progress(forgetting: ForgettingResult | None) -> ProgressFile:
    evaluation = {"forgetting": forgetting.to_wire()} if forgetting is not None else None
    return ProgressFile.model_validate({"phase": "Exporting", "updatedAt": "2026-05-01T12:00:00Z", "step": 4,
                                        "evaluation": evaluation})


@pytest.mark.parametrize("exceeded", [False, True])
def test_forgetting_is_reported_and_only_an_exceeded_gate_marks_the_output(exceeded: bool) -> None:
    ratio = 1.3 if exceeded else 1.05
    result = ForgettingResult(base_loss=2.0, tuned_loss=2.0 * ratio, ratio=ratio, tokens=500, rows=8,
                              max_forgetting=1.1, exceeded=exceeded)
    body = json.loads(manifest(JOB, _progress(result), {}, None, {}))
    assert body["evaluation"] == {"forgetting": result.to_wire(), "metrics": [], "tasks": []}
    degraded = [{"reason": ErrorCode.FORGETTING_EXCEEDED, "message": result.summary()}]
    assert body["degraded"] == (degraded if exceeded else [])
    card = model_card(JOB, _progress(result), "s3://out/sft/j", artifacts_for(JOB.spec))
    assert "## Forgetting\n\nMean token loss on 8 rows of `s3://data/reference.jsonl`" in card
    assert result.summary() in card
    assert ("> **Degraded (ForgettingExceeded)**" in card) is exceeded


def test_without_a_reference_set_nothing_is_reported() -> None:
    body = json.loads(manifest(JOB, _progress(None), {}, None, {}))
    assert (body["evaluation"], body["degraded"]) == (None, [])
    card = model_card(JOB, _progress(None), "s3://out/sft/j", artifacts_for(JOB.spec))
    assert "Forgetting" not in card and "Degraded" not in card


@pytest.mark.parametrize(("method", "merge", "library", "dirs"), [
    ("lora", False, "peft", ["adapter"]), ("lora", True, "peft", ["adapter", "model"]),
    ("full", False, "transformers", ["model"]),
])
def test_the_model_card_tells_how_to_load_each_directory_the_output_holds(method: str, merge: bool, library: str,
                                                                          dirs: list[str]) -> None:
    job = JOB.model_copy(update={"spec": JOB.spec.model_copy(update={
        "method": JOB.spec.method.model_copy(update={"type": method}),
        "output": JOB.spec.output.model_copy(update={"merge_adapter": merge})})})
    card = model_card(job, _progress(None), "s3://out/sft/j", artifacts_for(job.spec))
    assert f"library_name: {library}\n" in card
    assert [d for d in ("adapter", "model") if f'from_pretrained("{d}")' in card] == dirs
