"""Resolve `auto` and unset hyperparameters into concrete values, recorded in `status.resolved`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.types import ResolvedSettings, SFTJobSpec
from sftjob_trainer.device_defaults import LIGER
from sftjob_trainer.trainer_error import TrainerError

# Peak learning rates by method when unset (SFT practice: adapters tolerate ~10x the full-FT rate;
# prompt tuning updates only a few embeddings and needs a much larger one).
DEFAULT_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5, "freeze": 2e-5, "prompt_tuning": 3e-2}
# Largest per-device batch chosen automatically: bigger forward passes stop paying off on CPU and risk
# out-of-memory on GPUs; gradient accumulation covers the rest of the global batch.
MAX_AUTO_PER_DEVICE = 8
# Models this large recompute activations on GPU by default (activation memory dominates there).
CHECKPOINTING_PARAMS = 1_000_000_000


@dataclass(frozen=True)
class Device:
    """What the workers train on."""

    cuda: bool
    """Whether the workers have a CUDA GPU."""
    bf16: bool = False
    """Whether that GPU supports bfloat16."""

    @property
    def name(self) -> str:
        """`cuda` or `cpu`."""
        return "cuda" if self.cuda else "cpu"


@dataclass(frozen=True)
class Plan:
    """The resolved settings plus what the Trainer needs beyond them."""

    resolved: ResolvedSettings
    """The values recorded in progress.json and the model card."""
    warmup_steps: int
    """Linear warmup steps (warmupRatio x total steps, rounded up)."""
    steps_per_epoch: int
    """Optimizer steps per pass over the data."""

    @property
    def total_steps(self) -> int:
        """Optimizer steps planned."""
        assert self.resolved.total_steps is not None
        return self.resolved.total_steps


def batch_split(global_batch: int, num_workers: int, per_device: int | None) -> tuple[int, int]:
    """(per-device batch, accumulation steps) for a global batch over `num_workers`.

    The per-worker share is rounded up, so the realised global batch is at least `global_batch`.

    Raises:
        TrainerError: InvalidSpec when perDeviceBatchSize exceeds the per-worker share.
    """
    per_worker = math.ceil(global_batch / num_workers)
    if per_device is not None:
        if per_device > per_worker:
            raise TrainerError(
                ErrorCode.INVALID_SPEC,
                f"hyperparameters.perDeviceBatchSize {per_device} exceeds batchSize/numWorkers = {per_worker}",
                "spec.hyperparameters.perDeviceBatchSize",
            )
        return per_device, math.ceil(per_worker / per_device)
    largest = max(d for d in range(1, min(per_worker, MAX_AUTO_PER_DEVICE) + 1) if per_worker % d == 0)
    return largest, per_worker // largest


def precision(spec: SFTJobSpec, device: Device) -> str:
    """`bf16`, `fp16` or `fp32` (auto: bf16 on CUDA GPUs that support it, else fp32).

    Raises:
        TrainerError: UnsupportedDevice for fp16 on CPU, or bf16 on a GPU without it.
    """
    wanted = spec.hyperparameters.precision
    if wanted == "auto":
        return "bf16" if device.cuda and device.bf16 else "fp32"
    if wanted == "fp16" and not device.cuda:
        raise TrainerError(ErrorCode.UNSUPPORTED_DEVICE,
                           "hyperparameters.precision fp16 needs a CUDA GPU; use fp32 or bf16 on CPU",
                           "spec.hyperparameters.precision")
    if wanted == "bf16" and device.cuda and not device.bf16:
        raise TrainerError(ErrorCode.UNSUPPORTED_DEVICE, "this GPU has no bfloat16; use precision fp16 or fp32",
                           "spec.hyperparameters.precision")
    return wanted


def resolve(spec: SFTJobSpec, device: Device, num_params: int, num_train_sequences: int, *,
            max_seq_length: int | None = None, batching: str | None = None, chat_template: str | None = None,
            attention: str = "sdpa", kernels: str | None = None) -> Plan:
    """Resolve the hyperparameters of a job.

    Args:
        spec: The job spec.
        device: What the workers train on.
        num_params: Parameters of the base model (gradient checkpointing for large ones).
        num_train_sequences: Training examples the Trainer iterates per epoch.
        max_seq_length: The data pipeline's resolved maximum length.
        batching: `packed` or `length_grouped`.
        chat_template: Which template rendered the data.
        attention: The attention implementation.
        kernels: The fused kernels (`liger` or `none`, from `sftjob_trainer.device_defaults`).

    Returns:
        The plan.

    Raises:
        TrainerError: InvalidSpec or UnsupportedDevice for impossible combinations.
    """
    hp = spec.hyperparameters
    workers = spec.compute.num_workers
    per_device, accumulation = batch_split(hp.batch_size, workers, hp.per_device_batch_size)
    # As the HF Trainer counts: each rank iterates ceil(n / (per_device x workers)) micro-batches per epoch,
    # and a final partial accumulation still makes an optimizer step.
    micro_batches = max(1, math.ceil(num_train_sequences / (per_device * workers)))
    steps_per_epoch = max(1, math.ceil(micro_batches / accumulation))
    total = hp.max_steps if hp.max_steps is not None else max(1, math.ceil(hp.epochs * steps_per_epoch))
    if hp.gradient_checkpointing == "auto":
        checkpointing = device.cuda and num_params >= CHECKPOINTING_PARAMS
    else:
        checkpointing = hp.gradient_checkpointing == "on"
    resolved = ResolvedSettings(
        learning_rate=hp.learning_rate if hp.learning_rate is not None else DEFAULT_LR[spec.method.type],
        per_device_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        global_batch_size=per_device * accumulation * workers,
        num_workers=workers,
        precision=precision(spec, device),
        gradient_checkpointing=checkpointing,
        max_seq_length=max_seq_length,
        batching=batching,
        attention=attention,
        kernels=kernels,
        chat_template=chat_template,
        total_steps=total,
        device=device.name,
    )
    return Plan(resolved=resolved, warmup_steps=math.ceil(hp.warmup_ratio * total), steps_per_epoch=steps_per_epoch)


def training_arguments(spec: SFTJobSpec, plan: Plan, output_dir: str) -> dict[str, Any]:
    """Keyword arguments of TRL's `SFTConfig` for this job.

    Args:
        spec: The job spec.
        plan: The resolved plan.
        output_dir: The worker-local directory for Trainer checkpoints before Ray persists them.

    Returns:
        The arguments.
    """
    hp, ckpt, r = spec.hyperparameters, spec.checkpointing, plan.resolved
    has_eval = spec.dataset.validation is not None or spec.dataset.validation_split is not None
    eval_args: dict[str, Any] = {"eval_strategy": "no"}
    if has_eval:
        eval_args = (
            {"eval_strategy": "steps", "eval_steps": hp.eval_interval}
            if hp.eval_interval is not None
            else {"eval_strategy": "epoch"}
        )
    save_args: dict[str, Any] = (
        {"save_strategy": "steps", "save_steps": ckpt.interval}
        if ckpt.interval is not None
        else {"save_strategy": "epoch"}
    )
    stop_args: dict[str, Any] = {}
    if hp.early_stopping is not None:
        accuracy = hp.early_stopping.metric == "eval_token_accuracy"
        stop_args = {
            "metric_for_best_model": "eval_mean_token_accuracy" if accuracy else "eval_loss",
            "greater_is_better": accuracy,
        }
    if has_eval and spec.output.select == "best":
        # The Trainer reloads the best checkpoint at the end; it compares only checkpoints that were evaluated,
        # so evaluation follows the checkpoint cadence (the spec validator rejects intervals that disagree).
        eval_args = ({"eval_strategy": "steps", "eval_steps": ckpt.interval} if ckpt.interval is not None
                     else {"eval_strategy": "steps", "eval_steps": hp.eval_interval} if hp.eval_interval is not None
                     else {"eval_strategy": "epoch"})
        if hp.eval_interval is not None and ckpt.interval is None:
            save_args = {"save_strategy": "steps", "save_steps": hp.eval_interval}
        stop_args = {"metric_for_best_model": "eval_loss", "greater_is_better": False, **stop_args,
                     "load_best_model_at_end": True}
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": r.per_device_batch_size,
        "per_device_eval_batch_size": r.per_device_batch_size,
        "gradient_accumulation_steps": r.gradient_accumulation_steps,
        "num_train_epochs": hp.epochs,
        "max_steps": plan.total_steps,
        "learning_rate": r.learning_rate,
        "lr_scheduler_type": hp.lr_scheduler,
        "warmup_steps": plan.warmup_steps,
        "weight_decay": hp.weight_decay,
        "max_grad_norm": hp.max_grad_norm,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "bf16": r.precision == "bf16",
        "fp16": r.precision == "fp16",
        "use_cpu": r.device == "cpu",
        "gradient_checkpointing": bool(r.gradient_checkpointing),
        "use_liger_kernel": r.kernels == LIGER,
        "logging_steps": hp.log_interval,
        "logging_first_step": True,
        # Local copies only stage a checkpoint until Ray Train persists it; Ray's CheckpointConfig keeps `keep`.
        "save_total_limit": 1,
        "neftune_noise_alpha": hp.neftune_noise_alpha,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        # The data pipeline already tokenised, masked and (optionally) packed; TRL must not redo it.
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "remove_unused_columns": False,
        "packing": False,
        "max_length": None,
        "ddp_find_unused_parameters": False,
        **eval_args,
        **save_args,
        **stop_args,
    }
