"""The driver of one job: preflight, data prepared once, Ray Train `TorchTrainer`, then export.

With `spec.distillation`, the teacher's answers are generated first (phase `Generating`, on the job's Ray
cluster: `sftjob_trainer.distill.driver_step`), after the model and method checks, and the job trains on them.

The workers get one `WorkerConfig`; rank 0 returns its final progress (`Rank0Result`), so the driver reads
progress.json back only after a worker failure, when rank 0 could not say what it wrote.

Used by `python -m sftjob_trainer` (in the RayJob) and by `sftjob run` (on a local Ray cluster).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from sftjob_api.codes import ErrorCode
from sftjob_api.layout import CHECKPOINTS_DIR, MANIFEST_FILE
from sftjob_api.progress import ProgressFile
from sftjob_api.types import EvaluationStatus
from sftjob_trainer import object_store, tracking
from sftjob_trainer.data.mixture import with_eval_losses
from sftjob_trainer.evaluation import evaluate
from sftjob_trainer.export import export_results
from sftjob_trainer.faults import fault_plan
from sftjob_trainer.forgetting import check_gate, reference_rows
from sftjob_trainer.hparams import Plan
from sftjob_trainer.interrupts import Interruption, interruptible_trainer
from sftjob_trainer.job_context import JobContext
from sftjob_trainer.local_ray import ControlPlanePriority, check_gpus, check_resources, init_ray, shutdown
from sftjob_trainer.preparation import (
    Batching,
    check_model,
    eval_prompts,
    export_template,
    plan_job,
    prepare,
    sequences,
    serving_samples,
)
from sftjob_trainer.reporting import ProgressWriter
from sftjob_trainer.trainer_error import TrainerError
from sftjob_trainer.worker_config import Rank0Result, WorkerConfig

log = logging.getLogger(__name__)

# Tries of one checkpoint upload request (s3_filesystem): over 3x pyarrow's default of 3, bounded per try by
# object_store.CONNECT_TIMEOUT_S + READ_TIMEOUT_S, so a dead endpoint fails the attempt in minutes, not never.
CHECKPOINT_UPLOAD_ATTEMPTS = 10


@dataclass
class RunResult:
    """What a finished job produced."""

    output_uri: str
    """The job's output directory."""
    progress: ProgressFile
    """The final progress (phase Succeeded)."""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Artifacts listed in manifest.json."""


def s3_filesystem() -> Any:
    """A pyarrow S3 filesystem from the standard AWS environment variables (Ray Train checkpoint storage)."""
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    kwargs: dict[str, Any] = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        # pyarrow's default (3 attempts, the SDK's 1 s connect / 3 s request timeouts) survives only a blip;
        # a cut snapshot write ends the Ray Train controller, which max_failures does not retry. The SDK's
        # standard strategy backs off exponentially between attempts; see CHECKPOINT_UPLOAD_ATTEMPTS.
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=CHECKPOINT_UPLOAD_ATTEMPTS),
        "connect_timeout": object_store.CONNECT_TIMEOUT_S,
        "request_timeout": object_store.READ_TIMEOUT_S,
    }
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY")
        kwargs["session_token"] = os.environ.get("AWS_SESSION_TOKEN")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs["endpoint_override"] = host.rstrip("/")
        kwargs["scheme"] = scheme
    return fs.S3FileSystem(**kwargs)


def checkpoint_storage(output_uri: str) -> tuple[str, Any]:
    """(storage_path, filesystem) of RunConfig for `<output>/checkpoints`."""
    uri = object_store.join(output_uri, CHECKPOINTS_DIR)
    if object_store.is_s3(uri):
        return uri[len("s3://") :], s3_filesystem()
    return str(Path(uri).absolute()), None


def run_name(ctx: JobContext) -> str:
    """The Ray Train run name: the job name, so a rerun of `resumeFrom: latest` restores its checkpoints.

    `none` and an explicit checkpoint URI start a run of their own per attempt, which Ray cannot
    restore from the job's earlier checkpoints.
    """
    resume = ctx.job.spec.checkpointing.resume_from
    return ctx.name if resume == "latest" else f"{ctx.name}-a{ctx.attempt}"


def _worker_error(err: BaseException) -> TrainerError | None:
    """The TrainerError a worker raised, found in the chain Ray wraps it in."""
    seen: set[int] = set()
    stack: list[Any] = [err]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, TrainerError):
            return item
        if isinstance(item, BaseException):
            stack.extend([item.__cause__, item.__context__, *item.args])
            for attr in ("worker_failures", "cause", "error"):
                value = getattr(item, attr, None)
                if isinstance(value, dict):
                    stack.extend(value.values())
                elif value is not None:
                    stack.append(value)
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


def run_job(ctx: JobContext, ray_address: str | None = None) -> RunResult:
    """Run one SFTJob to completion: preflight, training on Ray Train workers, artifacts.

    Args:
        ctx: The job context.
        ray_address: Ray cluster to join (None: `RAY_ADDRESS`, an already initialised Ray, or a new local one).

    Returns:
        The result.

    Raises:
        TrainerError: Every expected failure, after progress.json says Failed; `Cancelled` after SIGINT or
            SIGTERM (`sftjob_trainer.interrupts`), once the workers and a Ray cluster started here are gone.
    """
    import ray

    writer = ProgressWriter(ctx.output_uri, ctx.attempt)
    started_ray = not ray.is_initialized()
    with Interruption() as interruption:
        try:
            return _run(ctx, writer, ray_address, interruption)
        except KeyboardInterrupt:
            interruption.hold()
            cancelled = _cancelled(ctx, writer, interruption.received or "KeyboardInterrupt")
            _report(writer, cancelled)  # at once: in a pod, SIGKILL follows SIGTERM after a grace period
            if started_ray and ray.is_initialized():
                shutdown()
            _report(writer, cancelled)  # again: rank 0 may have written progress.json while it was being stopped
            raise cancelled from None
        except TrainerError as err:
            writer.fail(err.to_status())
            tracking.fail(ctx.job, writer.state.tracking)
            raise


def _cancelled(ctx: JobContext, writer: ProgressWriter, signal_name: str) -> TrainerError:
    """The `Cancelled` error; progress.json's state is carried on from rank 0's last write once training started."""
    if writer.state.phase == "Running":
        # Rank 0 has written since the driver's copy: its step and the checkpoints a rerun resumes from.
        with contextlib.suppress(object_store.StorageError):
            writer.state = writer.load_existing() or writer.state
    writer.state = writer.state.model_copy(update={"estimated_finish_time": None, "tokens_per_second": None})
    state = writer.state
    newest = max((c.step for c in state.checkpoints), default=None)
    if newest is None:
        after = "no checkpoint was saved yet, so a rerun starts over"
    elif ctx.job.spec.checkpointing.resume_from == "latest":
        after = f"a rerun resumes from the checkpoint at step {newest} (checkpointing.resumeFrom: latest)"
    else:
        after = f"the newest checkpoint is at step {newest}"
    total = f" of {state.total_steps}" if state.total_steps else ""
    return TrainerError(ErrorCode.CANCELLED, f"stopped by {signal_name} at step {state.step}{total}; {after}")


def _report(writer: ProgressWriter, err: TrainerError) -> None:
    try:
        writer.fail(err.to_status())
    except object_store.StorageError as failure:  # the cancellation still ends the run
        log.warning("progress.json could not record %s: %s", err.code, failure)


def _run(ctx: JobContext, writer: ProgressWriter, ray_address: str | None, interruption: Interruption) -> RunResult:
    # Train V2 (Ray's default), named explicitly: its fit() hands back rank 0's return value.


    spec = ctx.job.spec
    earlier = writer.load_existing()
    # A run into an output that a finished run left must not look complete while it replaces the files:
    # the old manifest goes first, and only this run's export writes a new one.
    if object_store.delete_file(object_store.join(ctx.output_uri, MANIFEST_FILE)):
        log.warning("%s held a finished run's manifest.json; it is removed until this run completes", ctx.output_uri)
    writer.set_phase("Initializing", "starting")
    job_ctx, local_cluster = ctx, None
    if spec.distillation is not None:  # the model and method are checked, and Ray started, before the teacher is paid
        from sftjob_trainer.distill.driver_step import generate_training_data

        check_model(ctx)
        local_cluster = start_ray(spec, ray_address, interruption)
        ctx = generate_training_data(ctx, writer)  # trains on <output>/data/distilled.jsonl
        spec = ctx.job.spec
    prepared, tokenizer, model_dir = prepare(ctx, writer)
    # Read in the preflight, so a bad reference set fails before any worker starts.
    reference = reference_rows(spec, tokenizer, prepared.max_seq_length) if spec.evaluation.reference else None
    plan, batching = plan_job(ctx, prepared, tokenizer, model_dir)
    stats = prepared.report.to_stats()
    resumable = spec.checkpointing.resume_from == "latest" and earlier is not None
    writer.update(force=True, resolved=plan.resolved, dataset=stats, total_steps=plan.total_steps,
                  checkpoints=earlier.checkpoints if resumable and earlier else [],
                  trained_tokens=earlier.trained_tokens if resumable and earlier else 0,
                  # The job's record, whatever is resumed: a second non-finite loss in a job is not retried.
                  non_finite_steps=earlier.non_finite_steps if earlier else [],
                  skipped_steps=earlier.skipped_steps if resumable and earlier else [])
    # One run per job: a retry or resume continues the earlier attempts' runs (each step logged once).
    writer.update(force=True, tracking=tracking.start(ctx.job, ctx.output_uri, ctx.attempt, plan.resolved,
                                                      earlier=earlier.tracking if earlier else None,
                                                      resume=resumable))
    # Ray only after the preflight: bad input fails without starting a cluster, also in an in-process caller.
    if local_cluster is None:
        local_cluster = start_ray(spec, ray_address, interruption)
    config = worker_config(ctx, writer.state, prepared, tokenizer, plan, batching, reference)
    writer.set_phase("Running", "starting Ray Train workers")
    result = _fit(ctx, writer, config, local_cluster)
    if result.return_value is None:  # rank 0 returns its progress and exported files; fit() raised if it failed
        raise TrainerError(ErrorCode.WORKER_CRASHED, "training finished but rank 0 reported no exported files")
    return finish(job_ctx, result.return_value, writer, model_dir, config)


def _fit(ctx: JobContext, writer: ProgressWriter, config: WorkerConfig, local_cluster: bool | None) -> Any:
    """Train on Ray Train workers, restarting them from the latest checkpoint after a retryable failure.

    The driver restarts the workers itself, up to `runPolicy.backoffLimit` times, instead of Ray Train's
    `FailureConfig(max_failures=...)`: Ray would also restart after a failure no retry can fix (out of memory, a
    second non-finite loss, bad data found by a worker), running the same failure again each time. A new `fit()`
    under the same run name resumes from the checkpoints Ray registered, as Ray's own restart does.

    Returns:
        Ray Train's result of the run that finished.

    Raises:
        TrainerError: The workers' error once it is not retryable or the restarts are spent.
        KeyboardInterrupt: SIGINT or SIGTERM, once the workers are stopped.
    """
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.exceptions import ControllerError
    from ray.train.v2.api.result import Result

    from sftjob_trainer.worker import train_loop

    spec = ctx.job.spec
    storage_path, filesystem = checkpoint_storage(ctx.output_uri)
    gpus = spec.compute.gpus_per_worker
    resources = {"CPU": config.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    limit, restarts = spec.run_policy.backoff_limit, 0
    while True:
        trainer = interruptible_trainer()(
            train_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=spec.compute.num_workers, use_gpu=gpus > 0,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name=run_name(ctx),
                storage_path=storage_path,
                storage_filesystem=filesystem,
                failure_config=FailureConfig(max_failures=0),
                checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpointing.keep),
            ),
        )
        try:
            # On a cluster of its own (a laptop), training gets the CPU before Ray's control plane.
            with ControlPlanePriority() if local_cluster else contextlib.nullcontext():
                return cast(Result, trainer.fit())  # annotated with ray.train's V1 Result, which it is not
        except KeyboardInterrupt:  # SIGINT or SIGTERM: run_job reports it once the workers are gone
            trainer.abort()
            raise
        except Exception as err:
            # Rank 0 has written since the driver's copy: its checkpoints (a retry resumes from the newest) and the
            # health guard's record (a second non-finite loss is not retried) must survive the Failed report.
            with contextlib.suppress(object_store.StorageError):
                writer.state = writer.load_existing() or writer.state
            found = _worker_error(err) or TrainerError(
                ErrorCode.WORKER_CRASHED, f"training failed: {type(err).__name__}: {err}"[:2000])
            # A failure of Ray Train's controller (its own snapshot write to storage, say) ends the attempt as
            # before: the operator's next attempt resumes from what the controller registered.
            if not found.retryable or restarts == limit or isinstance(err, ControllerError):
                raise found from None
            restarts += 1
            log.warning("the workers failed (%s: %s); restarting them from the latest checkpoint (%d of %d)",
                        found.code, found.message, restarts, limit)
            writer.update(force=True, message=f"restarting the workers after {found.code} ({restarts} of {limit})")
            config = replace(config, progress=writer.state)


def worker_config(ctx: JobContext, progress: ProgressFile, prepared: Any, tokenizer: Any, plan: Plan,
                  batching: Batching, reference: list[dict[str, Any]] | None) -> WorkerConfig:
    """What the preflight hands every Ray Train worker (the sequences go into Ray's object store once).

    Args:
        ctx: The job context (after distillation: training on the generated data).
        progress: progress.json as the workers start (the earlier attempts' checkpoints and records).
        prepared: The prepared data.
        tokenizer: The base model's tokenizer.
        plan: The resolved plan.
        batching: The batching strategy.
        reference: The reference set's rows, or None without one.
    """
    import ray

    spec = ctx.job.spec
    train_rows, val_rows = sequences(prepared)
    return WorkerConfig(
        context=ctx,
        plan=plan,
        batching=batching,
        progress=progress,
        train=ray.put(train_rows),
        validation=ray.put(val_rows) if val_rows else None,
        # A mixture's held-out rows by source, for the evaluation loss per source.
        validation_sources=[e.source for e in prepared.validation] if prepared.report.sources else None,
        reference=ray.put(reference) if reference else None,
        samples=eval_prompts(prepared, tokenizer, spec.evaluation.num_samples, spec.hyperparameters.seed),
        stop_token_ids=prepared.stop_token_ids,
        export_template=export_template(spec, prepared, tokenizer),
        serving_samples=serving_samples(prepared),
        checkpoints_uri=object_store.join(ctx.output_uri, CHECKPOINTS_DIR, run_name(ctx)),
        cpus_per_worker=worker_cpus(spec.compute.cpus_per_worker, spec.compute.num_workers),
        faults=fault_plan(),
    )


def start_ray(spec: Any, ray_address: str | None, interruption: Interruption) -> bool:
    """Join or start Ray; on a cluster started here, check that the workers fit. Returns whether it started one."""
    import ray

    if spec.compute.gpus_per_worker and not (ray.is_initialized() or ray_address or os.environ.get("RAY_ADDRESS")):
        import torch

        # The cluster about to start here will have the GPUs torch sees: say so now, not after starting it.
        check_gpus(torch.cuda.device_count(), spec.compute.num_workers, spec.compute.gpus_per_worker,
                   "this machine")
    local_cluster = not ray.is_initialized() and init_ray(ray_address)
    interruption.install()  # again: ray.init replaced the SIGTERM handler (sftjob_trainer.interrupts)
    if local_cluster:  # Ray Train would wait for ever for workers a cluster of one machine cannot place
        check_resources(ray.cluster_resources(), spec.compute.num_workers,
                        worker_cpus(spec.compute.cpus_per_worker, spec.compute.num_workers),
                        spec.compute.gpus_per_worker)
    return bool(local_cluster)


def worker_cpus(requested: int, num_workers: int) -> int:
    """CPUs each Ray Train worker reserves: `cpusPerWorker`, capped by what the Ray cluster has.

    On Kubernetes the worker pods are sized from cpusPerWorker, so the cap never binds; on a laptop
    it keeps a 4-CPU default schedulable on 2 cores. Workers size their torch thread pool from it.
    """
    import ray

    available = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(requested, available // num_workers))


def finish(ctx: JobContext, rank0: Rank0Result, writer: ProgressWriter, model_dir: Path,
           config: WorkerConfig) -> RunResult:
    """Take over rank 0's progress, score the answers, ask the judge, and export the rest of the output.

    Raises:
        TrainerError: ForgettingExceeded with `evaluation.onForgetting: fail` (progress.json carries the figure).
    """
    spec = ctx.job.spec
    # What training did, as rank 0 last wrote it; the rest (resolved settings, data stats, tracking, the health
    # record) stays the driver's.
    ran = rank0.progress
    writer.state = writer.state.model_copy(update={
        "step": ran.step, "epoch": ran.epoch, "metrics": ran.metrics, "checkpoints": ran.checkpoints,
        "trained_tokens": ran.trained_tokens, "resumed_from_step": ran.resumed_from_step,
        "total_steps": ran.total_steps, "percentage": ran.percentage,
        "evaluation": EvaluationStatus(forgetting=rank0.forgetting) if rank0.forgetting else None,
    })
    if rank0.source_losses and writer.state.dataset is not None:
        writer.state = writer.state.model_copy(
            update={"dataset": with_eval_losses(writer.state.dataset, rank0.source_losses)})
    check_gate(spec.evaluation, rank0.forgetting)
    writer.set_phase("Exporting", "scoring the answers" + (" and asking the judge" if spec.evaluation.judge else ""))
    evaluation = evaluate(spec.evaluation, config.samples, rank0.answers, rank0.benchmarks, rank0.forgetting,
                          rank0.eval_seconds)
    writer.update(force=True, evaluation=evaluation, message="writing the report, model card and manifest")
    files = export_results(ctx, writer.state, evaluation, rank0, config.samples, model_dir)
    tracking.finish(ctx.job, ctx.output_uri, writer.state)
    writer.set_phase("Succeeded", f"artifacts in {ctx.output_uri}", percentage=100.0, estimated_finish_time=None)
    return RunResult(ctx.output_uri, writer.state, files)
