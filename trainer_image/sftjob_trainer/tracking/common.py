"""What every tracker shares: the credentials, the params and metric names they log, and rank 0's sink."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from sftjob_api.pod_env import role_prefix
from sftjob_api.types import ResolvedSettings, SFTJob, TrackingSpec

log = logging.getLogger(__name__)

# Credentials each tracker reads from the environment, and the operator's role prefixes of their Secrets.
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
WANDB_CREDENTIALS = ("WANDB_API_KEY", "WANDB_BASE_URL")
MLFLOW_ENV_PREFIX = role_prefix("mlflow")
WANDB_ENV_PREFIX = role_prefix("wandb")
# MLflow's client retries a request 7 times with backoff up to ~4 min by default: a dead server would stall
# training at every log call. These bound it (~10 s) unless the pod's environment sets them.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
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


def short_error(err: BaseException) -> str:
    """An error as one short line for a log or a status message."""
    return f"{type(err).__name__}: {err}"[:300]



class Sink:
    """One tracker on rank 0: logs each metric only at steps past what the tracker already holds."""

    name = "tracker"

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}
        """Per metric, the last step the tracker holds."""
        self.broken = False

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Log the metrics past the tracker's marks; a failure stops this tracker for the attempt, never training."""
        fresh = {key: value for key, value in metrics.items() if step > self.marks.get(key, -1)}
        if not fresh or self.broken:
            return
        try:
            self._log(step, fresh)
        except Exception as err:  # tracking never fails the job
            self.broken = True
            log.warning("tracking: %s stopped for this attempt: %s", self.name, short_error(err))
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
