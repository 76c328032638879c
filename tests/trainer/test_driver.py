"""The driver's Ray Train run configuration (checkpoint storage, run name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftjob_trainer.driver import checkpoint_storage, run_name
from sftjob_trainer.job_context import context_for

from .conftest import make_job


def test_run_config(tiny_model_dir: Path, copy_data: Path, tmp_path: Path, s3_env: Any) -> None:
    latest = context_for(make_job("job", tiny_model_dir, copy_data, tmp_path), 1)
    assert run_name(latest) == "job"
    fresh = context_for(make_job("job", tiny_model_dir, copy_data, tmp_path, checkpointing={"resumeFrom": "none"}),
                        1)
    assert run_name(fresh) == "job-a1"
    path, filesystem = checkpoint_storage("s3://bucket/out/job")
    assert path == "bucket/out/job/checkpoints" and type(filesystem).__name__ == "S3FileSystem"
    local_path, local_fs = checkpoint_storage(str(tmp_path / "job"))
    assert local_path == str(tmp_path / "job" / "checkpoints") and local_fs is None
