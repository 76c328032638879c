"""The Ray Train worker loop: TRL `SFTTrainer` + PEFT on one data-parallel rank.

Every rank builds the same model and iterates the same prepared sequences (put into the object
store once by the driver); the Trainer's distributed sampler hands each rank its shard of every
global batch. Rank 0 writes progress.json and metrics.jsonl, evaluates both models, exports the
weights (`sftjob_trainer.export`) and returns its final progress to the driver (`Rank0Result`).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftjob_api.layout import METRICS_FILE
from sftjob_api.progress import ProgressFile
from sftjob_api.types import CheckpointRef, SFTJobSpec
from sftjob_trainer import object_store
from sftjob_trainer.artifacts import describe_bytes, generate_answers
from sftjob_trainer.evaluation import Answers, during_training_callback
from sftjob_trainer.export import export_weights
from sftjob_trainer.faults import fault_callbacks
from sftjob_trainer.forgetting import forgetting_result, mean_token_loss
from sftjob_trainer.health import HealthGuard
from sftjob_trainer.hparams import Plan, training_arguments
from sftjob_trainer.preparation import Batching
from sftjob_trainer.progress_callback import TokenCounter, make_progress_callback
from sftjob_trainer.reporting import ProgressWriter, metrics_records
from sftjob_trainer.tracking import tracking_callback
from sftjob_trainer.trainer_error import is_out_of_memory, out_of_memory
from sftjob_trainer.worker_config import Rank0Result, Rows, WorkerConfig

# progress.json messages of rank 0 before its first step: they account for a worker's start-up time.
WORKER_LOADING_MODEL = "worker started; loading the model"
WORKER_EVALUATING_BASE = "model loaded; evaluating the base model"
WORKER_BUILDING_TRAINER = "base model evaluated; building the trainer"
WORKER_EVALUATING_TUNED = "training done; evaluating the fine-tuned model"
# What Ray Train's torch backend sets for every worker, from which Accelerate infers distributed training.
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def build_collator(batching: str, pad_token_id: int) -> Any:
    """The data pipeline's collator for `packed` (padding-free) or `length_grouped` (padded) batches."""
    from sftjob_trainer.data import PackedCollator, PaddedCollator

    return PackedCollator() if batching == "packed" else PaddedCollator(pad_token_id=pad_token_id)


def train_as_single_process() -> None:
    """Leave the one-member process group Ray Train set up, so a lone worker trains without DDP.

    Ray Train's torch backend joins even a single worker into a process group and sets RANK/LOCAL_RANK/
    WORLD_SIZE, from which Accelerate wraps the model in DistributedDataParallel. With one member there is
    nothing to all-reduce, but DDP still copies every gradient into its buckets and through gloo or NCCL
    each step: 3.5% of a step on the bench's 12M-parameter model on CPU (mean of 12 alternating rounds).
    Ray Train itself needs neither: it reports and checkpoints through its own actors, and its shutdown
    destroys the group only if one exists.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in DISTRIBUTED_ENV:
        os.environ.pop(name, None)


def lean_sft_trainer_class() -> Any:
    """TRL's `SFTTrainer` without its per-step training metrics.

    TRL computes the loss through a chunked log-prob/entropy/top-1 pass to log entropy and token
    accuracy at every training step: ~12% of a CPU step on the calibration model, for numbers nobody
    asked for. Training steps use the model's own loss instead (normalised by the tokens of the whole
    accumulated batch, as TRL's is); evaluation keeps TRL's path, so eval token accuracy is reported.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    from sftjob_trainer.health import HealthGuardMixin

    # The mixin first: its training_step records each micro-batch's loss for the health guard.
    class LeanSFTTrainer(HealthGuardMixin, SFTTrainer):
        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if model.training:
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return LeanSFTTrainer


