"""Optimisation (`spec.hyperparameters`) and checkpointing (`spec.checkpointing`).

Defaults follow established SFT practice: learning rate ~2e-4 for adapters and 1e-5..5e-5 for full
fine-tuning, a global batch of 8-32, 3 epochs for small data, cosine decay with 3% warmup and
weight decay 0.01.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sftjob_api.base import ApiModel, Text, check_storage_uri


class EarlyStoppingSpec(ApiModel):
    """Stop when the evaluation metric stops improving."""

    patience: int = Field(default=3, ge=1)
    """Evaluations without improvement before training stops."""

    metric: Literal["eval_loss", "eval_token_accuracy"] = "eval_loss"
    """The metric watched; loss is minimised, accuracy maximised."""

    min_delta: float = Field(default=0.0, ge=0)
    """Smallest change that counts as an improvement."""


class LossSpikeSpec(ApiModel):
    """Skip the batch of an optimizer step whose training loss spikes far above the recent losses.

    The step's update is never applied: the weights and the optimizer state stay as they were before
    that batch, which is the state a rollback to the last checkpoint would replay towards, without the
    replay. Skipped steps still count as steps (the learning-rate schedule moves on) and appear in
    `status.progress.skippedBatches`.
    """

    factor: float = Field(default=3.0, gt=1, le=1000)
    """A step is skipped when its loss exceeds `factor` times the median loss of the last `window` steps."""

    window: int = Field(default=20, ge=3, le=10000)
    """Steps in the median; the guard acts once it has seen this many steps (in each attempt). A lasting
    change of the loss level is accepted after about half a window of skips, since skipped losses count too."""


class HyperparametersSpec(ApiModel):
    """Optimisation settings. `auto` and unset values are resolved by the trainer and reported in `status.resolved`."""

    epochs: float = Field(default=3, gt=0, le=1000)
    """Passes over the training data. Ignored when `maxSteps` is set."""

    max_steps: int | None = Field(default=None, ge=1)
    """Total optimizer steps; takes precedence over `epochs`."""

    learning_rate: float | None = Field(default=None, gt=0, le=1)
    """Peak learning rate. Unset: 2e-4 for lora/qlora, 2e-5 for full/freeze, 3e-2 for prompt_tuning."""

    batch_size: int = Field(default=16, ge=1, le=65536)
    """Global batch in examples per optimizer step, across all workers."""

    per_device_batch_size: int | None = Field(default=None, ge=1)
    """Examples per worker per forward pass; gradient accumulation makes up the rest of `batchSize`.
    Unset: the largest divisor of the per-worker batch that fits the device."""

    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""

    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    """Fraction of the steps spent warming up linearly from 0."""

    weight_decay: float = Field(default=0.01, ge=0, le=1)
    """AdamW weight decay."""

    max_grad_norm: float = Field(default=1.0, ge=0)
    """Gradient clipping norm; 0 disables clipping."""

    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Training precision. `auto`: bf16 on GPUs that support it, else fp32."""

    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    """Recompute activations in the backward pass to save memory. `auto`: on for models of 1B+
    parameters on GPU, off elsewhere."""

    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    """Seed for initialisation, shuffling and the validation split."""

    eval_interval: int | None = Field(default=None, ge=1)
    """Evaluate every N optimizer steps. Unset: at the end of every epoch."""

    log_interval: int = Field(default=10, ge=1)
    """Record metrics every N optimizer steps."""

    early_stopping: EarlyStoppingSpec | None = None
    """Stop early when evaluation stops improving (needs validation data)."""

    loss_spike: LossSpikeSpec | None = None
    """Skip batches whose loss spikes (unset: no spike guard). A non-finite loss or gradient norm always
    stops the job with `NonFiniteLoss`, spike guard or not."""

    neftune_noise_alpha: float | None = Field(default=None, gt=0)
    """NEFTune: add uniform noise of this scale to the input embeddings while training."""


class CheckpointingSpec(ApiModel):
    """Checkpoints under `<output>/checkpoints/`, used to resume a retried attempt."""

    interval: int | None = Field(default=None, ge=1)
    """Save every N optimizer steps. Unset: at the end of every epoch."""

    keep: int = Field(default=3, ge=1, le=100)
    """Checkpoints kept (the best by eval loss is always kept)."""

    resume_from: Text = Field(default="latest", min_length=1)
    """`latest` (the newest checkpoint of this job, if any), `none`, or the URI of a checkpoint directory."""

    @field_validator("resume_from")
    @classmethod
    def _resume_target(cls, value: str) -> str:
        if value in ("latest", "none"):
            return value
        return check_storage_uri(value)
