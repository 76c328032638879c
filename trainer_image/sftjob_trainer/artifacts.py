"""What the output's documents say: the loss plot, the model card and manifest.json, and the eval answers' generation.

Rendering only: `sftjob_trainer.export` decides which files a job's output holds and writes them.
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.layout import ADAPTER_DIR, MODEL_DIR, Artifacts
from sftjob_api.progress import ProgressFile
from sftjob_api.types import SFTJob
from sftjob_trainer.data.mixture import eval_loss_table
from sftjob_trainer.gguf_model import GgufOrigin
from sftjob_trainer.task_metrics import format_score

EVAL_SAMPLES_FILE = "eval_samples.jsonl"
EVAL_REPORT_FILE = "eval_report.md"
LOSS_PLOT_FILE = "loss.png"
MODEL_CARD_FILE = "README.md"
# Prompts generated together for eval_samples.jsonl (left-padded, with the KV cache).
GENERATION_BATCH = 16
# Version of the manifest.json layout; bumped when a reader would have to change.
MANIFEST_VERSION = 1


def describe_bytes(data: bytes) -> dict[str, Any]:
    """The manifest entry `{sha256, size}` of a file's content."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def generate_answers(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                     stop_token_ids: list[int] | None = None, batch_size: int = GENERATION_BATCH) -> list[str]:
    """Greedy answers to tokenised prompts, decoded without special tokens.

    Prompts are generated in batches, left-padded (so every row's next token sits in the last column) and
    with the KV cache: one prompt at a time leaves most of a CPU's or GPU's width idle. Prompts are sorted
    by length first so a batch pads little; answers come back in the order of `prompts`.

    Args:
        model: A causal LM or PeftModel (in eval mode while generating).
        tokenizer: Its tokenizer.
        prompts: Prompt token ids, one list per sample.
        max_new_tokens: Longest answer.
        stop_token_ids: Tokens that end an answer (EOS and end-of-turn markers; default the tokenizer's EOS).
        batch_size: Prompts generated together.

    Returns:
        One answer per prompt.
    """
    import torch

    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: dict[int, str] = {}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = prompts[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stop_token_ids or tokenizer.eos_token_id,
            )
            for row, i in enumerate(batch):
                answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    if was_training:
        model.train()
    return [answers[i] for i in range(len(prompts))]