def trainer_arguments(spec: SFTJobSpec, plan: Plan, batching: Batching, output_dir: str) -> dict[str, Any]:
    """`SFTConfig` keyword arguments of a job (`hparams.training_arguments`) with its batching's sampling order.

    Args:
        spec: The job spec.
        plan: The resolved plan.
        batching: `packed` or `length_grouped` (length-grouped batches are sampled by length).
        output_dir: The local directory of the Trainer's checkpoints before Ray persists them.
    """
    args = training_arguments(spec, plan, output_dir)
    args["train_sampling_strategy"] = "group_by_length" if batching == "length_grouped" else "random"
    return args


def build_trainer(spec: SFTJobSpec, model: Any, tokenizer: Any, args: dict[str, Any], batching: str, train: Rows,
                  validation: Rows | None, callbacks: list[Any], health: HealthGuard | None = None) -> Any:
    """The TRL `SFTTrainer` of a job (used on every Ray Train rank, and directly by single-process tests).

    Args:
        spec: The job spec (early stopping).
        model: The model after `apply_method`.
        tokenizer: Its tokenizer.
        args: `SFTConfig` keyword arguments (`trainer_arguments`), with the Trainer's output directory.
        batching: `packed` or `length_grouped`.
        train: Training rows (`input_ids`, `labels`).
        validation: Validation rows, or None.
        callbacks: Trainer callbacks.
        health: The non-finite and loss-spike guard (`sftjob_trainer.health`), or None for none.

    Returns:
        The trainer.
    """
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig

    all_callbacks = list(callbacks)
    stopping = spec.hyperparameters.early_stopping
    if stopping is not None and validation is not None:
        all_callbacks.append(EarlyStoppingCallback(stopping.patience, stopping.min_delta))
    if health is not None:
        all_callbacks.append(health.callback())
    trainer = lean_sft_trainer_class()(
        model=model, args=SFTConfig(**args), train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(validation) if validation else None, processing_class=tokenizer,
        data_collator=build_collator(batching, tokenizer.pad_token_id), callbacks=all_callbacks,
    )
    trainer.health_guard = health
    return trainer


def run_training(trainer: Any, resume: str | None) -> None:
    """`trainer.train()`, with allocation failures turned into an OutOfMemory TrainerError.

    Raises:
        TrainerError: OutOfMemory.
    """
    import torch

    try:
        trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError as err:
        raise out_of_memory(f"training step {trainer.state.global_step + 1}", str(err)) from None
    except RuntimeError as err:
        if is_out_of_memory(err):
            raise out_of_memory(f"training step {trainer.state.global_step + 1}", str(err)) from None
        raise


def attempt_progress(config: WorkerConfig) -> ProgressFile:
    """This attempt's progress.json as it is now, else (another attempt's or none) the driver's copy.

    Rank 0 lists a checkpoint there only after Ray Train persisted and registered it, so its
    checkpoints are complete ones. A worker group that Ray restarted within an attempt finds there
    what its predecessor saved and counted.
    """
    ctx = config.context
    current = ProgressWriter(ctx.output_uri, ctx.attempt).load_existing()
    if current is not None and current.attempt == ctx.attempt:
        return current
    return config.progress


def resume_checkpoint(resume_from: str, checkpoints: list[CheckpointRef]) -> CheckpointRef | None:
    """What to resume from: `resumeFrom` when it names a checkpoint, else with `latest` the newest listed one."""
    if resume_from not in ("latest", "none"):
        return CheckpointRef(step=0, uri=resume_from)
    if resume_from == "latest" and checkpoints:
        return max(checkpoints, key=lambda ref: ref.step)
    return None


def _restore_dir(resume: CheckpointRef | None, tmp: Path) -> str | None:
    """The local HF checkpoint directory to resume from: `resume`, else the latest that Ray registered in this run."""
    import ray.train

    if resume is not None:
        local = object_store.download_dir(resume.uri, tmp / "restored")
        inner = local / "checkpoint"
        return str(inner if inner.is_dir() else local)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        local = Path(checkpoint.to_directory(str(tmp / "restored")))
        return str(local / "checkpoint")
    return None


