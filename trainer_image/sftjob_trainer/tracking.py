"""Experiment tracking (`spec.tracking`): one MLflow run, one W&B run and one TensorBoard directory per job.

Every attempt of a job continues the same runs, and each training step reaches each tracker once:

- the driver opens the runs before training (`start`) and records their ids in progress.json
  (`ProgressFile.tracking`), which the next attempt's driver reads back (`earlier`), as it reads the checkpoints;
- rank 0 logs through `tracking_callback`, a Trainer callback of ours. transformers' own integrations
  (`report_to: mlflow, tensorboard, wandb`) cannot continue a run across attempts: MLflowCallback logs every
  TrainingArguments value as a param again on resume (a per-attempt temporary `output_dir` makes MLflow reject the
  changed value), and none of them knows which steps a killed attempt already logged, so the steps between the
  resumed checkpoint and the kill would be logged twice. The callback asks each tracker what it already holds for
  each metric (MLflow: the run's metric history on the server; TensorBoard: the event files under the output;
  W&B: a small file next to its run files) and logs only later steps. So a step between the checkpoint and the
  kill keeps the value the killed attempt logged (the resumed attempt trains it again from the same state and data
  order), and every step appears once;
- the driver logs the dataset statistics, the evaluation results and manifest.json as artifacts at the end
  (`finish`) and marks the run finished, or failed (`fail`).

Tracking never fails or stops a job: a tracker that cannot be reached is reported in `status.tracking.message`
(at the start) or in the log (during training), and training goes on without it.

Credentials come only from the Secrets of `tracking.mlflow.secretRef` and `tracking.wandb.secretRef`, as
environment variables: `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`, and
`WANDB_API_KEY`. When the operator also exposes them with the role prefix (`SFTJOB_MLFLOW_`, `SFTJOB_WANDB_`),
the prefixed value wins, so a key of the same name in another Secret cannot shadow it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from sftjob_api.layout import MANIFEST_FILE
from sftjob_api.progress import ProgressFile
from sftjob_api.types import (
    MlflowRunStatus,
    MlflowTrackingSpec,
    ResolvedSettings,
    SFTJob,
    TrackingSpec,
    TrackingStatus,
    WandbRunStatus,
    WandbTrackingSpec,
)
from sftjob_trainer import storage
from sftjob_trainer.artifacts import EVAL_REPORT_FILE

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
# Per metric, the last step logged to W&B (W&B's offline files cannot be queried); next to its run files.
WANDB_STEPS_FILE = "sftjob-logged-steps.json"
# Files `finish` writes from progress.json before logging them as artifacts.
DATASET_STATS_FILE = "dataset_stats.json"
EVALUATION_FILE = "evaluation.json"
# Files of the output that `finish` logs as artifacts when they exist.
DEFAULT_ARTIFACTS = (MANIFEST_FILE, EVAL_REPORT_FILE)
# MLflow run tags: the job, and the output that a driver searches by when progress.json lost the run id.
JOB_TAG = "sftjob.job"
OUTPUT_TAG = "sftjob.output"
ATTEMPT_TAG = "sftjob.attempt"
# Credentials each tracker reads from the environment, and the operator's role prefixes of their Secrets.
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
WANDB_CREDENTIALS = ("WANDB_API_KEY", "WANDB_BASE_URL")
MLFLOW_ENV_PREFIX = "SFTJOB_MLFLOW_"
WANDB_ENV_PREFIX = "SFTJOB_WANDB_"
# MLflow's client retries a request 7 times with backoff up to ~4 min by default: a dead server would stall
# training at every log call. These bound it (~10 s) unless the pod's environment sets them.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# MLflow accepts at most 100 params per log_batch call, and values up to 6000 characters.
MLFLOW_PARAMS_PER_CALL = 100
MAX_PARAM_CHARS = 500
# Spec sections logged as params, besides the resolved settings.
PARAM_SECTIONS = ("model", "dataset", "method", "hyperparameters", "compute", "checkpointing")


def enabled(spec: TrackingSpec) -> bool:
    """Whether `spec.tracking` asks for any tracker."""
    return spec.mlflow is not None or spec.tensorboard or spec.wandb is not None


def apply_credentials(environ: MutableMapping[str, str] | None = None) -> None:
    """Expose the trackers' credentials and bounded MLflow retries under the names their clients read.

    Args:
        environ: The environment to update (default: `os.environ`).
    """
    env = os.environ if environ is None else environ
    for prefix, names in ((MLFLOW_ENV_PREFIX, MLFLOW_CREDENTIALS), (WANDB_ENV_PREFIX, WANDB_CREDENTIALS)):
        for name in names:
            value = env.get(prefix + name)
            if value:
                env[name] = value
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        env.setdefault(name, value)


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key != "secretRef":  # a Secret's name is no secret, but it is no hyperparameter either
                _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif value is not None:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out[prefix] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def hyperparameters(job: SFTJob, resolved: ResolvedSettings | None) -> dict[str, str]:
    """The params of the job's run: the spec's training sections and the resolved settings, flattened.

    Keys are dotted camelCase wire paths (`hyperparameters.learningRate`, `resolved.globalBatchSize`);
    values are strings (JSON for numbers, booleans and lists), cut at 500 characters. No `secretRef`.

    Args:
        job: The job.
        resolved: The values the trainer chose for `auto` and unset fields (None before planning).

    Returns:
        `{key: value}`, sorted by key.
    """
    wire = job.spec.to_wire()
    out: dict[str, str] = {}
    for section in PARAM_SECTIONS:
        _flatten(wire.get(section), section, out)
    if resolved is not None:
        _flatten(resolved.to_wire(), "resolved", out)
    return dict(sorted(out.items()))


def metric_records(logs: Mapping[str, Any]) -> dict[str, float]:
    """One Trainer log record as tracker metrics: `train/<name>`, `eval/<name>` (numbers only).

    The names follow transformers' integrations (`rewrite_logs`), so dashboards built for them still work.
    """
    out: dict[str, float] = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key.startswith("eval_"):
            name = "eval/" + key[len("eval_"):]
        elif key.startswith("test_"):
            name = "test/" + key[len("test_"):]
        else:
            name = "train/" + key
        out[name] = float(value)
    return out


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:300]


# ---------------------------------------------------------------------------------------------- driver


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
            status.mlflow = _start_mlflow(spec.mlflow, job, output_uri, attempt, params,
                                          before.mlflow if before else None, resume)
        except Exception as err:  # tracking never fails the job
            problems.append(f"MLflow at {spec.mlflow.tracking_uri} unavailable ({_short(err)})")
    if spec.tensorboard:
        status.tensorboard_uri = storage.join(output_uri, TENSORBOARD_DIR)
    if spec.wandb is not None:
        try:
            status.wandb = _start_wandb(spec.wandb, job, params, before.wandb if before else None)
        except Exception as err:  # tracking never fails the job
            problems.append(f"Weights & Biases unavailable ({_short(err)})")
    if problems:
        status.message = "; ".join(problems) + "; training goes on without it"
        log.warning("tracking: %s", status.message)
    return status


def _mlflow_client(spec: MlflowTrackingSpec) -> Any:
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


def _start_mlflow(spec: MlflowTrackingSpec, job: SFTJob, output_uri: str, attempt: int, params: dict[str, str],
                  earlier: MlflowRunStatus | None, resume: bool) -> MlflowRunStatus:
    from mlflow.entities import Param, RunTag

    client = _mlflow_client(spec)
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


def _wandb_settings() -> Any:
    import wandb

    return wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True, save_code=False,
                          x_save_requirements=False)


def _start_wandb(spec: WandbTrackingSpec, job: SFTJob, params: dict[str, str],
                 earlier: WandbRunStatus | None) -> WandbRunStatus:
    run_id = earlier.run_id if earlier is not None else uuid.uuid4().hex[:16]
    if spec.mode == "offline":  # the run starts with rank 0's first log; its URL exists only once synced
        return WandbRunStatus(run_id=run_id, mode="offline")
    import wandb

    with tempfile.TemporaryDirectory(prefix="sftjob-wandb-") as tmp:
        run = wandb.init(id=run_id, resume="allow", project=spec.project, entity=spec.entity, mode="online",
                         name=job.name, config=params, dir=tmp, settings=_wandb_settings())
        url = run.url
        run.finish()
    return WandbRunStatus(run_id=run_id, mode="online", url=url)


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
                client = _mlflow_client(spec.mlflow)
                for path in paths:
                    client.log_artifact(status.mlflow.run_id, str(path))
                client.set_terminated(status.mlflow.run_id, "FINISHED")
            except Exception as err:  # tracking never fails the job
                log.warning("tracking: MLflow artifacts not logged: %s", _short(err))
        if spec.wandb is not None and status.wandb is not None:
            try:
                _finish_wandb(spec.wandb, status.wandb, job, output_uri, paths, progress)
            except Exception as err:  # tracking never fails the job
                log.warning("tracking: W&B artifacts not logged: %s", _short(err))


def _artifact_files(output_uri: str, progress: ProgressFile, files: Iterable[str], tmp: Path) -> list[Path]:
    paths: list[Path] = []
    for name, section in ((DATASET_STATS_FILE, progress.dataset), (EVALUATION_FILE, progress.evaluation)):
        if section is not None:
            path = tmp / name
            path.write_text(json.dumps(section.to_wire(), indent=2, sort_keys=True) + "\n")
            paths.append(path)
    for name in files:
        try:
            paths.append(storage.download_file(storage.join(output_uri, name), tmp / name))
        except storage.StorageError as err:
            if err.code != "NotFound":
                log.warning("tracking: %s not logged: %s", name, err)
    return paths


def _finish_wandb(spec: WandbTrackingSpec, status: WandbRunStatus, job: SFTJob, output_uri: str,
                  paths: list[Path], progress: ProgressFile) -> None:
    import wandb

    with _WandbDir(output_uri) as local:
        run = wandb.init(id=status.run_id, resume="allow", project=spec.project, entity=spec.entity,
                         mode=spec.mode, name=job.name, dir=str(local.root), settings=_wandb_settings())
        artifact = wandb.Artifact(f"{job.name}-outputs", type="sftjob-output")
        for path in paths:
            artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact)
        if progress.evaluation is not None and progress.evaluation.score is not None:
            run.summary["evaluation/score"] = progress.evaluation.score
        run.finish()


def fail(job: SFTJob, status: TrackingStatus | None) -> None:
    """Mark the MLflow run FAILED (driver, when the attempt fails); a retry's attempt sets it RUNNING again."""
    spec = job.spec.tracking
    if status is None or status.mlflow is None or spec.mlflow is None:
        return
    apply_credentials()
    try:
        _mlflow_client(spec.mlflow).set_terminated(status.mlflow.run_id, "FAILED")
    except Exception as err:  # tracking never fails the job
        log.warning("tracking: MLflow run not marked failed: %s", _short(err))


