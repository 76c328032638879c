"""The distillation step of a job's driver (`sftjob_trainer.driver`): phase `Generating`, then train on the answers.

`generate_training_data` runs `distill()` on the driver's Ray cluster, mirrors its `GenerationProgress` into
progress.json (phase `Generating`: `message` `<stage>: prompts <done>/<total>`, the percentage, the teacher's
completion tokens per second and the ETA), records `DistillationStats` in `ProgressFile.distillation` (the operator
copies it to `status.distillation`; the manifest lists it) and hands back the context the training stage runs:
`dataset.train` is `<output>/data/distilled.jsonl` and `distillation` is unset (`with_distilled_train`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any, Final

from sftjob_api.progress import format_duration
from sftjob_api.types import DistillationStats
from sftjob_trainer import object_store
from sftjob_trainer.artifacts import describe_bytes
from sftjob_trainer.distill.core import (
    DISTILLED_FILE,
    REJECTED_FILE,
    STATS_FILE,
    GenerationProgress,
    distill,
    with_distilled_train,
)
from sftjob_trainer.job_context import JobContext
from sftjob_trainer.reporting import ProgressWriter, now_rfc3339
from sftjob_trainer.trainer_error import TrainerError

# progress.json's `message` while Generating, and how `sftjob run`'s bar reads its counts back.
_COUNTS = re.compile(r"prompts (\d+)/(\d+)")
# The generated files the manifest lists (sha256 and size), with the trained model's.
MANIFEST_FILES: Final = (DISTILLED_FILE, REJECTED_FILE, STATS_FILE)


def progress_message(progress: GenerationProgress) -> str:
    """progress.json's `message` while Generating, e.g. `answers: prompts 12/40, ETA 3m5s`."""
    eta = f", ETA {format_duration(progress.eta_seconds)}" if progress.eta_seconds is not None else ""
    return f"{progress.stage}: prompts {progress.done}/{progress.total}{eta}"


def generation_counts(message: str | None) -> tuple[int, int] | None:
    """(done, total) from a Generating `message` (`progress_message`), None when it holds none."""
    found = _COUNTS.search(message or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def progress_fields(progress: GenerationProgress) -> dict[str, Any]:
    """The `ProgressFile` fields (snake_case) of one generation progress report."""
    eta = progress.eta_seconds
    return {
        "phase": "Generating",
        "message": progress_message(progress),
        "percentage": min(100.0, progress.percentage),
        "tokens_per_second": progress.tokens_per_second,
        "estimated_finish_time": now_rfc3339(time.time() + eta) if eta is not None else None,
    }


def _stats_on_failure(output_uri: str) -> DistillationStats | None:
    """The stats a failed run wrote (`complete: false`), None when there are none."""
    try:
        data = object_store.read_bytes(object_store.join(output_uri, STATS_FILE))
        return DistillationStats.model_validate(json.loads(data))
    except (object_store.StorageError, ValueError):
        return None


def generate_training_data(ctx: JobContext, writer: ProgressWriter) -> JobContext:
    """Generate the job's training data with the teacher (phase `Generating`); the context training runs.

    Ray must be up (the requests go through Ray Data on its cluster). The API key is read from the environment
    (`api_key_from_env`: the operator maps `teacher.secretRef`'s `OPENAI_API_KEY` to `SFTJOB_TEACHER_API_KEY`).

    Args:
        ctx: The job's context, with `spec.distillation` set.
        writer: The driver's progress writer.

    Returns:
        The context the training stage runs: the same job, training on `<output>/data/distilled.jsonl`.

    Raises:
        TrainerError: What `distill` raises (`TeacherUnavailable` is retryable); progress.json then carries the
            partial stats, and the caller records the failure.
    """
    writer.set_phase("Generating", "asking the teacher", percentage=0.0)

    def on_progress(progress: GenerationProgress) -> None:
        writer.update(force=progress.done >= progress.total, **progress_fields(progress))

    try:
        result = distill(ctx.job.spec, ctx.output_uri, on_progress)
    except TrainerError:
        partial = _stats_on_failure(ctx.output_uri)
        if partial is not None:
            writer.state = writer.state.model_copy(update={"distillation": partial})
        raise
    stats = result.stats
    writer.update(force=True, distillation=stats, percentage=0.0, tokens_per_second=None, estimated_finish_time=None,
                  message=f"kept {stats.kept} of {stats.responses} teacher answers ({stats.cache or 'no cache'})")
    job = ctx.job.model_copy(update={"spec": with_distilled_train(ctx.job.spec, result)})
    return dataclasses.replace(ctx, job=job)


def manifest_files(output_uri: str, stats: DistillationStats | None) -> dict[str, dict[str, Any]]:
    """`{name: {sha256, size}}` of the generated files, for manifest.json (empty without distillation)."""
    if stats is None or not stats.complete:
        return {}
    return {name: describe_bytes(object_store.read_bytes(object_store.join(output_uri, name)))
            for name in MANIFEST_FILES}
