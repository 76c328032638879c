"""The job context: every relative path the workers read is made absolute (Ray workers run elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftjob_api.types import parse_sftjob
from sftjob_trainer.job_context import context_for, load_context
from sftjob_trainer.trainer_error import TrainerError

from .conftest import job_document


def test_relative_paths_of_data_model_evaluation_and_output_become_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    job = parse_sftjob({
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "rel"},
        "spec": {
            "model": {"source": "models/base"},
            "dataset": {"train": {"uri": "data/train.jsonl"}, "validation": {"uri": "data/val.jsonl"}},
            "evaluation": {"reference": {"uri": "data/ref.jsonl"},
                           "tasks": [{"name": "orders", "uri": "data/orders.jsonl", "type": "generate_until"},
                                     {"name": "arc_easy"}]},
            "output": {"uri": "out"},
        },
    })
    spec = context_for(job, 1).job.spec
    assert spec.model.source == str(tmp_path / "models/base")
    assert spec.dataset.train.uri == str(tmp_path / "data/train.jsonl")
    assert spec.evaluation.reference is not None and spec.evaluation.reference.uri == str(tmp_path / "data/ref.jsonl")
    assert [t.uri for t in spec.evaluation.tasks] == [str(tmp_path / "data/orders.jsonl"), None]
    assert spec.output.uri == str(tmp_path / "out")


def test_config_from_env_and_file(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    doc = job_document("env-job", "model", "data/train.jsonl", None, "out")
    ctx = load_context({"SFTJOB_CONFIG": json.dumps(doc), "SFTJOB_ATTEMPT": "3"})
    assert (ctx.name, ctx.attempt) == ("env-job", 3)
    assert ctx.output_uri == str(Path("out").absolute() / "env-job")  # relative paths resolved for Ray workers
    (tmp_path / "job.json").write_text(json.dumps({**doc, "metadata": {"name": "f", "namespace": "ns"}}))
    assert load_context({"SFTJOB_CONFIG_FILE": str(tmp_path / "job.json")}).output_uri.endswith("/out/ns/f")
    for env, field in (({}, None), ({"SFTJOB_CONFIG": "{"}, None),
                       ({"SFTJOB_CONFIG": json.dumps({**doc, "spec": {**doc["spec"], "method": {"type": "x"}}})},
                        "spec.method.type")):
        with pytest.raises(TrainerError) as err:
            load_context(env)
        assert err.value.code == "InvalidSpec" and err.value.field == field
