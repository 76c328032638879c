"""Rank 0's progress writer: throttled writes that keep the metrics."""

from __future__ import annotations

from pathlib import Path

from sftjob_api.progress import ProgressFile
from sftjob_trainer.reporting import ProgressWriter, read_metrics


def test_progress_writer_throttles_and_keeps_metrics(tmp_path: Path) -> None:
    writer = ProgressWriter(str(tmp_path), attempt=2, interval_s=3600)
    writer.set_phase("Running")
    writer.update(step=5)  # within the interval: not written yet
    assert ProgressFile.model_validate_json((tmp_path / "progress.json").read_text()).step == 0
    writer.update(force=True, step=6, total_steps=10, percentage=60.0)
    written = ProgressFile.model_validate_json((tmp_path / "progress.json").read_text())
    assert (written.phase, written.step, written.attempt) == ("Running", 6, 2)
    for step in (1, 2, 3):
        writer.append_metrics({"step": step, "loss": float(step), "bad": float("nan")})
    writer.truncate_metrics_after(2)
    assert read_metrics(str(tmp_path)) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]