# ---------------------------------------------------------------------------------------------- TensorBoard


def read_tensorboard_scalars(uri: str) -> dict[str, list[tuple[int, float]]]:
    """The scalars of every TensorBoard event file under `uri` (local or s3://), by tag, in file order.

    A record cut off at the end of a file (a writer killed mid-write) ends that file, as TensorBoard reads it.

    Args:
        uri: A directory of `events.out.tfevents.*` files.

    Returns:
        `{tag: [(step, value), ...]}`.
    """
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    names = [name for name in storage.list_files(uri) if name.rsplit("/", 1)[-1].startswith("events.out.tfevents.")]
    for name in sorted(names):
        data = storage.read_bytes(storage.join(uri, name))
        pos = 0
        while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack_from("<Q", data, pos)
            start, end = pos + 12, pos + 12 + length
            if end + 4 > len(data):
                break
            try:
                event = Event.FromString(data[start:end])
            except Exception:  # a torn record ends the file
                break
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
            pos = end + 4
    return scalars


# ---------------------------------------------------------------------------------------------- rank 0


class _Sink:
    """One tracker on rank 0: logs each metric only at steps past what the tracker already holds."""

    name = "tracker"

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}
        """Per metric, the last step the tracker holds."""
        self.broken = False

    def write(self, step: int, metrics: dict[str, float]) -> None:
        fresh = {key: value for key, value in metrics.items() if step > self.marks.get(key, -1)}
        if not fresh or self.broken:
            return
        try:
            self._log(step, fresh)
        except Exception as err:  # tracking never fails the job
            self.broken = True
            log.warning("tracking: %s stopped for this attempt: %s", self.name, _short(err))
            return
        self.marks.update(dict.fromkeys(fresh, step))
        self._logged()

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def _logged(self) -> None:
        """After a successful log (W&B persists its marks)."""

    def sync(self) -> None:
        """Make what was logged durable in the output (a checkpoint was saved)."""

    def close(self) -> None:
        """End of training."""


