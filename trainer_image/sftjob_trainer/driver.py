"""The driver of one job: preflight, data prepared once, Ray Train `TorchTrainer`, then export.

With `spec.distillation`, the teacher's answers are generated first (phase `Generating`, on the job's Ray
cluster: `sftjob_trainer.distill.driver_step`), after the model and method checks, and the job trains on them.

Used by `python -m sftjob_trainer` (in the RayJob) and by `sftjob run` (on a local Ray cluster).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sftjob_api.codes import ErrorCode
from sftjob_api.layout import CHECKPOINTS_DIR, MANIFEST_FILE, METRICS_FILE
from sftjob_api.progress import ProgressFile
from sftjob_api.types import EvaluationStatus, Metrics
from sftjob_trainer import faults, storage, tracking
from sftjob_trainer.artifacts import (
    EVAL_REPORT_FILE,
    EVAL_SAMPLES_FILE,
    LOSS_PLOT_FILE,
    MODEL_CARD_FILE,
    describe_bytes,
    loss_plot_png,
    manifest,
    model_card,
    publish_bytes,
    write_manifest,
)
from sftjob_trainer.config import JobContext
from sftjob_trainer.data.mixture import with_eval_losses
from sftjob_trainer.device_defaults import DeviceDefaults, device_defaults
from sftjob_trainer.errors import TrainerError
from sftjob_trainer.eval_report import METRIC_PLOT_FILE, metric_curves, metric_plot_png
from sftjob_trainer.eval_report import render as render_report
from sftjob_trainer.evaluation import Sample, evaluate, samples_jsonl
from sftjob_trainer.forgetting import check_gate, reference_rows
from sftjob_trainer.hparams import Device, Plan, precision, resolve, training_arguments
from sftjob_trainer.interrupts import Interruption, interruptible_trainer
from sftjob_trainer.local_ray import ControlPlanePriority, check_resources, init_ray, shutdown
from sftjob_trainer.methods import check_device
from sftjob_trainer.reporting import ProgressWriter, read_metrics

if TYPE_CHECKING:
    from sftjob_trainer.worker import Rank0Result

log = logging.getLogger(__name__)

# Tries of one checkpoint upload request (s3_filesystem): over 3x pyarrow's default of 3, bounded per try by
# storage.CONNECT_TIMEOUT_S + READ_TIMEOUT_S, so a dead endpoint fails the attempt in minutes, not never.
CHECKPOINT_UPLOAD_ATTEMPTS = 10
# Offset of the eval-sample choice from the job seed, so it does not mirror the validation split's shuffle.
SAMPLE_SEED_OFFSET = 1
# Held-out conversations the serving check renders and generates for: it proves the export, not the model.
SERVING_PROMPTS = 4


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
        "connect_timeout": storage.CONNECT_TIMEOUT_S,
        "request_timeout": storage.READ_TIMEOUT_S,
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
    uri = storage.join(output_uri, CHECKPOINTS_DIR)
    if storage.is_s3(uri):
        return uri[len("s3://") :], s3_filesystem()
    return str(Path(uri).absolute()), None


def run_name(ctx: JobContext) -> str:
    """The Ray Train run name: the job name, so a rerun of `resumeFrom: latest` restores its checkpoints.

    `none` and an explicit checkpoint URI start a run of their own per attempt, which Ray cannot
    restore from the job's earlier checkpoints.
    """
    resume = ctx.job.spec.checkpointing.resume_from
    return ctx.name if resume == "latest" else f"{ctx.name}-a{ctx.attempt}"


def _data_error(err: Exception) -> TrainerError:
    code = getattr(err, "code", "InvalidDataset")
    file, line = getattr(err, "file", None), getattr(err, "line", None)
    where = f"{file}:{line}" if file and line else file or getattr(err, "field", None) or "spec.dataset"
    if code == "NotFound":
        code = "DatasetUnreadable"
    return TrainerError(code, str(err), where)


def prepare(ctx: JobContext, writer: ProgressWriter) -> tuple[Any, Any, Path]:
    """Preflight: resolve the model, load its tokenizer and prepare the data once.

    Returns:
        (prepared data, tokenizer, model directory).

    Raises:
        TrainerError: ModelUnreadable, a data or storage code, or PreflightFailed.
    """
    from sftjob_trainer.data import DataCache, DataError, prepare_dataset
    from sftjob_trainer.model_loading import load_tokenizer, resolve_model_dir

    spec = ctx.job.spec
    writer.set_phase("Preparing", "loading the tokenizer and preparing the data")
    model_dir = resolve_model_dir(spec.model)
    tokenizer = load_tokenizer(model_dir, spec.model)
    limit = _model_limit(model_dir)
    try:
        prepared = prepare_dataset(spec.dataset, tokenizer, seed=spec.hyperparameters.seed, model_max_length=limit,
                                   cache=DataCache.for_job(ctx.output_uri))
    except DataError as err:
        raise _data_error(err) from None
    except storage.StorageError as err:
        raise _data_error(err) from None
    if not prepared.train:
        raise TrainerError("PreflightFailed", "no training examples are left after filtering", "spec.dataset.train")
    return prepared, tokenizer, model_dir


def _model_limit(model_dir: Path) -> int | None:
    import json

    config = json.loads((model_dir / "config.json").read_text())
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def count_params(model_dir: Path, spec: Any) -> int:
    """Parameters of the base model, counted on the meta device (no weights are loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=spec.model.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.model.trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def sequences(prepared: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The examples the Trainer iterates (train, validation).

    Batches are formed from examples in both modes, so `batchSize` counts examples: `packed` flattens
    each micro-batch into one padding-free row (PackedCollator, attention bounded per example),
    `length_grouped` pads length-grouped batches (PaddedCollator).
    """
    def rows(examples: list[Any]) -> list[dict[str, Any]]:
        return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]

    return rows(prepared.train), (rows(prepared.validation) if prepared.validation else None)


def eval_prompts(prepared: Any, tokenizer: Any, count: int, seed: int) -> list[Sample]:
    """Up to `count` held-out examples (seeded choice)."""
    pool = list(prepared.validation)
    random.Random(seed + SAMPLE_SEED_OFFSET).shuffle(pool)  # noqa: S311 - a seeded choice
    return [Sample(tokenizer.decode(e.prompt_ids), list(e.prompt_ids), e.reference) for e in pool[:count]]


def export_template(spec: Any, prepared: Any, tokenizer: Any) -> str | None:
    """The Jinja chat template the job trained with, for the exported tokenizer (None for plain text rows)."""
    from sftjob_trainer.serving import export_chat_template

    kind = ("text" if prepared.report.format == "text"
            else "prompt_completion" if prepared.chat_template == "none" else "chat")
    return export_chat_template(spec.dataset.chat_template, tokenizer, kind)


def serving_samples(prepared: Any) -> list[Any]:
    """Held-out conversations for the serving check (untruncated validation rows: `Example.served`)."""
    import json

    from sftjob_trainer.serving import ServingSample

    served = [(json.loads(e.served), e.prompt_ids) for e in prepared.validation if e.served]
    return [ServingSample(s["messages"], list(ids), s["tools"]) for s, ids in served[:SERVING_PROMPTS]]


def plan_job(ctx: JobContext, prepared: Any, tokenizer: Any, model_dir: Path) -> tuple[Plan, str]:
    """Resolve hyperparameters and the batching strategy.

    Returns:
        (plan, batching) where batching is `packed` or `length_grouped`.
    """
    spec = ctx.job.spec
    cuda = spec.compute.gpus_per_worker > 0
    check_device(spec.method, cuda)
    check_spec(spec)
    # Prompt tuning prepends virtual tokens to every row, so one packed row would share one prompt.
    batching = "packed" if spec.dataset.packing and spec.method.type != "prompt_tuning" else "length_grouped"
    rows, _ = sequences(prepared)
    device = Device(cuda=cuda, bf16=cuda)
    choices = device_choices(spec, device, batching)
    plan = resolve(spec, device, count_params(model_dir, spec), len(rows),
                   max_seq_length=prepared.max_seq_length, batching=batching, chat_template=prepared.chat_template,
                   attention=choices.attention, kernels=choices.kernels)
    return plan, batching


def device_choices(spec: Any, device: Device, batching: str) -> DeviceDefaults:
    """The attention implementation and fused kernels for this device (`sftjob_trainer.device_defaults`).

    Packed rows use per-example (varlen) attention: attention work is the sum of the squared example
    lengths instead of the squared row length, and no mask is materialised (bench/RESULTS.md measures
    it against the stock masked SDPA) — flash-attention's varlen kernel on CUDA when installed, else our
    varlen SDPA. Padded batches use stock SDPA with their padding mask. Liger's kernels on CUDA when
    installed. Packages are looked up in the driver's environment: it runs from the workers' image.
    """
    return device_defaults(device.cuda, batching, precision(spec, device))


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
        with contextlib.suppress(storage.StorageError):
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
    except storage.StorageError as failure:  # the cancellation still ends the run
        log.warning("progress.json could not record %s: %s", err.code, failure)


def _run(ctx: JobContext, writer: ProgressWriter, ray_address: str | None, interruption: Interruption) -> RunResult:
    import ray

    # Train V2 (Ray's default), named explicitly: its fit() hands back rank 0's return value.
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.result import Result

    from sftjob_trainer.worker import train_loop

    spec = ctx.job.spec
    earlier = writer.load_existing()
    # A run into an output that a finished run left must not look complete while it replaces the files:
    # the old manifest goes first, and only this run's export writes a new one.
    if storage.delete_file(storage.join(ctx.output_uri, MANIFEST_FILE)):
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
    train_rows, val_rows = sequences(prepared)
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
    sft_args = training_arguments(spec, plan, "unused")
    sft_args["train_sampling_strategy"] = "group_by_length" if batching == "length_grouped" else "random"
    # Ray only after the preflight: bad input fails without starting a cluster, also in an in-process caller.
    if local_cluster is None:
        local_cluster = start_ray(spec, ray_address, interruption)
    cpus_per_worker = worker_cpus(spec.compute.cpus_per_worker, spec.compute.num_workers)
    storage_path, filesystem = checkpoint_storage(ctx.output_uri)
    resume_from = spec.checkpointing.resume_from
    config = {
        "job": ctx.job.to_wire(),
        "output_uri": ctx.output_uri,
        "attempt": ctx.attempt,
        "plan": sft_args,
        "batching": batching,
        "attention": plan.resolved.attention,
        "load_dtype": _load_dtype(spec, plan),
        "train": ray.put(train_rows),
        "validation": ray.put(val_rows) if val_rows else None,
        "reference": ray.put(reference) if reference else None,
        "samples": eval_prompts(prepared, tokenizer, spec.evaluation.num_samples, spec.hyperparameters.seed),
        "stop_token_ids": prepared.stop_token_ids,
        "export_template": export_template(spec, prepared, tokenizer),
        "serving_samples": serving_samples(prepared),
        # A mixture's held-out rows by source, for the evaluation loss per source.
        "validation_sources": [e.source for e in prepared.validation] if stats.sources else None,
        "checkpoints_uri": storage.join(ctx.output_uri, CHECKPOINTS_DIR, run_name(ctx)),
        "progress": writer.state.model_dump(),
        "resume_uri": None if resume_from in ("latest", "none") else resume_from,
        "resume_latest": resume_from == "latest",
        "kill_driver": faults.kill_driver_hook(),
        "oom_at_step": faults.oom_at_step(),
        "kill_worker": faults.kill_worker_hook(),
        "cpus_per_worker": cpus_per_worker,
    }
    gpus = spec.compute.gpus_per_worker
    resources = {"CPU": config["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}
    trainer = interruptible_trainer()(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=spec.compute.num_workers, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name(ctx),
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=spec.run_policy.backoff_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpointing.keep),
        ),
    )
    writer.set_phase("Running", "starting Ray Train workers")
    try:
        # On a cluster of its own (a laptop), training gets the CPU before Ray's control plane.
        with ControlPlanePriority() if local_cluster else contextlib.nullcontext():
            result = cast(Result, trainer.fit())  # annotated with ray.train's V1 Result, which it is not
    except KeyboardInterrupt:  # SIGINT or SIGTERM: run_job reports it once the workers are gone
        trainer.abort()
        raise
    except Exception as err:
        # Rank 0 has written since the driver's copy: its checkpoints (a retry resumes from the newest) and the
        # health guard's record (a second non-finite loss is not retried) must survive the Failed report.
        with contextlib.suppress(storage.StorageError):
            writer.state = writer.load_existing() or writer.state
        found = _worker_error(err)
        if found is not None:
            raise found from None
        raise TrainerError("WorkerCrashed", f"training failed: {type(err).__name__}: {err}"[:2000]) from err
    if result.return_value is None:  # rank 0 returns its exported files and forgetting; fit() raised if it failed
        raise TrainerError("WorkerCrashed", "training finished but rank 0 reported no exported files")
    return export(job_ctx, result.return_value, writer, model_dir, config["samples"])


def check_model(ctx: JobContext) -> None:
    """The checks of the preflight that need no data: the base model and tokenizer load, the method fits the device.

    Raises:
        TrainerError: ModelUnreadable (or a storage code), InvalidSpec or UnsupportedDevice.
    """
    from sftjob_trainer.model_loading import load_tokenizer, resolve_model_dir

    spec = ctx.job.spec
    load_tokenizer(resolve_model_dir(spec.model), spec.model)
    check_device(spec.method, spec.compute.gpus_per_worker > 0)
    check_spec(spec)


def check_spec(spec: Any) -> None:
    """Combinations the API accepts but training cannot do."""
    if spec.output.merge_adapter and spec.method.type == "prompt_tuning":
        raise TrainerError("InvalidSpec", "output.mergeAdapter: prompt tuning has no weights to merge into the base",
                           "spec.output.mergeAdapter")


def start_ray(spec: Any, ray_address: str | None, interruption: Interruption) -> bool:
    """Join or start Ray; on a cluster started here, check that the workers fit. Returns whether it started one."""
    import ray

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


def _load_dtype(spec: Any, plan: Plan) -> str:
    """The dtype the base weights load in: model.dtype, else the training precision's (fp32 keeps AMP masters)."""
    if spec.model.dtype != "auto":
        return str(spec.model.dtype)
    return "fp32" if plan.resolved.precision in ("fp32", "fp16") else "bf16"


def export(ctx: JobContext, rank0: Rank0Result, writer: ProgressWriter, model_dir: Path,
           samples: list[Sample]) -> RunResult:
    """Score the answers, ask the judge, write the evaluation and manifest.json (last) next to what rank 0 saved.

    The files: eval_samples.jsonl, eval_report.md, loss.png (and eval_metrics.png), README.md, manifest.json;
    it also lists data/distilled.jsonl and its stats and rejects when the job distilled its data.

    Raises:
        TrainerError: ForgettingExceeded with `evaluation.onForgetting: fail` (progress.json carries the figure).
    """
    from sftjob_trainer.gguf_model import origin_of

    spec = ctx.job.spec
    ran = writer.load_existing() or writer.state  # rank 0's last write, before this writer replaces it
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
    evaluation = evaluate(spec.evaluation, samples, rank0.answers, rank0.benchmarks, rank0.forgetting,
                          rank0.eval_seconds)
    writer.update(force=True, evaluation=evaluation, message="writing the report, model card and manifest")
    progress = writer.state
    files = dict(rank0.files)

    def publish(name: str, data: bytes) -> None:
        files[name] = publish_bytes(data, storage.join(ctx.output_uri, name))

    metrics = read_metrics(ctx.output_uri)
    publish(EVAL_SAMPLES_FILE, samples_jsonl(samples, rank0.answers, spec.evaluation))
    publish(LOSS_PLOT_FILE, loss_plot_png(metrics))
    curves = metric_curves(metrics)
    if curves:
        publish(METRIC_PLOT_FILE, metric_plot_png(curves))
    publish(EVAL_REPORT_FILE, render_report(ctx.job.name, spec.evaluation, evaluation, samples, rank0.answers,
                                            LOSS_PLOT_FILE, METRIC_PLOT_FILE if curves else None,
                                            progress.dataset).encode())
    adapter = spec.method.is_adapter
    gguf = origin_of(model_dir)
    publish(MODEL_CARD_FILE, model_card(ctx.job, progress, ctx.output_uri, adapter and spec.output.save_adapter,
                                        spec.output.merge_adapter, gguf).encode())
    files[METRICS_FILE] = describe_bytes(storage.read_bytes(storage.join(ctx.output_uri, METRICS_FILE)))
    if progress.distillation is not None:  # data/distilled.jsonl, its rejects and stats
        from sftjob_trainer.distill.driver_step import manifest_files

        files.update(manifest_files(ctx.output_uri, progress.distillation))
    final_metrics = _final_metrics(progress.metrics, metrics)
    write_manifest(ctx.output_uri, manifest(ctx.job, progress, files, spec.model.revision, final_metrics, gguf,
                                            rank0.serving))
    tracking.finish(ctx.job, ctx.output_uri, writer.state)
    writer.set_phase("Succeeded", f"artifacts in {ctx.output_uri}", percentage=100.0, estimated_finish_time=None)
    return RunResult(ctx.output_uri, writer.state, files)


def _final_metrics(latest: Metrics, records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = latest.to_wire()
    evals = [r for r in records if "eval_loss" in r]
    if evals:
        out["evalPerplexity"] = math.exp(min(evals[-1]["eval_loss"], 50.0))  # exp(50) bounds a diverged run
    return out
