"""`sftjob eval` and `sftjob chat`: the fine-tuned model of an existing output, loaded from the output alone.

The output's manifest.json holds the spec it was trained with; eval_samples.jsonl holds the held-out
prompts (with the token ids training rendered). Re-evaluation generates both models' answers again,
scores them, runs the lm-eval tasks, asks the judge and rewrites eval_report.md.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.layout import ADAPTER_DIR, MANIFEST_FILE, MODEL_DIR
from sftjob_api.types import EvaluationStatus, ForgettingResult, ModelSpec, SFTJobSpec
from sftjob_trainer import object_store
from sftjob_trainer.artifacts import EVAL_REPORT_FILE, EVAL_SAMPLES_FILE, LOSS_PLOT_FILE, generate_answers
from sftjob_trainer.evaluation import Answers, Sample, evaluate, read_samples
from sftjob_trainer.trainer_error import TrainerError


@dataclass(frozen=True)
class TrainedOutput:
    """An output directory's spec, samples and weights, fetched to local disk."""

    name: str
    """The job's name."""
    spec: SFTJobSpec
    """The spec the weights were trained with (manifest.json)."""
    samples: list[Sample]
    """The held-out prompts of eval_samples.jsonl."""
    weights: Path
    """The local adapter/ or model/ directory."""
    adapter: bool
    """Whether `weights` is a PEFT adapter (applied to the spec's base model)."""
    forgetting: ForgettingResult | None
    """The forgetting figure training measured (re-evaluation does not score the reference set again)."""


def fetch(output: str, workdir: Path) -> TrainedOutput:
    """Read an output's manifest and samples, and fetch its weights into `workdir`.

    Raises:
        TrainerError: `InvalidSpec` naming the missing file when `output` is not a finished sftjob output.
    """
    try:
        manifest = json.loads(object_store.read_bytes(object_store.join(output, MANIFEST_FILE)))
    except (object_store.StorageError, FileNotFoundError, ValueError) as err:
        raise TrainerError(ErrorCode.INVALID_SPEC,
                           f"{object_store.join(output, MANIFEST_FILE)}: not a finished sftjob output "
                           f"({err}); point at the job's output directory (where manifest.json is)", "OUTPUT") from None
    if "spec" not in manifest:
        raise TrainerError(ErrorCode.INVALID_SPEC,
                           f"{object_store.join(output, MANIFEST_FILE)}: written by an older sftjob without "
                           "the job's spec; run the job again to re-evaluate it", "OUTPUT")
    spec = SFTJobSpec.model_validate(manifest["spec"])
    files = set(manifest.get("files", {}))
    adapter = any(name.startswith(f"{ADAPTER_DIR}/") for name in files)
    full = any(name.startswith(f"{MODEL_DIR}/") for name in files)
    # A merged or full model serves on its own; an adapter needs the base, which re-evaluation loads anyway.
    use = MODEL_DIR if full else ADAPTER_DIR
    weights = object_store.download_dir(object_store.join(output, use), workdir / use)
    samples_text = ""
    if EVAL_SAMPLES_FILE in files:
        samples_text = object_store.read_bytes(object_store.join(output, EVAL_SAMPLES_FILE)).decode()
    samples, _ = read_samples(samples_text)
    forgetting = (manifest.get("evaluation") or {}).get("forgetting")
    return TrainedOutput(manifest["job"]["name"], spec, samples, weights, adapter and not full,
                         ForgettingResult.model_validate(forgetting) if forgetting else None)


def load_base(source: ModelSpec) -> tuple[Any, Any]:
    """A base model and its tokenizer, loaded as training loads them (fp32 on CPU)."""
    from sftjob_trainer.model_loading import load_model, load_tokenizer, resolve_model_dir

    model_dir = resolve_model_dir(source)
    tokenizer = load_tokenizer(model_dir, source)
    return load_model(model_dir, source, tokenizer, "fp32"), tokenizer


