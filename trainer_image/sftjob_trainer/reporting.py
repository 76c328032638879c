"""progress.json (atomically replaced, throttled) and metrics.jsonl, written by the driver and by rank 0.

The driver writes the phases around training (Preparing, Exporting, Succeeded, Failed); rank 0 of the
Ray Train workers writes Running with step, throughput and ETA. Both go through `ProgressWriter`, so
the file always parses as `sftjob_api.progress.ProgressFile`.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sftjob_api.layout import METRICS_FILE, PROGRESS_FILE
from sftjob_api.progress import ProgressFile, TrainerPhase, format_duration
from sftjob_api.timestamps import epoch_rfc3339, parse_rfc3339
from sftjob_api.types import CheckpointRef, DatasetStats, ErrorStatus, Metrics, ResolvedSettings
from sftjob_trainer import object_store

# Seconds between two progress.json writes during training: often enough for a live bar and the
# operator's throttled reads, rare enough that object storage sees a handful of PUTs per minute.
DEFAULT_INTERVAL_S = 3.0
INTERVAL_ENV = "SFTJOB_PROGRESS_INTERVAL"


def now_rfc3339(at: float | None = None) -> str:
    """UTC time as RFC 3339 with a `Z` suffix (now, or the Unix time `at`)."""
    return epoch_rfc3339(time.time() if at is None else at)


def metrics_from_log(record: dict[str, Any]) -> Metrics:
    """The latest `Metrics` from one Trainer log record (train or eval)."""
    return Metrics(
        train_loss=record.get("loss"),
        eval_loss=record.get("eval_loss"),
        learning_rate=record.get("learning_rate"),
        grad_norm=record.get("grad_norm"),
        token_accuracy=record.get("eval_mean_token_accuracy"),
    )


def merge_metrics(old: Metrics, new: Metrics) -> Metrics:
    """`old` with every field that `new` sets replaced."""
    return old.model_copy(update={k: v for k, v in new.model_dump(by_alias=False).items() if v is not None})


class ProgressWriter:
    """Keeps the current `ProgressFile` and writes it to `<output>/progress.json`."""

    def __init__(self, output_uri: str, attempt: int, interval_s: float | None = None) -> None:
        """Create a writer.

        Args:
            output_uri: The job's output directory.
            attempt: The attempt number recorded in every write.
            interval_s: Least seconds between two throttled writes (default: env or 3 s).
        """
        self.output_uri = output_uri
        self.interval_s = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)) if interval_s is None else interval_s
        self.state = ProgressFile(phase="Initializing", attempt=attempt, updated_at=now_rfc3339())
        self._last_write = 0.0
        self._metric_lines: list[str] | None = None

    def load_existing(self) -> ProgressFile | None:
        """The progress.json an earlier attempt left, if any (used to carry checkpoints over on resume)."""
        uri = object_store.join(self.output_uri, PROGRESS_FILE)
        try:
            return ProgressFile.model_validate_json(object_store.read_bytes(uri))
        except object_store.StorageError as err:
            if err.code != object_store.NOT_FOUND:
                raise  # an outage must not pass for a first run: that would drop the checkpoints listed there
            return None
        except ValueError:
            return None

    def update(self, force: bool = False, **fields: Any) -> None:
        """Change fields of the progress and write it when `force` or the interval has passed.

        Args:
            force: Write now regardless of the throttle (phase changes, the final step).
            **fields: `ProgressFile` fields (snake_case) to set.
        """
        self.state = self.state.model_copy(update=fields)
        if force or time.monotonic() - self._last_write >= self.interval_s:
            self.flush()

    def set_phase(self, phase: TrainerPhase, message: str | None = None, **fields: Any) -> None:
        """Move to `phase` and write immediately."""
        self.update(force=True, phase=phase, message=message, **fields)

    def fail(self, error: ErrorStatus) -> None:
        """Record a failure (phase Failed) and write immediately."""
        self.update(force=True, phase="Failed", error=error, message=error.message)

    def flush(self) -> None:
        """Write progress.json now (atomically replaced)."""
        self.state = self.state.model_copy(update={"updated_at": now_rfc3339()})
        # Re-validate: a field set through update() must still satisfy the contract the operator reads.
        checked = ProgressFile.model_validate(self.state.model_dump())
        object_store.write_bytes(object_store.join(self.output_uri, PROGRESS_FILE),
                                 json.dumps(checked.to_wire()).encode())
        self._last_write = time.monotonic()

    def progress_fields(self, step: int, total_steps: int, epoch: float, elapsed_s: float, steps_done: int,
                        trained_tokens: int, tokens_per_second: float | None) -> dict[str, Any]:
        """The step/percentage/ETA fields for a training step.

        Args:
            step: Optimizer steps done (including resumed ones).
            total_steps: Optimizer steps planned.
            epoch: Fractional epoch.
            elapsed_s: Seconds this attempt has trained.
            steps_done: Steps this attempt did in `elapsed_s`.
            trained_tokens: Loss-bearing tokens so far.
            tokens_per_second: Recent throughput.

        Returns:
            Keyword arguments for `update`.
        """
        fields: dict[str, Any] = {
            "step": step,
            "total_steps": total_steps,
            "epoch": max(0.0, epoch),
            "percentage": min(100.0, 100.0 * step / total_steps) if total_steps else 0.0,
            "trained_tokens": trained_tokens,
            "tokens_per_second": tokens_per_second,
        }
        if steps_done > 0 and total_steps >= step:
            remaining = elapsed_s / steps_done * (total_steps - step)
            fields["estimated_finish_time"] = now_rfc3339(time.time() + remaining)
            fields["message"] = f"ETA {format_duration(remaining)}"
        return fields

    # ------------------------------------------------------------------------------ metrics.jsonl

    def _lines(self) -> list[str]:
        if self._metric_lines is None:
            uri = object_store.join(self.output_uri, METRICS_FILE)
            try:
                self._metric_lines = object_store.read_bytes(uri).decode().splitlines()
            except object_store.StorageError as err:
                if err.code != object_store.NOT_FOUND:
                    raise  # an unreadable history must not be overwritten as if there were none
                self._metric_lines = []
        return self._metric_lines

    def truncate_metrics_after(self, step: int) -> None:
        """Drop metric records past `step` (written by an attempt that died after its last checkpoint)."""
        kept = [line for line in self._lines() if line and json.loads(line).get("step", 0) <= step]
        self._metric_lines = kept
        self._write_metrics()

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (the whole file is rewritten: S3 has no append)."""
        clean = {k: v for k, v in record.items() if not (isinstance(v, float) and not math.isfinite(v))}
        self._lines().append(json.dumps(clean, sort_keys=True))
        self._write_metrics()

    def metrics_file(self) -> bytes:
        """metrics.jsonl as this writer keeps it: what it last wrote, else what the output holds."""
        lines = self._lines()
        return ("\n".join(lines) + ("\n" if lines else "")).encode()

    def _write_metrics(self) -> None:
        object_store.write_bytes(object_store.join(self.output_uri, METRICS_FILE), self.metrics_file())


def metrics_records(body: bytes) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file's content."""
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def read_metrics(output_uri: str) -> list[dict[str, Any]]:
    """The records of `<output>/metrics.jsonl` (empty when there is none)."""
    try:
        body = object_store.read_bytes(object_store.join(output_uri, METRICS_FILE))
    except object_store.StorageError as err:
        if err.code != object_store.NOT_FOUND:
            raise
        return []
    return metrics_records(body)


def eta_seconds(progress: ProgressFile) -> float | None:
    """Seconds until `estimated_finish_time`, if set."""
    finish = parse_rfc3339(progress.estimated_finish_time)
    if finish is None:
        return None
    return max(0.0, (finish - datetime.now(tz=UTC)) / timedelta(seconds=1))


__all__ = [
    "CheckpointRef",
    "DatasetStats",
    "ProgressWriter",
    "ResolvedSettings",
    "eta_seconds",
    "format_duration",
    "metrics_from_log",
    "metrics_records",
    "read_metrics",
]
