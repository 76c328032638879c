"""The driver's preflight: the model and tokenizer load, the data is prepared once, the plan is resolved.

Everything here runs before any Ray Train worker starts, so bad input fails fast and without a cluster.
`sftjob_trainer.in_process` builds the same trainer from it without Ray.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sftjob_api.codes import ErrorCode
from sftjob_api.types import SFTJobSpec
from sftjob_trainer import object_store
from sftjob_trainer.device_defaults import DeviceDefaults, device_defaults
from sftjob_trainer.evaluation import Sample
from sftjob_trainer.hparams import Device, Plan, precision, resolve
from sftjob_trainer.job_context import JobContext
from sftjob_trainer.methods import check_device
from sftjob_trainer.reporting import ProgressWriter
from sftjob_trainer.trainer_error import TrainerError

if TYPE_CHECKING:
    from sftjob_trainer.serving import ServingSample

Batching = Literal["packed", "length_grouped"]
"""How the Trainer batches examples: `packed` (padding-free rows) or `length_grouped` (padded batches)."""
# Offset of the eval-sample choice from the job seed, so it does not mirror the validation split's shuffle.
SAMPLE_SEED_OFFSET = 1
# Held-out conversations the serving check renders and generates for: it proves the export, not the model.
SERVING_PROMPTS = 4


def _data_error(err: Exception) -> TrainerError:
    code = getattr(err, "code", ErrorCode.INVALID_DATASET)
    file, line = getattr(err, "file", None), getattr(err, "line", None)
    where = f"{file}:{line}" if file and line else file or getattr(err, "field", None) or "spec.dataset"
    if code == object_store.NOT_FOUND:
        code = ErrorCode.DATASET_UNREADABLE
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
    except object_store.StorageError as err:
        raise _data_error(err) from None
    if not prepared.train:
        raise TrainerError(ErrorCode.PREFLIGHT_FAILED, "no training examples are left after filtering",
                           "spec.dataset.train")
    return prepared, tokenizer, model_dir


def _model_limit(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def count_params(model_dir: Path, spec: SFTJobSpec) -> int:
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


def export_template(spec: SFTJobSpec, prepared: Any, tokenizer: Any) -> str | None:
    """The Jinja chat template the job trained with, for the exported tokenizer (None for plain text rows)."""
    from sftjob_trainer.serving import export_chat_template

    kind = ("text" if prepared.report.format == "text"
            else "prompt_completion" if prepared.chat_template == "none" else "chat")
    return export_chat_template(spec.dataset.chat_template, tokenizer, kind)


def serving_samples(prepared: Any) -> list[ServingSample]:
    """Held-out conversations for the serving check (untruncated validation rows: `Example.served`)."""
    from sftjob_trainer.serving import ServingSample

    served = [(json.loads(e.served), e.prompt_ids) for e in prepared.validation if e.served]
    return [ServingSample(s["messages"], list(ids), s["tools"]) for s, ids in served[:SERVING_PROMPTS]]


def plan_job(ctx: JobContext, prepared: Any, tokenizer: Any, model_dir: Path) -> tuple[Plan, Batching]:
    """Resolve hyperparameters and the batching strategy.

    Returns:
        (plan, batching).
    """
    spec = ctx.job.spec
    cuda = spec.compute.gpus_per_worker > 0
    check_device(spec.method, cuda)
    check_spec(spec)
    # Prompt tuning prepends virtual tokens to every row, so one packed row would share one prompt.
    batching: Batching = ("packed" if spec.dataset.packing and spec.method.type != "prompt_tuning"
                          else "length_grouped")
    rows, _ = sequences(prepared)
    device = Device(cuda=cuda, bf16=cuda)
    choices = device_choices(spec, device, batching)
    plan = resolve(spec, device, count_params(model_dir, spec), len(rows),
                   max_seq_length=prepared.max_seq_length, batching=batching, chat_template=prepared.chat_template,
                   attention=choices.attention, kernels=choices.kernels)
    return plan, batching


def device_choices(spec: SFTJobSpec, device: Device, batching: Batching) -> DeviceDefaults:
    """The attention implementation and fused kernels for this device (`sftjob_trainer.device_defaults`).

    Packed rows use per-example (varlen) attention: attention work is the sum of the squared example
    lengths instead of the squared row length, and no mask is materialised (bench/RESULTS.md measures
    it against the stock masked SDPA) — flash-attention's varlen kernel on CUDA when installed, else our
    varlen SDPA. Padded batches use stock SDPA with their padding mask. Liger's kernels on CUDA when
    installed. Packages are looked up in the driver's environment: it runs from the workers' image.
    """
    return device_defaults(device.cuda, batching, precision(spec, device))


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


def check_spec(spec: SFTJobSpec) -> None:
    """Combinations the API accepts but training cannot do."""
    if spec.output.merge_adapter and spec.method.type == "prompt_tuning":
        raise TrainerError(ErrorCode.INVALID_SPEC,
                           "output.mergeAdapter: prompt tuning has no weights to merge into the base",
                           "spec.output.mergeAdapter")


def load_dtype(spec: SFTJobSpec, plan: Plan) -> str:
    """The dtype the base weights load in: model.dtype, else the training precision's (fp32 keeps AMP masters)."""
    if spec.model.dtype != "auto":
        return str(spec.model.dtype)
    return "fp32" if plan.resolved.precision in ("fp32", "fp16") else "bf16"