def loss_plot_png(metrics: list[dict[str, Any]]) -> bytes:
    """loss.png: training and evaluation loss over optimizer steps."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def model_card(job: SFTJob, progress: ProgressFile, output_uri: str, artifacts: Artifacts,
               gguf: GgufOrigin | None = None) -> str:
    """README.md: base model, data stats, method, resolved hyperparameters, final metrics, how to load it.

    Args:
        job: The job.
        progress: Its final progress (resolved settings, data stats, metrics, evaluation).
        output_uri: The job's output directory.
        artifacts: The model directories the output holds (`sftjob_api.layout.artifacts_for`).
        gguf: The GGUF file the base weights came from, if they did.
    """
    spec = job.spec
    resolved = progress.resolved.model_dump(exclude_none=True, by_alias=True) if progress.resolved else {}
    stats = progress.dataset.model_dump(exclude_none=True, by_alias=True) if progress.dataset else {}
    stats.pop("sources", None)  # a mixture's sources get a table of their own
    mixture = eval_loss_table(progress.dataset) if progress.dataset else ""
    mixture = f"{mixture}\n" if mixture else ""
    metrics = progress.metrics.model_dump(exclude_none=True, by_alias=True)
    method = spec.method.model_dump(exclude_none=True, by_alias=True)
    if artifacts.adapter:
        load = (
            "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{ADAPTER_DIR}")  # fetch {output_uri}/{ADAPTER_DIR}\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{ADAPTER_DIR}")\n```\n'
        )
    else:
        load = ""
    if artifacts.model:
        load += (
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{MODEL_DIR}")  # fetch {output_uri}/{MODEL_DIR}\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{MODEL_DIR}")\n```\n'
        )

    def table(data: dict[str, Any]) -> str:
        rows = "\n".join(f"| {k} | {json.dumps(v) if isinstance(v, dict | list) else v} |" for k, v in data.items())
        return "| field | value |\n|---|---|\n" + rows + "\n"

    evaluation = progress.evaluation
    forgetting = evaluation.forgetting if evaluation else None
    scores = ""
    if evaluation is not None and evaluation.metrics:
        rows = "\n".join(f"| {m.name} | {format_score(m.name, m.base)} | {format_score(m.name, m.tuned)} |"
                         for m in evaluation.metrics)
        scores = (f"Held-out task metrics on {evaluation.metrics[0].samples} generated answers:\n\n"
                  f"| metric | base | fine-tuned |\n|---|---|---|\n{rows}\n\n")
    warning = forgetting_text = ""
    if forgetting is not None:
        reference = spec.evaluation.reference.uri if spec.evaluation.reference else "the reference set"
        forgetting_text = (f"## Forgetting\n\nMean token loss on {forgetting.rows} rows of `{reference}` before and "
                           f"after training (the ratio is fine-tuned over base): {forgetting.summary()}.\n\n")
        if forgetting.exceeded:
            warning = (f"> **Degraded ({ErrorCode.FORGETTING_EXCEEDED})**: {forgetting.summary()}. "
                       "The outputs were kept "
                       "(`evaluation.onForgetting: degrade`): check what the model lost before using it.\n\n")
    distilled = progress.distillation
    if distilled is not None and spec.distillation is not None:
        teacher = spec.distillation.teacher
        origin_data = (f"The training data was generated by the teacher `{teacher.model}` ({teacher.endpoint}): "
                       f"{distilled.kept} of {distilled.responses} answers to {distilled.prompts} prompts kept by the "
                       f"filters, in `{distilled.uri}` (stats in `data/distilled.stats.json`).\n\n")
    else:
        origin_data = ""
    origin = (f"The base weights come from the GGUF file `{gguf.file}` ({gguf.quantization}, sha256 `{gguf.sha256}`), "
              "dequantised for training; an adapter applies to the base loaded with "
              f'`AutoModelForCausalLM.from_pretrained(<dir>, gguf_file="{gguf.file}")`.\n\n') if gguf else ""
    return (
        f"---\nbase_model: {spec.model.source}\nlibrary_name: {'peft' if artifacts.adapter else 'transformers'}\n"
        f"tags: [sftjob, sft, {spec.method.type}]\n---\n\n"
        f"# {job.name}\n\nSupervised fine-tuning of `{spec.model.source}`"
        f"{f' (revision {spec.model.revision})' if spec.model.revision else ''} with **{spec.method.type}**, "
        f"trained by sftjob in {progress.step} optimizer steps.\n\n{warning}{origin}"
        f"## Data\n\n{origin_data}"
        f"Training {'file' if spec.dataset.train.uri else 'data'} `{spec.dataset.train.describe()}`.\n\n"
        f"{table(stats)}\n{mixture}"
        f"## Method\n\n{table(method)}\n"
        f"## Resolved hyperparameters\n\n{table(resolved)}\n"
        f"## Final metrics\n\n{table(metrics)}\n"
        f"{scores}The evaluation report is `{EVAL_REPORT_FILE}` (answers in `{EVAL_SAMPLES_FILE}`, loss curves in "
        f"`{LOSS_PLOT_FILE}`).\n\n"
        f"{forgetting_text}"
        f"## How to load it\n\n{load}"
    )


def versions() -> dict[str, str]:
    """Versions of the stack that trained the model."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("sftjob", "torch", "transformers", "peft", "trl", "ray", "accelerate"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def manifest(job: SFTJob, progress: ProgressFile, files: dict[str, dict[str, Any]], base_revision: str | None,
             final_metrics: dict[str, Any], gguf: GgufOrigin | None = None,
             serving: dict[str, Any] | None = None) -> bytes:
    """manifest.json: sha256 and size of every artifact, resolved settings, dataset digest and stats, versions.

    A base model converted from a GGUF file is recorded with that file's name, sha256 and quantisation type.
    `evaluation` holds the evaluation (`status.evaluation`); `servingCheck` whether the exported directory,
    reloaded as a server loads it, renders the trained prompts and stops (`sftjob_trainer.serving`);
    `degraded` lists why a kept output is marked (empty when it is not). `distillation` holds the stats of the
    generated training data (`spec.distillation`; `data/distilled.jsonl` is then among the files), else null.
    """
    forgetting = progress.evaluation.forgetting if progress.evaluation else None
    degraded = ([{"reason": ErrorCode.FORGETTING_EXCEEDED, "message": forgetting.summary()}]
                if forgetting is not None and forgetting.exceeded else [])
    base_model: dict[str, Any] = {"source": job.spec.model.source, "revision": base_revision}
    if gguf is not None:
        base_model["gguf"] = gguf.to_wire()
    body = {
        "manifestVersion": MANIFEST_VERSION,
        "job": {"name": job.name, "namespace": job.metadata.namespace},
        # The spec the weights were trained with (secrets only by reference): `sftjob eval` re-runs its evaluation.
        "spec": job.spec.to_wire(),
        "baseModel": base_model,
        "method": job.spec.method.type,
        "resolved": progress.resolved.to_wire() if progress.resolved else None,
        "dataset": progress.dataset.to_wire() if progress.dataset else None,
        "distillation": progress.distillation.to_wire() if progress.distillation else None,
        "metrics": final_metrics,
        "evaluation": progress.evaluation.to_wire() if progress.evaluation else None,
        "servingCheck": serving,
        "degraded": degraded,
        "steps": progress.step,
        "versions": versions(),
        "files": dict(sorted(files.items())),
    }
    return json.dumps(body, indent=2).encode()

