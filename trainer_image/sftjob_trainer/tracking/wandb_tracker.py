"""Weights & Biases: the job's run (online, or offline files under `<output>/wandb`) and rank 0's sink into it."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sftjob_api.progress import ProgressFile
from sftjob_api.types import SFTJob, WandbRunStatus, WandbTrackingSpec
from sftjob_trainer import object_store
from sftjob_trainer.tracking.common import Sink

log = logging.getLogger(__name__)

WANDB_DIR = "wandb"
# Per metric, the last step logged to W&B (W&B's offline files cannot be queried); next to its run files.
WANDB_STEPS_FILE = "sftjob-logged-steps.json"


def _wandb_settings() -> Any:
    import wandb

    return wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True, save_code=False,
                          x_save_requirements=False)


def start_run(spec: WandbTrackingSpec, job: SFTJob, params: dict[str, str],
              earlier: WandbRunStatus | None) -> WandbRunStatus:
    """The run's id (the earlier attempts' one, else a new one); online, the run is opened for its URL."""
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


def finish_run(spec: WandbTrackingSpec, status: WandbRunStatus, job: SFTJob, output_uri: str,
               paths: list[Path], progress: ProgressFile) -> None:
    """Log `paths` as the artifact `<job>-outputs` and the evaluation score, and end the run."""
    import wandb

    with WandbDir(output_uri) as local:
        run = wandb.init(id=status.run_id, resume="allow", project=spec.project, entity=spec.entity,
                         mode=spec.mode, name=job.name, dir=str(local.root), settings=_wandb_settings())
        artifact = wandb.Artifact(f"{job.name}-outputs", type="sftjob-output")
        for path in paths:
            artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact)
        if progress.evaluation is not None and progress.evaluation.score is not None:
            run.summary["evaluation/score"] = progress.evaluation.score
        run.finish()


class WandbDir:
    """Where W&B writes its files: `<output>/wandb/` itself on a filesystem, else a staging copy uploaded on sync."""

    def __init__(self, output_uri: str) -> None:
        self.target = object_store.join(output_uri, WANDB_DIR)
        self.remote = object_store.is_s3(output_uri)
        self.root = Path(tempfile.mkdtemp(prefix="sftjob-wandb-")) if self.remote else Path(output_uri)
        self.dir = self.root / WANDB_DIR  # wandb.init(dir=root) writes into root/wandb
        self.dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> WandbDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_marks(self) -> dict[str, int]:
        """Per metric, the last step logged (from the output; empty when none was written)."""
        try:
            marks = json.loads(object_store.read_bytes(object_store.join(self.target, WANDB_STEPS_FILE)))
        except object_store.StorageError:
            return {}
        return {str(key): int(value) for key, value in marks.items()}

    def write_marks(self, marks: dict[str, int]) -> None:
        """Record the marks next to the run files."""
        object_store.write_bytes(str(self.dir / WANDB_STEPS_FILE), json.dumps(marks, sort_keys=True).encode())

    def sync(self) -> None:
        """Upload the staging copy (s3:// outputs)."""
        if not self.remote:
            return
        for path in sorted(self.dir.rglob("*")):  # files only: wandb's latest-run links point into run dirs
            if path.is_file() and not path.is_symlink() and not any(p.is_symlink() for p in path.parents):
                object_store.upload_file(path, object_store.join(self.target, str(path.relative_to(self.dir))))

    def close(self) -> None:
        """Upload and remove the staging copy."""
        self.sync()
        if self.remote:
            shutil.rmtree(self.root, ignore_errors=True)


class WandbSink(Sink):
    """The run on rank 0: the steps it holds come from the marks file W&B's files sit beside."""

    name = "Weights & Biases"

    def __init__(self, spec: WandbTrackingSpec, status: WandbRunStatus, job: SFTJob, output_uri: str,
                 params: dict[str, str]) -> None:
        super().__init__()
        import wandb

        self.files = WandbDir(output_uri)
        self.marks = self.files.read_marks()
        self.run = wandb.init(id=status.run_id, resume="allow", project=spec.project, entity=spec.entity,
                              mode=spec.mode, name=job.name, config=params, dir=str(self.files.root),
                              settings=_wandb_settings())

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def _logged(self) -> None:
        self.files.write_marks(self.marks)

    def sync(self) -> None:
        """Upload the run files (s3:// outputs)."""
        try:
            self.files.sync()
        except object_store.StorageError as err:
            log.warning("tracking: W&B files not uploaded: %s", err)

    def close(self) -> None:
        """End the run and upload its files."""
        self.run.finish()
        try:
            self.files.close()
        except object_store.StorageError as err:
            log.warning("tracking: W&B files not uploaded: %s", err)
