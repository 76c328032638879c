"""`spec.distillation`: the pydantic types and the CRD's CEL rules reject the same documents."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError
from tests.support.crd_check import server_errors

from sftjob_api.codes import RETRYABLE, ErrorCode
from sftjob_api.field_problems import check_document
from sftjob_trainer.distill import DistillResult, with_distilled_train

DOCUMENT: dict[str, Any] = {
    "apiVersion": "sftjob.dev/v1alpha1",
    "kind": "SFTJob",
    "metadata": {"name": "distilled-math"},
    "spec": {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"train": {"uri": "distilled"}, "validation": {"uri": "s3://ml-datasets/math/val.jsonl"}},
        "method": {"type": "lora"},
        "hyperparameters": {"epochs": 2},
        "output": {"uri": "s3://ml-models/sft"},
        "distillation": {
            "teacher": {"endpoint": "http://vllm.llm.svc:8000/v1", "model": "Qwen/Qwen3-8B",
                        "secretRef": {"name": "teacher-key"}},
            "prompts": {"uri": "s3://ml-datasets/math/questions.jsonl", "columnMap": {"question": "prompt"}},
            "systemPrompt": "Think step by step, then put the final answer in \\boxed{}.",
            "samplesPerPrompt": 4,
            "filters": {"verifier": {"extract": "boxed", "referenceColumn": "answer"}, "maxLength": 8000},
        },
    },
}


def _document(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    for path, value in changes.items():
        target = document["spec"]
        *parents, leaf = path.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return document


def test_a_distillation_job_is_valid_on_both_sides() -> None:
    job, problems = check_document(DOCUMENT)
    assert problems == [] and job is not None and job.spec.distillation is not None
    assert job.spec.distillation.teacher.concurrency == 8 and job.spec.distillation.keep_reasoning
    assert server_errors(DOCUMENT) == []
    assert ErrorCode.TEACHER_UNAVAILABLE in RETRYABLE


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"dataset__train": {"uri": "s3://ml-datasets/math/train.jsonl"}}, "spec.dataset",
     "set dataset.train.uri: distilled"),
    ({"distillation": None}, "spec.dataset", "names the teacher's answers"),
    ({"dataset__schema": "prompt_completion"}, "spec.dataset", "messages schema"),
    ({"distillation__prompts": {}}, "spec.distillation.prompts.uri", "exactly one of uri"),
    ({"distillation__prompts__generate": {"seedTasks": "seeds.jsonl", "count": 10}},
     "spec.distillation.prompts.uri", "exactly one of uri"),
    ({"distillation__temperature": 0}, "spec.distillation.samplesPerPrompt", "temperature above 0"),
    ({"distillation__prompts": {"generate": {"seedTasks": "seeds.jsonl", "count": 10}}},
     "spec.distillation.filters", "set prompts.uri"),
    ({"distillation__filters__verifier": {"extract": "regex"}}, "spec.distillation.filters.verifier.regex",
     "needs regex"),
    ({"distillation__filters__minLength": 10, "distillation__filters__maxLength": 5},
     "spec.distillation.filters.maxLength", "at least minLength"),
    ({"distillation__teacher__endpoint": "vllm:8000"}, "spec.distillation.teacher.endpoint", "http"),
    ({"distillation__teacher__concurrency": 0}, "spec.distillation.teacher.concurrency", "greater than or equal"),
])
def test_invalid_distillation_is_rejected_by_the_types_and_the_crd(changes: dict[str, Any], field: str,
                                                                    message: str) -> None:
    document = _document(**changes)
    _, problems = check_document(document)
    assert any(p.field == field and message in p.message for p in problems), problems
    assert server_errors(document), "the API server would accept what the types reject"


def test_distillation_is_immutable_once_created() -> None:
    changed = _document(distillation__temperature=1.0)
    assert any("distillation is immutable" in e for e in server_errors(changed, DOCUMENT))
    assert not server_errors(DOCUMENT, DOCUMENT)
    assert any("immutable" in e for e in server_errors(_document(distillation=None,
                                                                 dataset__train={"uri": "/data/t.jsonl"}), DOCUMENT))


def test_the_training_stage_gets_a_valid_spec_without_the_placeholder() -> None:
    job, _ = check_document(DOCUMENT)
    assert job is not None
    result = DistillResult(uri="s3://ml-models/sft/ns/distilled-math/data/distilled.jsonl",
                           stats=None,  # type: ignore[arg-type]
                           stats_uri="s3://ml-models/sft/ns/distilled-math/data/distilled.stats.json")
    spec = with_distilled_train(job.spec, result)
    assert spec.distillation is None and spec.dataset.train.uri == result.uri
    assert spec.dataset.validation == job.spec.dataset.validation
    type(spec).model_validate(spec.to_wire())  # still valid: workers that validate again accept it
    with pytest.raises(ValidationError):
        type(spec).model_validate({**spec.to_wire(), "dataset": {"train": {"uri": "distilled"}}})
