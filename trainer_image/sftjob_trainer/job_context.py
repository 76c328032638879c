"""Read the job the trainer runs: the SFTJob JSON the operator serialised, from the environment or a file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sftjob_api.codes import ErrorCode
from sftjob_api.field_problems import describe_validation_error
from sftjob_api.layout import job_output_uri
from sftjob_api.pod_env import ATTEMPT_ENV, CONFIG_ENV
from sftjob_api.types import DISTILLED_TRAIN_URI, SFTJob, parse_sftjob
from sftjob_trainer.trainer_error import TrainerError

# Local runs only (the operator sets CONFIG_ENV): a file holding the SFTJob JSON.
CONFIG_FILE_ENV = "SFTJOB_CONFIG_FILE"


@dataclass(frozen=True)
class JobContext:
    """One job run: the validated SFTJob, its attempt number and where its artifacts go."""

    job: SFTJob
    """The validated job."""
    attempt: int
    """Attempt number, from 1."""
    output_uri: str
    """`<output>/<namespace>/<name>` (local runs: `<output>/<name>`)."""

    @property
    def name(self) -> str:
        """The job name."""
        return self.job.name


def context_for(job: SFTJob, attempt: int = 1, output_uri: str | None = None) -> JobContext:
    """Build the run context of a job.

    Args:
        job: The validated job (it must have a name).
        attempt: Attempt number, from 1.
        output_uri: Override of `spec.output.uri` (the `--output` of `sftjob run`).

    Returns:
        The context.

    Raises:
        TrainerError: InvalidSpec when the job has no name.
    """
    if not job.name:
        raise TrainerError(ErrorCode.INVALID_SPEC,
                           "metadata.name is required: it names the output directory", "metadata.name")
    job = absolute_paths(job)
    base = _absolute(output_uri) if output_uri else job.spec.output.uri
    return JobContext(job, attempt, job_output_uri(base, job.name, job.metadata.namespace))


def _absolute(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).absolute())


def absolute_paths(job: SFTJob) -> SFTJob:
    """The job with relative filesystem paths made absolute (Ray workers run in directories of their own).

    With `distillation`, `dataset.train.uri` is the reserved name `distilled` (the teacher's answers), never a
    path: it stays as it is, and the prompts and seed-task files are made absolute instead.
    """
    spec = job.spec
    dataset = spec.dataset.with_uris(_absolute)  # the training file or every mixture source, and the validation
    update: dict[str, Any] = {}
    if spec.distillation is not None:
        if spec.dataset.train.uri == DISTILLED_TRAIN_URI:
            dataset = dataset.model_copy(update={"train": spec.dataset.train})
        prompts = spec.distillation.prompts
        if prompts.uri is not None:
            prompts = prompts.model_copy(update={"uri": _absolute(prompts.uri)})
        if prompts.generate is not None:
            grow = prompts.generate.model_copy(update={"seed_tasks": _absolute(prompts.generate.seed_tasks)})
            prompts = prompts.model_copy(update={"generate": grow})
        update["distillation"] = spec.distillation.model_copy(update={"prompts": prompts})
    evaluation = spec.evaluation
    tasks = [t.model_copy(update={"uri": _absolute(t.uri)}) if t.uri else t for t in evaluation.tasks]
    reference = (evaluation.reference.model_copy(update={"uri": _absolute(evaluation.reference.uri)})
                 if evaluation.reference else None)
    update["evaluation"] = evaluation.model_copy(update={"tasks": tasks, "reference": reference})
    model = spec.model.model_copy(update={"source": _absolute(spec.model.source)})
    output = spec.output.model_copy(update={"uri": _absolute(spec.output.uri)})
    new_spec = spec.model_copy(update={"dataset": dataset, "model": model, "output": output, **update})
    return job.model_copy(update={"spec": new_spec})


def load_context(environ: dict[str, str] | None = None) -> JobContext:
    """Read the job from `SFTJOB_CONFIG` (JSON) or the file named by `SFTJOB_CONFIG_FILE`.

    Args:
        environ: The environment (default: `os.environ`).

    Returns:
        The run context.

    Raises:
        TrainerError: InvalidSpec when the config is missing, not JSON or not a valid SFTJob.
    """
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        text, where = env[CONFIG_ENV], CONFIG_ENV
    elif env.get(CONFIG_FILE_ENV):
        where = env[CONFIG_FILE_ENV]
        try:
            text = Path(where).read_text(encoding="utf-8")
        except OSError as err:
            message = f"{where}: cannot read the job config: {err.strerror}"
            raise TrainerError(ErrorCode.INVALID_SPEC, message, CONFIG_FILE_ENV) from None
    else:
        raise TrainerError(ErrorCode.INVALID_SPEC,
                           f"set {CONFIG_ENV} (SFTJob JSON) or {CONFIG_FILE_ENV} (a file holding it)")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise TrainerError(ErrorCode.INVALID_SPEC, f"{where}: not JSON: {err.msg} at line {err.lineno}") from None
    try:
        job = parse_sftjob(document)
    except ValidationError as err:
        problems = describe_validation_error(err)
        first = problems[0]
        text = "; ".join(f"{p.field}: {p.message}" for p in problems)
        raise TrainerError(ErrorCode.INVALID_SPEC, f"invalid SFTJob: {text}", first.field) from None
    raw_attempt = env.get(ATTEMPT_ENV, "1")
    if not raw_attempt.isdigit() or int(raw_attempt) < 1:
        raise TrainerError(ErrorCode.INVALID_SPEC,
                           f"{ATTEMPT_ENV} must be a positive integer, got {raw_attempt!r}", ATTEMPT_ENV)
    return context_for(job, int(raw_attempt))
