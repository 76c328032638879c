"""Fixtures of the trainer tests: a small copy-task dataset and SFTJob documents around the shared tiny model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from sftjob_api.types import SFTJob, parse_sftjob
from sftjob_trainer.demo import write_copy_task

# Rows of the test dataset: enough for a few optimizer steps per worker at global batch 8.
TRAIN_ROWS = 48
VALIDATION_ROWS = 8


@pytest.fixture(scope="session")
def copy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.jsonl and validation.jsonl of the demo's copy task."""
    return write_copy_task(tmp_path_factory.mktemp("copy-data"), TRAIN_ROWS, VALIDATION_ROWS, seed=3)


def job_document(name: str, model: str, train: str, validation: str | None, output_uri: str,
                 **sections: Any) -> dict[str, Any]:
    """An SFTJob document with small settings; `sections` deep-merge into `spec`."""
    spec: dict[str, Any] = {
        "model": {"source": model},
        "dataset": {"train": {"uri": train}, "schema": "prompt_completion"},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 4, "batchSize": 8, "learningRate": 1e-2, "logInterval": 1, "seed": 1},
        "compute": {"numWorkers": 1, "gpusPerWorker": 0, "cpusPerWorker": 1},
        "checkpointing": {"interval": 2, "keep": 2},
        "evaluation": {"numSamples": 2, "maxNewTokens": 4},
        "output": {"uri": output_uri},
    }
    if validation is not None:
        spec["dataset"]["validation"] = {"uri": validation}
    merge(spec, sections)
    return {"apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name}, "spec": spec}


def merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` into `into` (dicts merge, other values replace)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def make_job(name: str, model: Path | str, data: Path, output_uri: Path | str, **sections: Any) -> SFTJob:
    """A validated SFTJob over the copy data."""
    return parse_sftjob(job_document(name, str(model), str(data / "train.jsonl"), str(data / "validation.jsonl"),
                                     str(output_uri), **sections))
