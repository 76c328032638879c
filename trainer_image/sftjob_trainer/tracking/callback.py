"""Rank 0's Trainer callback: each metric logged once to every tracker, at the steps it does not hold yet."""

from __future__ import annotations

import logging
from typing import Any

from sftjob_api.progress import ProgressFile
from sftjob_api.types import SFTJob
from sftjob_trainer.tracking.common import (
    Sink,
    apply_credentials,
    enabled,
    hyperparameters,
    metric_records,
    short_error,
)
from sftjob_trainer.tracking.mlflow_tracker import MlflowSink
from sftjob_trainer.tracking.tensorboard_tracker import TensorBoardSink
from sftjob_trainer.tracking.wandb_tracker import WandbSink

log = logging.getLogger(__name__)


def open_sinks(job: SFTJob, output_uri: str, progress: ProgressFile) -> list[Sink]:
    """The trackers of `progress.tracking` for this attempt's rank 0 (those that cannot be opened are skipped)."""
    spec = job.spec.tracking
    status = progress.tracking
    if status is None or not enabled(spec):
        return []
    apply_credentials()
    params = hyperparameters(job, progress.resolved)
    sinks: list[Sink] = []
    openers: list[tuple[str, Any]] = []
    if spec.mlflow is not None and status.mlflow is not None:
        mlflow_spec, mlflow_status = spec.mlflow, status.mlflow
        openers.append(("MLflow", lambda: MlflowSink(mlflow_spec, mlflow_status, progress.attempt)))
    if spec.tensorboard:
        openers.append(("TensorBoard", lambda: TensorBoardSink(output_uri, params, progress.attempt)))
    if spec.wandb is not None and status.wandb is not None:
        wandb_spec, wandb_status = spec.wandb, status.wandb
        openers.append(("Weights & Biases",
                        lambda: WandbSink(wandb_spec, wandb_status, job, output_uri, params)))
    for name, opener in openers:
        try:
            sinks.append(opener())
        except Exception as err:  # tracking never fails the job
            log.warning("tracking: %s unavailable for this attempt: %s", name, short_error(err))
    return sinks


def tracking_callback(job: SFTJob, output_uri: str, progress: ProgressFile) -> Any | None:
    """The Trainer callback that logs rank 0's metrics to the job's runs (None when tracking is off).

    Create it on rank 0 only, with the attempt's progress (its `tracking` from the driver's `start`,
    its `resolved` for the params). The trackers open at `on_train_begin`.

    Args:
        job: The job.
        output_uri: The job's output directory.
        progress: The attempt's progress.json state.

    Returns:
        A `transformers.TrainerCallback`, or None.
    """
    if progress.tracking is None or not enabled(job.spec.tracking):
        return None
    from transformers import TrainerCallback

    class TrackingCallback(TrainerCallback):
        def __init__(self) -> None:
            self.sinks: list[Sink] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not self.sinks:
                self.sinks = open_sinks(job, output_uri, progress)

        def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
            """Log metrics that do not pass through the Trainer's logs (e.g. `eval/exact_match` of another callback)."""
            for sink in self.sinks:
                sink.write(step, metrics)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            metrics = metric_records(logs or {})
            if metrics:
                for sink in self.sinks:
                    sink.write(state.global_step, metrics)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for sink in self.sinks:
                sink.sync()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as err:  # tracking never fails the job
                    log.warning("tracking: %s not closed: %s", sink.name, short_error(err))
            self.sinks = []

    return TrackingCallback()