def train_loop(config: WorkerConfig) -> Rank0Result | None:
    """The body of every Ray Train worker.

    Args:
        config: What the driver's preflight prepared for the workers.

    Returns:
        On rank 0, its final progress, the files it exported and its evaluation (Ray Train hands rank 0's
        return value to the driver as `Result.return_value`); None on other ranks.
    """
    import ray
    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import set_seed

    from sftjob_trainer.methods import apply_method, check_device, quantization_config
    from sftjob_trainer.model_loading import load_model, load_tokenizer, resolve_model_dir, torch_dtype

    ctx, spec = config.context, config.spec
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if context.get_world_size() == 1:
        train_as_single_process()
    writer = None
    progress = attempt_progress(config)
    if rank == 0:
        writer = ProgressWriter(ctx.output_uri, ctx.attempt)
        writer.state = progress  # a restart within this attempt carries on from what the previous rank 0 wrote
        writer.update(force=True, message=WORKER_LOADING_MODEL)
    set_seed(spec.hyperparameters.seed)
    # Ray limits a worker's OpenMP pool to its CPU reservation; make torch use exactly that many threads.
    torch.set_num_threads(config.cpus_per_worker)
    model_dir = resolve_model_dir(spec.model)
    tokenizer = load_tokenizer(model_dir, spec.model)
    dtype = config.load_dtype
    model = load_model(model_dir, spec.model, tokenizer, dtype, quantization_config(spec.method, torch_dtype(dtype)),
                       config.plan.resolved.attention or "sdpa")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    check_device(spec.method, device.type == "cuda")
    reference = ray.get(config.reference) if rank == 0 and config.reference is not None else None
    with tempfile.TemporaryDirectory(prefix="sftjob-") as tmp:
        args = trainer_arguments(spec, config.plan, config.batching, str(Path(tmp) / "hf"))
        eval_batch = args["per_device_eval_batch_size"]
        base = ModelEvaluation()
        if writer is not None:
            writer.update(force=True, message=WORKER_EVALUATING_BASE)
            # Before any adapter exists: prompt tuning would otherwise prepend its virtual tokens already.
            base = evaluate_model(model.to(device), tokenizer, config, reference, eval_batch)
        model = apply_method(model, spec.method, str(model_dir), args["gradient_checkpointing"])
        if writer is not None:
            writer.update(force=True, message=WORKER_BUILDING_TRAINER)
        counter = TokenCounter()
        model.register_forward_pre_hook(counter, with_kwargs=True)
        checkpoints = list(progress.checkpoints)
        resume = resume_checkpoint(spec.checkpointing.resume_from, checkpoints)
        # Tokens trained before the resumed step; an older checkpoint without the count falls back to the attempt's.
        base_tokens = (resume.trained_tokens if resume is not None and resume.trained_tokens is not None
                       else config.progress.trained_tokens)
        callbacks: list[Any] = [
            RayTrainReportCallback(),
            make_progress_callback(writer, counter, config.checkpoints_uri, checkpoints, base_tokens),
            *fault_callbacks(config.faults, rank, writer),
        ]
        if writer is not None and spec.evaluation.during_training:
            callbacks.append(during_training_callback(writer, config.samples, spec.evaluation, tokenizer,
                                                      config.stop_token_ids))
        tracked = tracking_callback(config.context.job, ctx.output_uri, progress) if writer is not None else None
        if tracked is not None:  # after RayTrainReportCallback: it uploads event files once a checkpoint persisted
            callbacks.append(tracked)
        validation = ray.get(config.validation) if config.validation is not None else None
        trainer = build_trainer(spec, model, tokenizer, args, config.batching, ray.get(config.train), validation,
                                callbacks, HealthGuard(spec.hyperparameters.loss_spike, progress, writer))
        trainer = prepare_trainer(trainer)
        run_training(trainer, _restore_dir(resume, Path(tmp)))
        if writer is None:
            return None
        writer.update(force=True, message=WORKER_EVALUATING_TUNED)
        # Before export: merging the adapter changes the model.
        tuned = evaluate_model(trainer.model, tokenizer, config, reference, eval_batch)
        forgetting = (forgetting_result(base.reference_loss, tuned.reference_loss, reference,
                                        spec.evaluation.max_forgetting) if reference is not None else None)
        source_losses = (per_source_eval_loss(trainer.model, validation, config.validation_sources, eval_batch,
                                              tokenizer.pad_token_id)
                         if config.validation_sources and validation is not None else {})
        files, serving = export_weights(config, trainer.model, tokenizer, model_dir, Path(tmp))
        metrics = writer.metrics_file()  # what rank 0 wrote: the driver reads neither it nor progress.json back
        files[METRICS_FILE] = describe_bytes(metrics)
        from sftjob_trainer.benchmarks import compare

        return Rank0Result(writer.state, metrics_records(metrics), files, Answers(base.answers, tuned.answers),
                           forgetting, compare(spec.evaluation.tasks, base.benchmarks, tuned.benchmarks),
                           round(base.seconds + tuned.seconds, 3), serving, source_losses)


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's evaluation on rank 0: answers, lm-eval scores, reference loss, and its cost."""

    answers: list[str] = field(default_factory=list)
    """Greedy answers to the held-out samples."""
    benchmarks: dict[str, Any] = field(default_factory=dict)
    """lm-eval scores per task (`sftjob_trainer.benchmarks.TaskScore`)."""
    reference_loss: float = 0.0
    """Mean token loss on the reference set (0 without one)."""
    seconds: float = 0.0
    """Wall time it took."""