def load_tuned(trained: TrainedOutput) -> tuple[Any, Any]:
    """The fine-tuned model and the tokenizer exported with it, as a server loads them from the output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(trained.weights))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not trained.adapter:
        return AutoModelForCausalLM.from_pretrained(str(trained.weights)), tokenizer
    from peft import PeftModel

    base, _ = load_base(trained.spec.model)
    return PeftModel.from_pretrained(base, str(trained.weights)), tokenizer


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The exported stop tokens: generation_config's EOS list (sftjob writes end-of-turn markers there)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, int):
        return [eos]
    return list(eos) if eos else [tokenizer.eos_token_id]


def reevaluate(output: str, against: str | None = None, report: Path | None = None) -> tuple[EvaluationStatus, str]:
    """Evaluate an output's fine-tuned model against its base (or `against`) again and write the report.

    Args:
        output: The job's output directory or `s3://` prefix.
        against: Another base model source to compare with (a path, `s3://`, `hf://` or a `.gguf` file).
        report: Where to write eval_report.md (default: into the output, replacing the old one).

    Returns:
        The evaluation and where the report was written.
    """
    from sftjob_trainer.eval_report import render

    with tempfile.TemporaryDirectory(prefix="sftjob-eval-") as tmp:
        trained = fetch(output, Path(tmp))
        evaluation = trained.spec.evaluation
        if not trained.samples:
            raise TrainerError(ErrorCode.INVALID_SPEC,
                               f"{object_store.join(output, EVAL_SAMPLES_FILE)} holds no held-out prompts "
                               "(the job ran without validation data or with evaluation.numSamples: 0)", "OUTPUT")
        started = time.monotonic()
        tuned_model, tokenizer = load_tuned(trained)
        stops = stop_ids(tuned_model, tokenizer)
        prompts = [s.prompt_ids or tokenizer.encode(s.prompt, add_special_tokens=False) for s in trained.samples]
        tuned = generate_answers(tuned_model, tokenizer, prompts, evaluation.max_new_tokens, stops)
        tuned_scores = _tasks(tuned_model, tokenizer, trained.spec, Path(tmp) / "tuned")
        del tuned_model
        base_source = (trained.spec.model if against is None
                       else ModelSpec(source=against, trust_remote_code=trained.spec.model.trust_remote_code))
        base_model, _ = load_base(base_source)
        base = generate_answers(base_model, tokenizer, prompts, evaluation.max_new_tokens, stops)
        base_scores = _tasks(base_model, tokenizer, trained.spec, Path(tmp) / "base")
        from sftjob_trainer.benchmarks import compare

        status = evaluate(evaluation, trained.samples, Answers(base, tuned),
                          compare(evaluation.tasks, base_scores, tuned_scores),
                          trained.forgetting if against is None else None, time.monotonic() - started)
        target = str(report) if report is not None else object_store.join(output, EVAL_REPORT_FILE)
        text = render(trained.name, evaluation, status, trained.samples, Answers(base, tuned),
                      LOSS_PLOT_FILE if report is None else None, None)
        object_store.write_bytes(target, text.encode())
    return status, target


def _tasks(model: Any, tokenizer: Any, spec: SFTJobSpec, workdir: Path) -> dict[str, Any]:
    if not spec.evaluation.tasks:
        return {}
    from sftjob_trainer.benchmarks import run_tasks

    workdir.mkdir(parents=True, exist_ok=True)
    return run_tasks(model, tokenizer, spec.evaluation.tasks, 8, spec.evaluation.max_new_tokens, workdir)


def chat_reply(model: Any, tokenizer: Any, history: list[dict[str, str]], max_new_tokens: int,
               streamer: Any = None) -> str:
    """The model's next assistant turn after `history`, rendered with the exported chat template."""
    import torch

    ids = tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    input_ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=ids["attention_mask"], max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    return str(tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)).strip()


__all__ = ["TrainedOutput", "chat_reply", "fetch", "load_tuned", "reevaluate", "stop_ids"]
