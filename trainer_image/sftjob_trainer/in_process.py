"""The trainer of a job, built in this process without Ray: for benchmarks and single-process checks.

It goes through the same steps as a Ray Train worker (data pipeline, resolved plan, model loading
with the chosen attention, method, lean SFTTrainer with the job's collator), so a benchmark of it
measures what `sftjob run` trains with, minus Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftjob_api.types import SFTJob
from sftjob_trainer.job_context import JobContext
from sftjob_trainer.reporting import ProgressWriter


def build_local_trainer(job: SFTJob, workdir: Path, threads: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Prepare the data and build the job's SFTTrainer in this process.

    Args:
        job: The SFTJob (numWorkers is taken as 1).
        workdir: Scratch directory (Trainer output, progress.json of the preflight).
        threads: torch threads; None keeps torch's default.

    Returns:
        (trainer, tokenizer, the resolved settings as wire JSON).
    """
    import torch
    from transformers import set_seed

    from sftjob_trainer.methods import apply_method, quantization_config
    from sftjob_trainer.model_loading import load_model, torch_dtype
    from sftjob_trainer.preparation import load_dtype, plan_job, prepare, sequences
    from sftjob_trainer.worker import build_trainer, trainer_arguments

    if threads is not None:
        torch.set_num_threads(threads)
    spec = job.spec
    context = JobContext(job=job, output_uri=str(workdir / "output"), attempt=1)
    writer = ProgressWriter(context.output_uri, 1)
    prepared, tokenizer, model_dir = prepare(context, writer)
    plan, batching = plan_job(context, prepared, tokenizer, model_dir)
    args = {**trainer_arguments(spec, plan, batching, str(workdir / "hf")), "save_strategy": "no"}
    set_seed(spec.hyperparameters.seed)
    dtype = load_dtype(spec, plan)
    model = load_model(model_dir, spec.model, tokenizer, dtype, quantization_config(spec.method, torch_dtype(dtype)),
                       plan.resolved.attention or "sdpa")
    model = apply_method(model, spec.method, str(model_dir), bool(plan.resolved.gradient_checkpointing))
    train_rows, validation_rows = sequences(prepared)
    trainer = build_trainer(spec, model, tokenizer, args, batching, train_rows, validation_rows, [])
    return trainer, tokenizer, plan.resolved.to_wire()
