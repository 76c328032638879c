"""The driver's part: open the job's runs before training, log the artifacts after it, mark a failed attempt."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sftjob_api.layout import MANIFEST_FILE
from sftjob_api.progress import ProgressFile
from sftjob_api.types import ResolvedSettings, SFTJob, TrackingStatus
from sftjob_trainer import object_store
from sftjob_trainer.artifacts import EVAL_REPORT_FILE
from sftjob_trainer.tracking import mlflow_tracker, wandb_tracker
from sftjob_trainer.tracking.common import apply_credentials, enabled, hyperparameters, short_error
from sftjob_trainer.tracking.tensorboard_tracker import TENSORBOARD_DIR

log = logging.getLogger(__name__)

# Files `finish` writes from progress.json before logging them as artifacts.
DATASET_STATS_FILE = "dataset_stats.json"
EVALUATION_FILE = "evaluation.json"
# Files of the output that `finish` logs as artifacts when they exist.
DEFAULT_ARTIFACTS = (MANIFEST_FILE, EVAL_REPORT_FILE)


def start(job: SFTJob, output_uri: str, attempt: int, resolved: ResolvedSettings | None,
          earlier: TrackingStatus | None, resume: bool) -> TrackingStatus | None:
    """Open the job's runs (driver, before training): reuse the earlier attempts' runs, else create them.

    Args:
        job: The job.
        output_uri: The job's output directory.
        attempt: This attempt's number (an MLflow tag).
        resolved: The resolved settings, logged as params with the spec's training sections.
        earlier: `tracking` of the progress.json an earlier attempt left, or None.
        resume: Whether this attempt continues earlier ones (the driver's resumable: `resumeFrom: latest` and
            an earlier progress.json). False: new runs, whatever `earlier` says.

    Returns:
        What to record as `ProgressFile.tracking` (None when `spec.tracking` is off). A tracker that could not
        be reached is missing from it, and `message` says why.
    """
    spec = job.spec.tracking
    if not enabled(spec):
        return None
    apply_credentials()
    params = hyperparameters(job, resolved)
    before = earlier if resume else None
    status = TrackingStatus()
    problems: list[str] = []
    if spec.mlflow is not None:
        try:
            status.mlflow = mlflow_tracker.start_run(spec.mlflow, job, output_uri, attempt, params,
                                          before.mlflow if before else None, resume)
        except Exception as err:  # tracking never fails the job
            problems.append(f"MLflow at {spec.mlflow.tracking_uri} unavailable ({short_error(err)})")
    if spec.tensorboard:
        status.tensorboard_uri = object_store.join(output_uri, TENSORBOARD_DIR)
    if spec.wandb is not None:
        try:
            status.wandb = wandb_tracker.start_run(spec.wandb, job, params, before.wandb if before else None)
        except Exception as err:  # tracking never fails the job
            problems.append(f"Weights & Biases unavailable ({short_error(err)})")
    if problems:
        status.message = "; ".join(problems) + "; training goes on without it"
        log.warning("tracking: %s", status.message)
    return status


def finish(job: SFTJob, output_uri: str, progress: ProgressFile, files: Iterable[str] = DEFAULT_ARTIFACTS) -> None:
    """Log the artifacts and close the runs (driver, after manifest.json is written).

    Logged: `dataset_stats.json` (`progress.dataset`), `evaluation.json` (`progress.evaluation`), and `files`
    of the output that exist. MLflow's run ends FINISHED; W&B gets an artifact `<job>-outputs` and the run ends.
    Failures are logged, never raised.

    Args:
        job: The job.
        output_uri: The job's output directory.
        progress: The final progress (its `tracking`, `dataset` and `evaluation`).
        files: Paths relative to the output to log as artifacts when present.
    """
    status = progress.tracking
    spec = job.spec.tracking
    if status is None or not enabled(spec):
        return
    apply_credentials()
    with tempfile.TemporaryDirectory(prefix="sftjob-tracking-") as tmp:
        paths = _artifact_files(output_uri, progress, files, Path(tmp))
        if spec.mlflow is not None and status.mlflow is not None:
            try:
                mlflow_tracker.finish_run(spec.mlflow, status.mlflow.run_id, paths)
            except Exception as err:  # tracking never fails the job
                log.warning("tracking: MLflow artifacts not logged: %s", short_error(err))
        if spec.wandb is not None and status.wandb is not None:
            try:
                wandb_tracker.finish_run(spec.wandb, status.wandb, job, output_uri, paths, progress)
            except Exception as err:  # tracking never fails the job
                log.warning("tracking: W&B artifacts not logged: %s", short_error(err))


def _artifact_files(output_uri: str, progress: ProgressFile, files: Iterable[str], tmp: Path) -> list[Path]:
    paths: list[Path] = []
    for name, section in ((DATASET_STATS_FILE, progress.dataset), (EVALUATION_FILE, progress.evaluation)):
        if section is not None:
            path = tmp / name
            path.write_text(json.dumps(section.to_wire(), indent=2, sort_keys=True) + "\n")
            paths.append(path)
    for name in files:
        try:
            paths.append(object_store.download_file(object_store.join(output_uri, name), tmp / name))
        except object_store.StorageError as err:
            if err.code != object_store.NOT_FOUND:
                log.warning("tracking: %s not logged: %s", name, err)
    return paths


def fail(job: SFTJob, status: TrackingStatus | None) -> None:
    """Mark the MLflow run FAILED (driver, when the attempt fails); a retry's attempt sets it RUNNING again."""
    spec = job.spec.tracking
    if status is None or status.mlflow is None or spec.mlflow is None:
        return
    apply_credentials()
    try:
        mlflow_tracker.fail_run(spec.mlflow, status.mlflow.run_id)
    except Exception as err:  # tracking never fails the job
        log.warning("tracking: MLflow run not marked failed: %s", short_error(err))
