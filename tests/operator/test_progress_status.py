"""progress_status: every progress.json shape, as derive_status copies it into the status. Pure: a fixed clock."""

from __future__ import annotations

import datetime as dt

import pytest
from status_cases import NOW, SHAPES, STAMP, job, rayjob, running_status

from sftjob_api.progress import format_duration
from sftjob_operator.status import derive_status

# ------------------------------------------------------------------------------ progress.json shapes

# The SFTJob phase with the RayJob Running/RUNNING, then with it Complete/SUCCEEDED.
SHAPE_PHASES = {
    "not read": ("Running", "Exporting"),
    "unreadable": ("Running", "Exporting"),
    "initializing": ("Running", "Exporting"),
    "preparing": ("Running", "Exporting"),
    "running": ("Running", "Exporting"),
    "exporting": ("Exporting", "Exporting"),
    "succeeded, no manifest": ("Exporting", "Exporting"),
    "succeeded": ("Exporting", "Succeeded"),
    "failed": ("Running", "Exporting"),
    "from another attempt": ("Running", "Exporting"),
    "no attempt number": ("Exporting", "Exporting"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_progress_shape(shape: str) -> None:
    snapshot = SHAPES[shape] if shape != "not read" else None
    running = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Running", "RUNNING"), snapshot=snapshot
    )
    done = derive_status(
        job(), running_status(), generation=1, now=NOW, rayjob=rayjob("Complete", "SUCCEEDED"), snapshot=snapshot
    )
    assert (running.status.phase, done.status.phase) == SHAPE_PHASES[shape]
    file = snapshot.progress if snapshot else None
    if file is None:
        assert running.status.progress is None and running.status.metrics is None
    else:
        assert running.status.progress is not None
        assert running.status.progress.step == file.step
        assert running.status.progress.percentage == file.percentage
        assert running.status.progress.last_update_time == file.updated_at
        assert running.status.metrics == file.metrics
    assert (running.status.output is not None) == (snapshot is not None and snapshot.output_complete)
    assert done.create_attempt is None and done.status.error is None


def test_running_progress_fills_every_field() -> None:
    out = derive_status(
        job(), running_status(), generation=3, now=NOW, rayjob=rayjob("Running", "RUNNING"), snapshot=SHAPES["running"]
    )
    status = out.status
    assert status.progress is not None and status.metrics is not None and status.resolved is not None
    assert (status.progress.step, status.progress.total_steps, status.progress.percentage) == (300, 1000, 30.0)
    assert status.progress.eta == "12m30s"  # estimated finish - last update: stable between reads
    assert status.progress.tokens_per_second == 512.5
    assert status.metrics.train_loss == 1.25
    assert status.resolved.batching == "packed"
    assert [c.step for c in status.checkpoints] == [100, 200, 300]
    assert status.best_checkpoint is not None and status.best_checkpoint.step == 200
    assert [e.reason for e in out.events] == ["CheckpointSaved", "Running"]
    assert status.start_time == STAMP
    assert {c.type: c.status for c in status.conditions} == {"Validated": "True", "Running": "True"}


def test_dataset_statistics_are_copied() -> None:
    out = derive_status(
        job(),
        running_status(),
        generation=1,
        now=NOW,
        rayjob=rayjob("Running", "RUNNING"),
        snapshot=SHAPES["preparing"],
    )
    assert out.status.dataset is not None and out.status.dataset.dropped == {"duplicate": 50}


def test_success_fills_output_uris_and_completion() -> None:
    out = derive_status(
        job(),
        running_status(),
        generation=1,
        now=NOW,
        rayjob=rayjob("Complete", "SUCCEEDED"),
        snapshot=SHAPES["succeeded"],
    )
    assert out.status.phase == "Succeeded"
    assert out.status.output is not None
    assert out.status.output.uri == "s3://out/sft/ns/j"
    assert out.status.output.adapter_uri == "s3://out/sft/ns/j/adapter"
    assert out.status.output.model_uri is None
    assert out.status.output.manifest_uri == "s3://out/sft/ns/j/manifest.json"
    assert out.status.completion_time == STAMP
    assert [e.reason for e in out.events] == ["Succeeded"]
    assert out.status.attempts[-1].result == "Succeeded"


def test_success_without_manifest_fails_after_the_grace_period() -> None:
    ended = (NOW - dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = derive_status(
        job(),
        running_status(),
        generation=1,
        now=NOW,
        rayjob=rayjob("Complete", "SUCCEEDED", endTime=ended),
        snapshot=SHAPES["succeeded, no manifest"],
    )
    assert out.status.phase == "Failed" and out.status.error is not None and out.status.error.code == "OutputIncomplete"


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59, 61, 3600 * 2 + 60 * 5, 86400 * 3 + 3600)] == [
        "0s",
        "59s",
        "1m1s",
        "2h5m",
        "3d1h",
    ]
