"""MLflow: the job's run on the tracking server (created or continued by the driver) and rank 0's sink into it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sftjob_api.types import MlflowRunStatus, MlflowTrackingSpec, SFTJob
from sftjob_trainer.tracking.common import Sink

# MLflow run tags: the job, and the output that a driver searches by when progress.json lost the run id.
JOB_TAG = "sftjob.job"
OUTPUT_TAG = "sftjob.output"
ATTEMPT_TAG = "sftjob.attempt"
# MLflow accepts at most 100 params per log_batch call.
MLFLOW_PARAMS_PER_CALL = 100


def mlflow_client(spec: MlflowTrackingSpec) -> Any:
    """A client of the tracking server of `spec`."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=spec.tracking_uri)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The page of an MLflow run in the tracking server's UI."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created meanwhile by another job
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _live_run(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return bool(client.get_run(run_id).info.lifecycle_stage == "active")
    except MlflowException:
        return False


def start_run(spec: MlflowTrackingSpec, job: SFTJob, output_uri: str, attempt: int, params: dict[str, str],
              earlier: MlflowRunStatus | None, resume: bool) -> MlflowRunStatus:
    """Continue the earlier attempts' run (or, when resuming, the newest run of this output), else create one.

    The params the run lacks are logged, with this attempt's number as a tag.
    """
    from mlflow.entities import Param, RunTag

    client = mlflow_client(spec)
    experiment_id = _experiment_id(client, spec.experiment)
    run_id = earlier.run_id if earlier is not None and _live_run(client, earlier.run_id) else None
    if run_id is None and resume and "'" not in output_uri:
        # progress.json lost the id (an attempt died between creating the run and recording it): the newest
        # run of this output is ours.
        found = client.search_runs([experiment_id], filter_string=f"tags.`{OUTPUT_TAG}` = '{output_uri}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        run_id = found[0].info.run_id if found else None
    if run_id is None:
        job_name = "/".join(filter(None, [job.metadata.namespace, job.name]))
        run = client.create_run(experiment_id, tags={JOB_TAG: job_name, OUTPUT_TAG: output_uri},
                                run_name=job.name)
        run_id = run.info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    # Params are immutable in MLflow: log only those the run lacks (a resumed attempt re-plans the same values).
    logged = client.get_run(run_id).data.params
    fresh = [Param(key, value) for key, value in params.items() if key not in logged]
    for index in range(0, max(len(fresh), 1), MLFLOW_PARAMS_PER_CALL):
        client.log_batch(run_id, params=fresh[index:index + MLFLOW_PARAMS_PER_CALL],
                         tags=[RunTag(ATTEMPT_TAG, str(attempt))] if index == 0 else [])
    return MlflowRunStatus(run_id=run_id, experiment_id=experiment_id,
                           url=run_url(spec.tracking_uri, experiment_id, run_id))


def finish_run(spec: MlflowTrackingSpec, run_id: str, paths: list[Path]) -> None:
    """Log `paths` as artifacts of the run and end it FINISHED."""
    client = mlflow_client(spec)
    for path in paths:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")


def fail_run(spec: MlflowTrackingSpec, run_id: str) -> None:
    """End the run FAILED (a retry's attempt sets it RUNNING again)."""
    mlflow_client(spec).set_terminated(run_id, "FAILED")


class MlflowSink(Sink):
    """The run on rank 0: the steps it holds come from the server's metric history."""

    name = "MLflow"

    def __init__(self, spec: MlflowTrackingSpec, status: MlflowRunStatus, attempt: int | None) -> None:
        super().__init__()
        from mlflow.entities import RunTag

        self.client = mlflow_client(spec)
        self.run_id = status.run_id
        self.client.update_run(self.run_id, status="RUNNING")
        if attempt is not None:
            self.client.log_batch(self.run_id, tags=[RunTag(ATTEMPT_TAG, str(attempt))])
        for key in self.client.get_run(self.run_id).data.metrics:
            history = self.client.get_metric_history(self.run_id, key)
            self.marks[key] = max((m.step for m in history), default=-1)

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])
