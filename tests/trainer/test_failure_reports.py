"""Expected failures end with phase Failed, an error code and message in progress.json, and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sftjob_api.progress import ProgressFile

from .conftest import job_document


def _run(doc: dict[str, Any], env: dict[str, str] | None = None,
         timeout: int = 120) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {}), "SFTJOB_CONFIG": json.dumps(doc)}
    return subprocess.run([sys.executable, "-m", "sftjob_trainer"], env=full, capture_output=True, text=True,
                          timeout=timeout)


def _failed(out: Path) -> ProgressFile:
    progress = ProgressFile.model_validate_json((out / "progress.json").read_text())
    assert progress.phase == "Failed" and progress.error is not None
    return progress


def test_bad_base_model_path(copy_data: Path, tmp_path: Path) -> None:
    doc = job_document("bad-model", str(tmp_path / "nowhere"), str(copy_data / "train.jsonl"), None, str(tmp_path))
    proc = _run(doc)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = _failed(tmp_path / "bad-model").error
    assert error is not None and (error.code, error.field) == ("ModelUnreadable", "spec.model.source")
    assert "does not exist" in error.message and not error.retryable


def test_unreadable_dataset(tiny_model_dir: Path, tmp_path: Path) -> None:
    doc = job_document("bad-data", str(tiny_model_dir), str(tmp_path / "missing.jsonl"), None, str(tmp_path))
    proc = _run(doc)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = _failed(tmp_path / "bad-data").error
    assert error is not None and error.code == "DatasetUnreadable" and "missing.jsonl" in error.message


def test_missing_credentials(tiny_model_dir: Path, tmp_path: Path, s3_server: Any) -> None:
    doc = job_document("no-creds", str(tiny_model_dir), "s3://sft-it/data/train.jsonl", None, str(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"})
    proc = subprocess.run([sys.executable, "-m", "sftjob_trainer"], env={**env, "SFTJOB_CONFIG": json.dumps(doc)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = _failed(tmp_path / "no-creds").error
    assert error is not None and error.code == "MissingCredentials"


def test_sftjob_run_reports_a_bad_file_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("apiVersion: sftjob.dev/v1alpha1\nkind: SFTJob\nmetadata: {name: x}\nspec:\n"
                                       "  model: {source: m}\n  dataset: {train: {uri: d}}\n  method: {type: lorra}\n"
                                       "  output: {uri: o}\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "sftjob"), "run", str(tmp_path / "job.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "job.yaml:7: spec.method.type" in proc.stderr and "Traceback" not in proc.stderr


def test_out_of_memory_on_the_first_step(ray_cluster: None, tiny_model_dir: Path, copy_data: Path,
                                         tmp_path: Path) -> None:
    import ray

    # The allocator failure is injected at step 1 on rank 0 (torch's own OutOfMemoryError, raised inside the
    # Ray Train worker); everything after it - the worker, Ray, the driver, progress.json - is the real path.
    doc = job_document("oom", str(tiny_model_dir), str(copy_data / "train.jsonl"), None, str(tmp_path),
                       hyperparameters={"maxSteps": 3})
    # A generous limit: starting Ray Train workers on a loaded 2-core machine takes a minute or more.
    proc = _run(doc, {"SFTJOB_FAULT_OOM_AT_STEP": "1", "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
                timeout=400)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # Out of memory repeats with the same settings: the workers are not started again (backoffLimit is 3).
    assert "restarting them" not in proc.stderr
    progress = _failed(tmp_path / "oom")
    error = progress.error
    assert error is not None and error.code == "OutOfMemory" and not error.retryable
    assert "first" in error.message or "step 1" in error.message
    assert progress.step == 0
    assert not (tmp_path / "oom" / "manifest.json").exists()


def test_a_run_into_a_finished_output_removes_its_manifest_first(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A finished run's output, then a new run into it that fails early: the output must not look complete.
    out = tmp_path / "rerun"
    out.mkdir()
    (out / "manifest.json").write_text('{"files": {}}')
    doc = job_document("rerun", str(tiny_model_dir), str(tmp_path / "missing.jsonl"), None, str(tmp_path))
    proc = _run(doc)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert not (out / "manifest.json").exists()
    assert "finished run's manifest.json" in proc.stderr
    assert _failed(out).error is not None


def test_delete_file_local_and_s3(tmp_path: Path, s3_server: Any, monkeypatch: Any) -> None:
    from sftjob_trainer import object_store

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.create_bucket("sft-delete")
    for uri in (str(tmp_path / "a" / "manifest.json"), f"{bucket}/a/manifest.json"):
        object_store.write_bytes(uri, b"{}")
        assert object_store.exists(uri)
        assert object_store.delete_file(uri) is True
        assert not object_store.exists(uri)
        assert object_store.delete_file(uri) is False
