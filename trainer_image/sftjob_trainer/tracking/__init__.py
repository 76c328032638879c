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

One module per tracker (`mlflow_tracker`, `tensorboard_tracker`, `wandb_tracker`), what they share in `common`,
the driver's part in `runs` and rank 0's callback in `callback`.
"""

from sftjob_trainer.tracking.callback import tracking_callback
from sftjob_trainer.tracking.common import apply_credentials, enabled, hyperparameters, metric_records
from sftjob_trainer.tracking.mlflow_tracker import ATTEMPT_TAG, JOB_TAG, OUTPUT_TAG
from sftjob_trainer.tracking.runs import DEFAULT_ARTIFACTS, fail, finish, start
from sftjob_trainer.tracking.tensorboard_tracker import TENSORBOARD_DIR, read_tensorboard_scalars
from sftjob_trainer.tracking.wandb_tracker import WANDB_DIR, WANDB_STEPS_FILE

__all__ = [
    "ATTEMPT_TAG",
    "DEFAULT_ARTIFACTS",
    "JOB_TAG",
    "OUTPUT_TAG",
    "TENSORBOARD_DIR",
    "WANDB_DIR",
    "WANDB_STEPS_FILE",
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