class _MlflowSink(_Sink):
    name = "MLflow"

    def __init__(self, spec: MlflowTrackingSpec, status: MlflowRunStatus, attempt: int | None) -> None:
        super().__init__()
        from mlflow.entities import RunTag

        self.client = _mlflow_client(spec)
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


class _TensorBoardSink(_Sink):
    name = "TensorBoard"

    def __init__(self, output_uri: str, params: dict[str, str], attempt: int | None) -> None:
        super().__init__()
        from tensorboardX import SummaryWriter

        self.target = storage.join(output_uri, TENSORBOARD_DIR)
        for tag, points in read_tensorboard_scalars(self.target).items():
            self.marks[tag] = max(step for step, _ in points)
        self.staging = Path(tempfile.mkdtemp(prefix="sftjob-tb-")) if storage.is_s3(self.target) else None
        logdir = self.staging if self.staging is not None else Path(self.target)
        self.writer = SummaryWriter(logdir=str(logdir), filename_suffix=f".a{attempt or 0}.{os.getpid()}",
                                    flush_secs=30)
        if not self.marks:
            table = "\n".join(f"| {key} | {value} |" for key, value in params.items())
            self.writer.add_text("hyperparameters", "| param | value |\n|---|---|\n" + table, 0)
            self.writer.flush()

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # on a local output the file is durable now; on s3, at the next sync

    def sync(self) -> None:
        if self.staging is not None and not self.broken:
            try:
                storage.upload_dir(self.staging, self.target)
            except storage.StorageError as err:
                log.warning("tracking: TensorBoard event files not uploaded: %s", err)

    def close(self) -> None:
        self.writer.close()
        self.sync()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)