def per_source_eval_loss(model: Any, rows: Rows, sources: list[int], batch_size: int,
                         pad_token_id: int) -> dict[int, float]:
    """A model's mean token loss on each mixture source's held-out rows (`{source index: loss}`).

    Args:
        model: The fine-tuned model.
        rows: The validation rows (`input_ids`, `labels`), as the Trainer evaluates them.
        sources: Each row's source index (`Example.source`).
        batch_size: Rows per forward pass.
        pad_token_id: The padding token.
    """
    from types import SimpleNamespace

    from sftjob_trainer.data import mixture

    tagged = [SimpleNamespace(source=source, **row) for row, source in zip(rows, sources, strict=True)]
    return mixture.per_source_eval_loss(tagged, lambda examples: mean_token_loss(  # type: ignore[arg-type]
        model, [{"input_ids": e.input_ids, "labels": e.labels} for e in examples], batch_size, pad_token_id))


def evaluate_model(model: Any, tokenizer: Any, config: WorkerConfig, reference: Rows | None,
                   batch_size: int) -> ModelEvaluation:
    """Answer the held-out samples, run the lm-eval tasks and score the reference set with one model (rank 0)."""
    started = time.monotonic()
    evaluation = config.spec.evaluation
    answers = generate_answers(model, tokenizer, [s.prompt_ids for s in config.samples], evaluation.max_new_tokens,
                               config.stop_token_ids)
    scores: dict[str, Any] = {}
    if evaluation.tasks:
        from sftjob_trainer.benchmarks import run_tasks

        with tempfile.TemporaryDirectory(prefix="sftjob-lm-eval-") as workdir:
            scores = run_tasks(model, tokenizer, evaluation.tasks, batch_size, evaluation.max_new_tokens,
                               Path(workdir))
    loss = 0.0
    if reference is not None:
        loss = mean_token_loss(model, reference, batch_size, tokenizer.pad_token_id)
    return ModelEvaluation(answers, scores, loss, time.monotonic() - started)


__all__ = [
    "WORKER_BUILDING_TRAINER",
    "WORKER_LOADING_MODEL",
    "build_collator",
    "build_trainer",
    "run_training",
    "train_loop",
    "trainer_arguments",
]
