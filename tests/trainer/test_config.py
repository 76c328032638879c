"""The job context: every relative path the workers read is made absolute (Ray workers run elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftjob_api.types import parse_sftjob
from sftjob_trainer.config import context_for


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