class _WandbDir:
    """Where W&B writes its files: `<output>/wandb/` itself on a filesystem, else a staging copy uploaded on sync."""

    def __init__(self, output_uri: str) -> None:
        self.target = storage.join(output_uri, WANDB_DIR)
        self.remote = storage.is_s3(output_uri)
        self.root = Path(tempfile.mkdtemp(prefix="sftjob-wandb-")) if self.remote else Path(output_uri)
        self.dir = self.root / WANDB_DIR  # wandb.init(dir=root) writes into root/wandb
        self.dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> _WandbDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_marks(self) -> dict[str, int]:
        try:
            marks = json.loads(storage.read_bytes(storage.join(self.target, WANDB_STEPS_FILE)))
        except storage.StorageError:
            return {}
        return {str(key): int(value) for key, value in marks.items()}

    def write_marks(self, marks: dict[str, int]) -> None:
        storage.write_bytes(str(self.dir / WANDB_STEPS_FILE), json.dumps(marks, sort_keys=True).encode())

    def sync(self) -> None:
        if not self.remote:
            return
        for path in sorted(self.dir.rglob("*")):  # files only: wandb's latest-run links point into run dirs
            if path.is_file() and not path.is_symlink() and not any(p.is_symlink() for p in path.parents):
                storage.upload_file(path, storage.join(self.target, str(path.relative_to(self.dir))))

    def close(self) -> None:
        self.sync()
        if self.remote:
            shutil.rmtree(self.root, ignore_errors=True)


class _WandbSink(_Sink):
    name = "Weights & Biases"

    def __init__(self, spec: WandbTrackingSpec, status: WandbRunStatus, job: SFTJob, output_uri: str,
                 params: dict[str, str]) -> None:
        super().__init__()
        import wandb

        self.files = _WandbDir(output_uri)
        self.marks = self.files.read_marks()
        self.run = wandb.init(id=status.run_id, resume="allow", project=spec.project, entity=spec.entity,
                              mode=spec.mode, name=job.name, config=params, dir=str(self.files.root),
                              settings=_wandb_settings())

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def _logged(self) -> None:
        self.files.write_marks(self.marks)

    def sync(self) -> None:
        try:
            self.files.sync()
        except storage.StorageError as err:
            log.warning("tracking: W&B files not uploaded: %s", err)

    def close(self) -> None:
        self.run.finish()
        try:
            self.files.close()
        except storage.StorageError as err:
            log.warning("tracking: W&B files not uploaded: %s", err)


def open_sinks(job: SFTJob, output_uri: str, progress: ProgressFile) -> list[_Sink]:
    """The trackers of `progress.tracking` for this attempt's rank 0 (those that cannot be opened are skipped)."""
    spec = job.spec.tracking
    status = progress.tracking
    if status is None or not enabled(spec):
        return []
    apply_credentials()
    params = hyperparameters(job, progress.resolved)
    sinks: list[_Sink] = []
    openers: list[tuple[str, Any]] = []
    if spec.mlflow is not None and status.mlflow is not None:
        mlflow_spec, mlflow_status = spec.mlflow, status.mlflow
        openers.append(("MLflow", lambda: _MlflowSink(mlflow_spec, mlflow_status, progress.attempt)))
    if spec.tensorboard:
        openers.append(("TensorBoard", lambda: _TensorBoardSink(output_uri, params, progress.attempt)))
    if spec.wandb is not None and status.wandb is not None:
        wandb_spec, wandb_status = spec.wandb, status.wandb
        openers.append(("Weights & Biases",
                        lambda: _WandbSink(wandb_spec, wandb_status, job, output_uri, params)))
    for name, opener in openers:
        try:
            sinks.append(opener())
        except Exception as err:  # tracking never fails the job
            log.warning("tracking: %s unavailable for this attempt: %s", name, _short(err))
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
            self.sinks: list[_Sink] = []

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
                    log.warning("tracking: %s not closed: %s", sink.name, _short(err))
            self.sinks = []

    return TrackingCallback()


__all__ = [
    "DEFAULT_ARTIFACTS",
    "TENSORBOARD_DIR",
    "WANDB_DIR",
    "apply_credentials",
    "enabled",
    "fail",
    "finish",
    "hyperparameters",
    "metric_records",
    "read_tensorboard_scalars",
    "start",
    "tracking_callback",
]
