"""The Ray Train worker loop: TRL `SFTTrainer` + PEFT on one data-parallel rank.

Every rank builds the same model and iterates the same prepared sequences (put into the object
store once by the driver); the Trainer's distributed sampler hands each rank its shard of every
global batch. Rank 0 writes progress.json and metrics.jsonl.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftjob_api.layout import ADAPTER_DIR, MODEL_DIR
from sftjob_api.progress import ProgressFile
from sftjob_api.types import BenchmarkResult, CheckpointRef, ForgettingResult, SFTJob, parse_sftjob
from sftjob_trainer import storage
from sftjob_trainer.artifacts import generate_answers, publish_dir
from sftjob_trainer.errors import is_out_of_memory, out_of_memory
from sftjob_trainer.evaluation import Answers, Sample, during_training_callback
from sftjob_trainer.faults import KILL_DRIVER_AT_STEP_ENV, OOM_AT_STEP_ENV, fault_callbacks
from sftjob_trainer.forgetting import forgetting_result, mean_token_loss
from sftjob_trainer.health import HealthGuard
from sftjob_trainer.reporting import ProgressWriter, merge_metrics, metrics_from_log
from sftjob_trainer.tracking import tracking_callback

log = logging.getLogger(__name__)

# Steps in the sliding window of the tokens/s figure (recent throughput, not the run's average).
THROUGHPUT_WINDOW = 20
# progress.json messages of rank 0 before its first step: they account for a worker's start-up time.
WORKER_LOADING_MODEL = "worker started; loading the model"
WORKER_EVALUATING_BASE = "model loaded; evaluating the base model"
WORKER_BUILDING_TRAINER = "base model evaluated; building the trainer"
WORKER_EVALUATING_TUNED = "training done; evaluating the fine-tuned model"
# What Ray Train's torch backend sets for every worker, from which Accelerate infers distributed training.
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Rank0Result:
    """What rank 0 hands back to the driver (Ray Train passes it on as `Result.return_value`)."""

    files: dict[str, dict[str, Any]]
    """`{relative path: {sha256, size}}` of every file rank 0 exported."""
    answers: Answers
    """The base and fine-tuned answers to the held-out samples."""
    forgetting: ForgettingResult | None = None
    """Base and fine-tuned loss on `evaluation.reference` (None without a reference set)."""
    benchmarks: list[BenchmarkResult] = field(default_factory=list)
    """lm-eval results of `evaluation.tasks` on both models."""
    eval_seconds: float = 0.0
    """Time spent evaluating (generation, benchmarks, reference losses), apart from training."""
    serving: dict[str, Any] | None = None
    """The serving check of the exported weights (`sftjob_trainer.serving.ServingCheck.to_wire`)."""
    source_losses: dict[int, float] = field(default_factory=dict)
    """A mixture's evaluation loss per source index (`dataset.train.sources`), of the fine-tuned model."""


def build_collator(batching: str, pad_token_id: int) -> Any:
    """The data pipeline's collator for `packed` (padding-free) or `length_grouped` (padded) batches."""
    from sftjob_trainer.data import PackedCollator, PaddedCollator

    return PackedCollator() if batching == "packed" else PaddedCollator(pad_token_id=pad_token_id)


class TokenCounter:
    """Counts loss-bearing tokens of every training forward pass (a forward pre-hook on the model)."""

    def __init__(self) -> None:
        self.local = 0

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        """Add the batch's loss-bearing tokens (labels shifted by one, as the causal loss sees them)."""
        labels = kwargs.get("labels")
        if module.training and labels is not None:
            self.local += int((labels[..., 1:] != -100).sum())


def _all_ranks_sum(value: int) -> int:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(tensor)
    return int(tensor.item())


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


