"""Inputs the status tests share: a job, its status after an attempt started, RayJobs, progress.json shapes.

Pure data and builders on a fixed clock; the tests of `status`, `kuberay_state`, `progress_status`, `retry_policy`
and `conditions` import them (pytest's prepend import mode puts tests/operator, which has no `__init__.py`, on
`sys.path`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sftjob_api.progress import ProgressFile
from sftjob_api.types import SFTJob, SFTJobStatus, parse_sftjob
from sftjob_operator.progress_status import ProgressSnapshot
from sftjob_operator.status import derive_status

NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
STAMP = "2026-05-01T12:00:00Z"


def job(**run_policy: Any) -> SFTJob:
    return parse_sftjob(
        {
            "apiVersion": "sftjob.dev/v1alpha1",
            "kind": "SFTJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "model": {"source": "hf://org/m"},
                "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
                "output": {"uri": "s3://out/sft"},
                "runPolicy": run_policy,
            },
        }
    )


def running_status(attempt: int = 1, **fields: Any) -> SFTJobStatus:
    """A status as written after attempt `attempt` was created."""
    base = derive_status(job(), SFTJobStatus(), generation=1, now=NOW, rayjob=None).status
    for n in range(2, attempt + 1):
        base.attempt = n
    return base.model_copy(update=fields)


def rayjob(deployment: str = "", job_status: str = "", *, suspend: bool = False, **status: Any) -> dict[str, Any]:
    ray_status = {"jobDeploymentStatus": deployment, "jobStatus": job_status, **status}
    return {
        "metadata": {"name": "j-a1"},
        "spec": {"suspend": suspend},
        "status": {k: v for k, v in ray_status.items() if v},
    }


def progress(phase: str = "Running", **fields: Any) -> ProgressFile:
    return ProgressFile.model_validate({"phase": phase, "updatedAt": STAMP, **fields})


CHECKPOINTS = [
    {"step": 100, "uri": "s3://out/sft/ns/j/checkpoints/100", "evalLoss": 1.1},
    {"step": 200, "uri": "s3://out/sft/ns/j/checkpoints/200", "evalLoss": 0.9},
    {"step": 300, "uri": "s3://out/sft/ns/j/checkpoints/300", "evalLoss": 1.0},
]
SHAPES: dict[str, ProgressSnapshot] = {
    "not read": ProgressSnapshot(),
    "unreadable": ProgressSnapshot(problem="s3://out/sft/ns/j/progress.json: AccessDenied"),
    "initializing": ProgressSnapshot(progress=progress("Initializing")),
    "preparing": ProgressSnapshot(
        progress=progress(
            "Preparing",
            dataset={"format": "messages", "rows": 1000, "trainExamples": 950, "dropped": {"duplicate": 50}},
        )
    ),
    "running": ProgressSnapshot(
        progress=progress(
            "Running",
            attempt=1,
            step=300,
            totalSteps=1000,
            epoch=0.9,
            percentage=30.0,
            trainedTokens=123456,
            tokensPerSecond=512.5,
            estimatedFinishTime="2026-05-01T12:12:30Z",
            metrics={"trainLoss": 1.25, "evalLoss": 1.0, "learningRate": 0.0002, "gradNorm": 0.7},
            resolved={"learningRate": 0.0002, "perDeviceBatchSize": 4, "numWorkers": 2, "batching": "packed"},
            checkpoints=CHECKPOINTS,
        )
    ),
    "exporting": ProgressSnapshot(progress=progress("Exporting", step=1000, totalSteps=1000, percentage=100.0)),
    "succeeded, no manifest": ProgressSnapshot(
        progress=progress("Succeeded", step=1000, totalSteps=1000, percentage=100.0)
    ),
    "succeeded": ProgressSnapshot(
        progress=progress("Succeeded", step=1000, totalSteps=1000, percentage=100.0), output_complete=True
    ),
    "failed": ProgressSnapshot(
        progress=progress("Failed", attempt=1, error={"code": "NcclTimeout", "message": "rank 1 timed out"})
    ),
    "from another attempt": ProgressSnapshot(
        progress=progress("Failed", attempt=7, error={"code": "InvalidDataset", "message": "x"})
    ),
    "no attempt number": ProgressSnapshot(progress=progress("Exporting", step=5)),
}
