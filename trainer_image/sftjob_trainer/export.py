"""Every artifact of a job's output: which files it holds, and the order they are written in.

Rank 0 exports the weights (`export_weights`): `adapter/` and/or `model/` as `sftjob_api.layout.artifacts_for`
says, each with the tokenizer, the chat template and the generation config training used, then checks that the
export serves as trained. The driver adds the rest once rank 0 returned (`export_results`): eval_samples.jsonl,
loss.png (and eval_metrics.png), eval_report.md, README.md (the model card), and manifest.json last, with the
sha256 of every file: a reader trusts an output only once manifest.json exists. What the documents say is
rendered by `sftjob_trainer.artifacts` and `sftjob_trainer.eval_report`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftjob_api.layout import ADAPTER_DIR, MANIFEST_FILE, MODEL_DIR, artifacts_for
from sftjob_api.progress import ProgressFile
from sftjob_api.types import EvaluationStatus, Metrics, SFTJobSpec
from sftjob_trainer import object_store
from sftjob_trainer.artifacts import (
    EVAL_REPORT_FILE,
    EVAL_SAMPLES_FILE,
    LOSS_PLOT_FILE,
    MODEL_CARD_FILE,
    describe_bytes,
    loss_plot_png,
    manifest,
    model_card,
)
from sftjob_trainer.eval_report import METRIC_PLOT_FILE, metric_curves, metric_plot_png
from sftjob_trainer.eval_report import render as render_report
from sftjob_trainer.evaluation import Sample, samples_jsonl
from sftjob_trainer.job_context import JobContext

if TYPE_CHECKING:
    from sftjob_trainer.worker_config import Rank0Result, WorkerConfig

log = logging.getLogger(__name__)

Files = dict[str, dict[str, Any]]
"""`{path relative to the output: {sha256, size}}`: the `files` of manifest.json."""


def publish_dir(local: Path, uri: str) -> Files:
    """Upload every file under `local` to `uri` and return `{path relative to local: {sha256, size}}`."""
    entries: Files = {}
    for name in object_store.upload_dir(local, uri):
        path = local / name
        entries[name] = {"sha256": object_store.sha256_file(path), "size": path.stat().st_size}
    return entries


def publish_bytes(data: bytes, uri: str) -> dict[str, Any]:
    """Write one file and return its `{sha256, size}`."""
    object_store.write_bytes(uri, data)
    return describe_bytes(data)


# ------------------------------------------------------------------------------------------ rank 0: the weights


def export_weights(config: WorkerConfig, model: Any, tokenizer: Any, model_dir: Path,
                   tmp: Path) -> tuple[Files, dict[str, Any] | None]:
    """Save the trained weights (adapter/ and/or model/) into the output and check they serve as trained (rank 0).

    Args:
        config: The worker config (the job, the chat template and stop tokens training used, the serving samples).
        model: The trained model (PeftModel for adapter methods).
        tokenizer: The tokenizer (saved next to the weights).
        model_dir: The base model directory (QLoRA merges into the unquantised base read from it).
        tmp: A scratch directory.

    Returns:
        The files written, and the serving check (`servingCheck` of manifest.json; None when no weights were saved).
    """
    from sftjob_trainer.serving import prepare_for_export, serving_check, write_generation_config

    spec, out = config.spec, config.context.output_uri
    artifacts = artifacts_for(spec)
    files: Files = {}
    # The template and stop tokens training used go with the weights: a server renders and stops as trained.
    template, stops = config.export_template, config.stop_token_ids
    prepare_for_export(model, tokenizer, template, stops)
    served: tuple[Path, Path | None] | None = None  # (directory, base for an adapter) a server would load
    if artifacts.adapter:
        adapter = tmp / ADAPTER_DIR
        model.save_pretrained(str(adapter))
        tokenizer.save_pretrained(str(adapter))
        write_generation_config(model, adapter)  # PEFT's save_pretrained writes none
        published = publish_dir(adapter, object_store.join(out, ADAPTER_DIR))
        files.update({f"{ADAPTER_DIR}/{k}": v for k, v in published.items()})
        served = (adapter, model_dir)
    if artifacts.model:
        full = model
        if spec.method.is_adapter:
            full = merged_model(model, spec, tokenizer, model_dir, tmp, config.load_dtype)
            prepare_for_export(full, tokenizer, template, stops)  # QLoRA's merge reloads the base from disk
        files.update(_save_full(full, tokenizer, tmp, out))
        served = (tmp / MODEL_DIR, None)
    if served is None:
        return files, None
    import torch

    check = serving_check(served[0], config.serving_samples, spec.evaluation.max_new_tokens, served[1],
                          stop_token_ids=stops, device="cuda" if torch.cuda.is_available() else "cpu")
    if not check.passed:
        log.warning("the exported model does not serve as trained: %s", check.to_wire())
    return files, check.to_wire()


def merged_model(model: Any, spec: SFTJobSpec, tokenizer: Any, model_dir: Path, tmp: Path, dtype: str) -> Any:
    """The base with the LoRA adapter merged; QLoRA merges into the unquantised base."""
    if spec.method.type != "qlora":
        return model.merge_and_unload()
    from peft import PeftModel

    from sftjob_trainer.model_loading import load_model

    adapter = tmp / "qlora-adapter"
    model.save_pretrained(str(adapter))
    base = load_model(model_dir, spec.model, tokenizer, dtype)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def _save_full(model: Any, tokenizer: Any, tmp: Path, out: str) -> Files:
    local = tmp / MODEL_DIR
    model.save_pretrained(str(local), safe_serialization=True)
    tokenizer.save_pretrained(str(local))
    return {f"{MODEL_DIR}/{k}": v for k, v in publish_dir(local, object_store.join(out, MODEL_DIR)).items()}


# ---------------------------------------------------------------------------- the driver: around the weights


def export_results(ctx: JobContext, progress: ProgressFile, evaluation: EvaluationStatus, rank0: Rank0Result,
                   samples: list[Sample], model_dir: Path) -> Files:
    """Write the evaluation, the model card and manifest.json (last) next to what rank 0 saved.

    The files: eval_samples.jsonl, eval_report.md, loss.png (and eval_metrics.png), README.md, manifest.json;
    the manifest also lists data/distilled.jsonl and its stats and rejects when the job distilled its data.

    Args:
        ctx: The job context.
        progress: The job's final progress (phase Exporting, with `evaluation`).
        evaluation: The scored evaluation (`sftjob_trainer.evaluation.evaluate`).
        rank0: What rank 0 returned: its files, metrics, answers and serving check.
        samples: The held-out prompts both models answered.
        model_dir: The base model directory (a GGUF origin is recorded in the card and the manifest).

    Returns:
        Every file manifest.json lists.
    """
    from sftjob_trainer.gguf_model import origin_of

    spec = ctx.job.spec
    files = dict(rank0.files)

    def publish(name: str, data: bytes) -> None:
        files[name] = publish_bytes(data, object_store.join(ctx.output_uri, name))

    publish(EVAL_SAMPLES_FILE, samples_jsonl(samples, rank0.answers, spec.evaluation))
    publish(LOSS_PLOT_FILE, loss_plot_png(rank0.metrics))
    curves = metric_curves(rank0.metrics)
    if curves:
        publish(METRIC_PLOT_FILE, metric_plot_png(curves))
    publish(EVAL_REPORT_FILE, render_report(ctx.job.name, spec.evaluation, evaluation, samples, rank0.answers,
                                            LOSS_PLOT_FILE, METRIC_PLOT_FILE if curves else None,
                                            progress.dataset).encode())
    gguf = origin_of(model_dir)
    publish(MODEL_CARD_FILE, model_card(ctx.job, progress, ctx.output_uri, artifacts_for(spec), gguf).encode())
    if progress.distillation is not None:  # data/distilled.jsonl, its rejects and stats
        from sftjob_trainer.distill.driver_step import manifest_files

        files.update(manifest_files(ctx.output_uri, progress.distillation))
    body = manifest(ctx.job, progress, files, spec.model.revision, _final_metrics(progress.metrics, rank0.metrics),
                    gguf, rank0.serving)
    object_store.write_bytes(object_store.join(ctx.output_uri, MANIFEST_FILE), body)  # last: it vouches for the rest
    return files


def _final_metrics(latest: Metrics, records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = latest.to_wire()
    evals = [r for r in records if "eval_loss" in r]
    if evals:
        out["evalPerplexity"] = math.exp(min(evals[-1]["eval_loss"], 50.0))  # exp(50) bounds a diverged run
    return out