def make_progress_callback(writer: ProgressWriter | None, counter: TokenCounter, checkpoints_uri: str,
                           known_checkpoints: list[CheckpointRef], base_tokens: int,
                           kill_driver: tuple[int, int] | None = None, oom_at_step: int | None = None) -> Any:
    """The callback that turns Trainer events into progress.json and metrics.jsonl (rank 0 writes).

    Args:
        writer: The progress writer on rank 0, None on other ranks.
        counter: The token counter hooked into the model.
        checkpoints_uri: `<output>/checkpoints/<run>` where Ray Train persists checkpoints.
        known_checkpoints: Checkpoints of earlier attempts (kept in the list).
        base_tokens: Tokens trained by earlier attempts.
        kill_driver: (step, driver pid) of the fault-injection hook, or None.
        oom_at_step: Step at which rank 0 raises torch's out-of-memory error (fault injection), or None.

    Returns:
        A `transformers.TrainerCallback`.
    """
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.start = time.monotonic()
            self.start_step = 0
            self.started = False
            self.tokens = base_tokens
            self.window: deque[tuple[float, int]] = deque(maxlen=THROUGHPUT_WINDOW)
            self.checkpoints = list(known_checkpoints)
            self.last_eval_loss: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.monotonic()
            self.window.append((self.start, self.tokens))
            if writer is not None:
                writer.update(force=True, phase="Running", message=None, total_steps=state.max_steps)

        def _first_step(self, state: Any) -> None:
            # The Trainer restores a checkpoint's step only after on_train_begin: the first step tells.
            self.start_step = state.global_step - 1
            self.started = True
            if writer is not None:
                writer.truncate_metrics_after(self.start_step)  # drop what a dead attempt logged past its checkpoint
                writer.update(force=True, resumed_from_step=self.start_step or None)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if oom_at_step is not None and writer is not None and state.global_step + 1 == oom_at_step:
                import torch

                raise torch.OutOfMemoryError(f"injected by {OOM_AT_STEP_ENV}: tried to allocate 64.00 GiB")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not self.started:
                self._first_step(state)
            self.tokens += _all_ranks_sum(counter.local)
            counter.local = 0
            now = time.monotonic()
            self.window.append((now, self.tokens))
            first_t, first_tokens = self.window[0]
            rate = (self.tokens - first_tokens) / (now - first_t) if now > first_t else None
            if writer is not None:
                done = state.global_step - self.start_step
                writer.update(
                    force=state.global_step >= state.max_steps,
                    **writer.progress_fields(state.global_step, state.max_steps, state.epoch or 0.0,
                                             now - self.start, done, self.tokens, rate),
                )
                if kill_driver is not None and state.global_step == kill_driver[0]:
                    writer.flush()
                    os.kill(kill_driver[1], signal.SIGKILL)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if writer is None or not logs:
                return
            record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
            if "eval_loss" in logs:
                import math

                record["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))  # exp(50) bounds a diverged run
                self.last_eval_loss = logs["eval_loss"]
            writer.append_metrics(record)
            writer.update(force="eval_loss" in logs, trained_tokens=self.tokens,
                          metrics=merge_metrics(writer.state.metrics, metrics_from_log(logs)))

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # Runs after RayTrainReportCallback.on_save, which has persisted the checkpoint: the directory
            # it just wrote is the newest (Ray names them checkpoint_<timestamp>). Older unknown ones are
            # uploads that failed part-way and that Ray never registered: never listed, never resumed from.
            if writer is None:
                return
            dirs = {name.split("/", 1)[0] for name in storage.list_files(checkpoints_uri)
                    if name.startswith("checkpoint_") and "/" in name}  # directories, not Ray's snapshot file
            unknown = dirs - {ref.uri.rsplit("/", 1)[-1] for ref in self.checkpoints}
            if unknown:
                self.checkpoints.append(CheckpointRef(step=state.global_step,
                                                      uri=storage.join(checkpoints_uri, max(unknown)),
                                                      eval_loss=self.last_eval_loss, trained_tokens=self.tokens))
            alive = [ref for ref in self.checkpoints if ref.uri.rsplit("/", 1)[-1] in dirs]
            self.checkpoints = alive
            writer.update(force=True, checkpoints=alive)

    return ProgressCallback()


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


def build_trainer(spec: Any, model: Any, tokenizer: Any, args: dict[str, Any], output_dir: str, batching: str,
                  train: list[dict[str, Any]], validation: list[dict[str, Any]] | None,
                  callbacks: list[Any], health: HealthGuard | None = None) -> Any:
    """The TRL `SFTTrainer` of a job (used on every Ray Train rank, and directly by single-process tests).

    Args:
        spec: The job spec (early stopping).
        model: The model after `apply_method`.
        tokenizer: Its tokenizer.
        args: `SFTConfig` keyword arguments from `training_arguments`.
        output_dir: Local directory for the Trainer's checkpoints.
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
        model=model, args=SFTConfig(**{**args, "output_dir": output_dir}), train_dataset=Dataset.from_list(train),
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


def attempt_progress(config: dict[str, Any]) -> ProgressFile:
    """This attempt's progress.json as it is now, else (another attempt's or none) the driver's copy.

    Rank 0 lists a checkpoint there only after Ray Train persisted and registered it, so its
    checkpoints are complete ones. A worker group that Ray restarted within an attempt finds there
    what its predecessor saved and counted.
    """
    current = ProgressWriter(config["output_uri"], config["attempt"]).load_existing()
    if current is not None and current.attempt == config["attempt"]:
        return current
    return ProgressFile.model_validate(config["progress"])


def resume_checkpoint(config: dict[str, Any], checkpoints: list[CheckpointRef]) -> CheckpointRef | None:
    """What to resume from: an explicit `resumeFrom` URI, else with `latest` the newest listed checkpoint."""
    if config.get("resume_uri") is not None:
        return CheckpointRef(step=0, uri=config["resume_uri"])
    if config["resume_latest"] and checkpoints:
        return max(checkpoints, key=lambda ref: ref.step)
    return None


def _restore_dir(resume: CheckpointRef | None, tmp: Path) -> str | None:
    """The local HF checkpoint directory to resume from: `resume`, else the latest that Ray registered in this run."""
    import ray.train

    if resume is not None:
        local = storage.download_dir(resume.uri, tmp / "restored")
        inner = local / "checkpoint"
        return str(inner if inner.is_dir() else local)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        local = Path(checkpoint.to_directory(str(tmp / "restored")))
        return str(local / "checkpoint")
    return None


def train_loop(config: dict[str, Any]) -> Rank0Result | None:
    """The body of every Ray Train worker.

    Args:
        config: `job` (SFTJob wire JSON), `output_uri`, `attempt`, `plan` (SFTConfig kwargs), `batching`,
            `train`/`validation` (object refs of the prepared sequences), `checkpoints_uri`,
            `progress` (the attempt's progress.json at its start), `resume_uri`, `kill_driver`,
            `samples`, `stop_token_ids`, `load_dtype`, `reference` (object ref of the reference rows, or None).

    Returns:
        On rank 0, the files it exported and the forgetting figure (Ray Train hands rank 0's return value to
        the driver as `Result.return_value`); None on other ranks.
    """
    import ray
    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import set_seed

    from sftjob_trainer.methods import apply_method, check_device, quantization_config
    from sftjob_trainer.model_loading import load_model, load_tokenizer, resolve_model_dir, torch_dtype

    job: SFTJob = parse_sftjob(config["job"])
    spec = job.spec
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if context.get_world_size() == 1:
        train_as_single_process()
    writer = None
    progress = attempt_progress(config)
    if rank == 0:
        writer = ProgressWriter(config["output_uri"], config["attempt"])
        writer.state = progress  # a restart within this attempt carries on from what the previous rank 0 wrote
        writer.update(force=True, message=WORKER_LOADING_MODEL)
    set_seed(spec.hyperparameters.seed)
    # Ray limits a worker's OpenMP pool to its CPU reservation; make torch use exactly that many threads.
    torch.set_num_threads(config["cpus_per_worker"])
    model_dir = resolve_model_dir(spec.model)
    tokenizer = load_tokenizer(model_dir, spec.model)
    args = config["plan"]
    model = load_model(model_dir, spec.model, tokenizer, config["load_dtype"],
                       quantization_config(spec.method, torch_dtype(config["load_dtype"])), config["attention"])
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    check_device(spec.method, device.type == "cuda")
    samples: list[Sample] = config["samples"]
    reference = ray.get(config["reference"]) if rank == 0 and config.get("reference") is not None else None
    base = ModelEvaluation()
    if writer is not None:
        writer.update(force=True, message=WORKER_EVALUATING_BASE)
        # Before any adapter exists: prompt tuning would otherwise prepend its virtual tokens already.
        base = evaluate_model(model.to(device), tokenizer, config, reference, spec)
    model = apply_method(model, spec.method, str(model_dir), args["gradient_checkpointing"])
    if writer is not None:
        writer.update(force=True, message=WORKER_BUILDING_TRAINER)
    counter = TokenCounter()
    model.register_forward_pre_hook(counter, with_kwargs=True)
    checkpoints = list(progress.checkpoints)
    resume = resume_checkpoint(config, checkpoints)
    # Tokens trained before the resumed step; an older checkpoint without the count falls back to the attempt's.
    base_tokens = resume.trained_tokens if resume is not None and resume.trained_tokens is not None else (
        ProgressFile.model_validate(config["progress"]).trained_tokens)
    with tempfile.TemporaryDirectory(prefix="sftjob-") as tmp:
        callbacks: list[Any] = [
            RayTrainReportCallback(),
            make_progress_callback(writer, counter, config["checkpoints_uri"], checkpoints, base_tokens,
                                   config["kill_driver"], config.get("oom_at_step")),
            *fault_callbacks(config.get("kill_worker"), rank),
        ]
        if writer is not None and spec.evaluation.during_training:
            callbacks.append(during_training_callback(writer, samples, spec.evaluation, tokenizer,
                                                      config["stop_token_ids"]))
        tracked = tracking_callback(job, config["output_uri"], progress) if writer is not None else None
        if tracked is not None:  # after RayTrainReportCallback: it uploads event files once a checkpoint persisted
            callbacks.append(tracked)
        trainer = build_trainer(spec, model, tokenizer, config["plan"], str(Path(tmp) / "hf"), config["batching"],
                                ray.get(config["train"]),
                                ray.get(config["validation"]) if config["validation"] is not None else None,
                                callbacks, HealthGuard(spec.hyperparameters.loss_spike, progress, writer))
        trainer = prepare_trainer(trainer)
        run_training(trainer, _restore_dir(resume, Path(tmp)))
        if writer is None:
            return None
        writer.update(force=True, message=WORKER_EVALUATING_TUNED)
        # Before export: merging the adapter changes the model.
        tuned = evaluate_model(trainer.model, tokenizer, config, reference, spec)
        forgetting = (forgetting_result(base.reference_loss, tuned.reference_loss, reference,
                                        spec.evaluation.max_forgetting) if reference is not None else None)
        source_losses = (per_source_eval_loss(trainer.model, ray.get(config["validation"]),
                                              config["validation_sources"], args["per_device_eval_batch_size"],
                                              tokenizer.pad_token_id)
                         if config["validation_sources"] and config["validation"] is not None else {})
        files, serving = export_rank0(config, spec, trainer.model, tokenizer, model_dir, Path(tmp))
        from sftjob_trainer.benchmarks import compare

        return Rank0Result(files, Answers(base.answers, tuned.answers), forgetting,
                           compare(spec.evaluation.tasks, base.benchmarks, tuned.benchmarks),
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


def per_source_eval_loss(model: Any, rows: list[dict[str, Any]], sources: list[int], batch_size: int,
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


def evaluate_model(model: Any, tokenizer: Any, config: dict[str, Any], reference: Any, spec: Any) -> ModelEvaluation:
    """Answer the held-out samples, run the lm-eval tasks and score the reference set with one model (rank 0)."""
    started = time.monotonic()
    samples: list[Sample] = config["samples"]
    evaluation = spec.evaluation
    answers = generate_answers(model, tokenizer, [s.prompt_ids for s in samples], evaluation.max_new_tokens,
                               config["stop_token_ids"])
    scores: dict[str, Any] = {}
    if evaluation.tasks:
        from sftjob_trainer.benchmarks import run_tasks

        with tempfile.TemporaryDirectory(prefix="sftjob-lm-eval-") as workdir:
            scores = run_tasks(model, tokenizer, evaluation.tasks, config["plan"]["per_device_eval_batch_size"],
                               evaluation.max_new_tokens, Path(workdir))
    loss = 0.0
    if reference is not None:
        loss = mean_token_loss(model, reference, config["plan"]["per_device_eval_batch_size"], tokenizer.pad_token_id)
    return ModelEvaluation(answers, scores, loss, time.monotonic() - started)


def export_rank0(config: dict[str, Any], spec: Any, model: Any, tokenizer: Any, model_dir: Path,
                 tmp: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Save the trained weights (adapter/ and/or model/) into the output and check they serve as trained (rank 0).

    Args:
        config: The worker config.
        spec: The job spec.
        model: The trained model (PeftModel for adapter methods).
        tokenizer: The tokenizer (saved next to the weights).
        model_dir: The base model directory (QLoRA merges into the unquantised base read from it).
        tmp: A scratch directory.

    Returns:
        `{relative path: {sha256, size}}` of every file written, and the serving check (`servingCheck` of
        manifest.json; None when no weights were saved).
    """
    from sftjob_trainer.serving import prepare_for_export, serving_check, write_generation_config

    out = config["output_uri"]
    files: dict[str, dict[str, Any]] = {}
    # The template and stop tokens training used go with the weights: a server renders and stops as trained.
    template, stops = config["export_template"], config["stop_token_ids"]
    prepare_for_export(model, tokenizer, template, stops)
    served: tuple[Path, Path | None] | None = None  # (directory, base for an adapter) a server would load
    if spec.method.is_adapter:
        if spec.output.save_adapter:
            adapter = tmp / ADAPTER_DIR
            model.save_pretrained(str(adapter))
            tokenizer.save_pretrained(str(adapter))
            write_generation_config(model, adapter)  # PEFT's save_pretrained writes none
            published = publish_dir(adapter, storage.join(out, ADAPTER_DIR))
            files.update({f"{ADAPTER_DIR}/{k}": v for k, v in published.items()})
            served = (adapter, model_dir)
        if spec.output.merge_adapter:
            merged = merged_model(model, spec, tokenizer, model_dir, tmp, config["load_dtype"])
            prepare_for_export(merged, tokenizer, template, stops)  # QLoRA's merge reloads the base from disk
            files.update(_save_full(merged, tokenizer, tmp, out))
            served = (tmp / MODEL_DIR, None)
    else:
        files.update(_save_full(model, tokenizer, tmp, out))
        served = (tmp / MODEL_DIR, None)
    check = None
    if served is not None:
        import torch

        check = serving_check(served[0], config["serving_samples"], spec.evaluation.max_new_tokens, served[1],
                              stop_token_ids=stops, device="cuda" if torch.cuda.is_available() else "cpu")
        if not check.passed:
            log.warning("the exported model does not serve as trained: %s", check.to_wire())
    return files, check.to_wire() if check is not None else None


def merged_model(model: Any, spec: Any, tokenizer: Any, model_dir: Path, tmp: Path, dtype: str) -> Any:
    """The base with the LoRA adapter merged; QLoRA merges into the unquantised base."""
    if spec.method.type != "qlora":
        return model.merge_and_unload()
    from peft import PeftModel

    from sftjob_trainer.model_loading import load_model

    adapter = tmp / "qlora-adapter"
    model.save_pretrained(str(adapter))
    base = load_model(model_dir, spec.model, tokenizer, dtype)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def _save_full(model: Any, tokenizer: Any, tmp: Path, out: str) -> dict[str, dict[str, Any]]:
    local = tmp / MODEL_DIR
    model.save_pretrained(str(local), safe_serialization=True)
    tokenizer.save_pretrained(str(local))
    return {f"{MODEL_DIR}/{k}": v for k, v in publish_dir(local, storage.join(out, MODEL_DIR)).items()}


__all__ = [
    "KILL_DRIVER_AT_STEP_ENV",
    "OOM_AT_STEP_ENV",
    "Rank0Result",
    "build_collator",
    "build_trainer",
    "run_training",
    "train_loop",
]
