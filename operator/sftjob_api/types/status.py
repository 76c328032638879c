"""The SFTJob resource: spec and status, the single source of truth of the API.

The CRD (`crds/sftjob.yaml`), the reference docs (`docs/sftjob-reference.md`), the operator
and the trainer all read these types. Defaults follow established SFT practice: learning rate
~2e-4 for adapters and 1e-5..5e-5 for full fine-tuning, a global batch of 8-32, 3 epochs for
small data, cosine decay with 3% warmup and weight decay 0.01.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from sftjob_api.base import (
    MAX_NAME,
    ApiModel,
    CelRule,
    ModelUri,
    Name,
    StorageUri,
    Text,
    check_storage_uri,
    matches,
)

GROUP = "sftjob.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SFTJob"
PLURAL = "sftjobs"
SINGULAR = "sftjob"
SHORT_NAMES = ("sft",)

# The SFTJob name becomes the `sftjob.dev/name` label on every child; label values are at most 63.
MAX_JOB_NAME = 63
# Attempts and checkpoints kept in status; older entries are dropped (the status must stay small).
MAX_HISTORY = 10

# Kubernetes resource quantity, e.g. "32Gi", "500M", "1.5".
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Quantity = Annotated[
    str,
    Field(max_length=32, json_schema_extra={"pattern": _QUANTITY}),
    matches(_QUANTITY, "a Kubernetes quantity such as 32Gi or 500M"),
]
DnsLabel = Annotated[
    str,
    Field(max_length=MAX_JOB_NAME, json_schema_extra={"pattern": _DNS_LABEL}),
    matches(_DNS_LABEL, "a DNS-1123 label (lowercase letters, digits and '-', starting and ending alphanumeric)"),
]
_JINJA = re.compile(r"\{[{%#]")
NAMED_CHAT_TEMPLATES = ("chatml", "llama3", "zephyr")
# GGUF files (llama.cpp's format): a source with this suffix, or a file named by model.ggufFile.
GGUF_SUFFIX = ".gguf"
# A file in a repository: path segments that start with a letter, digit or '_' (so never '..').
_GGUF_FILE = r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*\.gguf$"
GgufFile = Annotated[
    str,
    Field(max_length=MAX_NAME, json_schema_extra={"pattern": _GGUF_FILE}),
    matches(_GGUF_FILE, "a .gguf file in the repository, e.g. model.Q4_K_M.gguf or Q4_K_M/model.gguf"),
]


class SecretReference(ApiModel):
    """A Secret in the SFTJob's namespace whose keys are exposed to the trainer as environment variables."""

    name: Name
    """Name of the Secret. Its keys become environment variables of the trainer pods (e.g.
    `HF_TOKEN`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`). Values are never
    copied into the RayJob, status, events or logs."""


# ---------------------------------------------------------------------------------------------- model


class ModelSpec(ApiModel):
    """The base model to fine-tune."""

    cel_rules = (
        CelRule(
            rule="!has(self.ggufFile) || self.source.startsWith('hf://')",
            message="ggufFile names a file in an hf:// repository; for a local or s3:// GGUF file, point source at it",
            field_path=".ggufFile",
        ),
    )

    source: ModelUri
    """Where the base model is: `hf://org/name[@revision]` (Hugging Face Hub), `s3://bucket/prefix`
    (a directory written by `save_pretrained`), or a filesystem path visible to the trainer. A path or
    `s3://` key ending in `.gguf` is a GGUF file (llama.cpp, Ollama): it is dequantised and fine-tuned
    like any other base model."""

    gguf_file: GgufFile | None = None
    """The GGUF file to load from the `hf://` repository in `source` (e.g. `SmolLM2-135M-Instruct.Q4_1.gguf`).
    The weights are dequantised to the training precision; full and merged exports are safetensors."""

    revision: Name | None = None
    """Hub revision (branch, tag or commit). Overrides an `@revision` suffix on `source`."""

    secret_ref: SecretReference | None = None
    """Secret with credentials to read the model (`HF_TOKEN` or AWS keys)."""

    trust_remote_code: bool = False
    """Run Python code shipped with the model repository. Off by default: it executes arbitrary code."""

    allow_unsafe_weights: bool = False
    """Load pickle-based weights (`*.bin`, `*.pt`). Off by default: only safetensors are loaded,
    since unpickling can execute arbitrary code."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Precision the base weights are loaded in. `auto`: bfloat16 on GPUs that support it, else float32."""

    @model_validator(mode="after")
    def _gguf_file_in_a_repository(self) -> ModelSpec:
        if self.gguf_file is not None and not self.source.startswith("hf://"):
            raise ValueError("ggufFile: names a file in an hf:// repository; for a local or s3:// GGUF file, "
                             "point source at the .gguf file itself")
        return self

    @property
    def is_gguf(self) -> bool:
        """Whether the base model is a GGUF file (`ggufFile` in a repository, or a source ending in `.gguf`)."""
        return self.gguf_file is not None or self.source.lower().endswith(GGUF_SUFFIX)


# -------------------------------------------------------------------------------------------- dataset


class DataSource(ApiModel):
    """A dataset file."""

    uri: StorageUri
    """`s3://bucket/key` or a filesystem path of the file."""

    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    """File format. `auto` uses the file extension (`.jsonl`, `.json`, `.parquet`, `.csv`)."""


# Sources of one training mixture: the status lists each, so the list stays short.
MAX_SOURCES = 32
_GLOB_CHARS = frozenset("*?[")


def is_glob(uri: str) -> bool:
    """Whether a dataset URI is a glob over shards (`*`, `?` or `[...]` in it)."""
    return any(c in _GLOB_CHARS for c in uri)


def _default_source_name(uri: str) -> str:
    """A short name for a source: its file name without extension, or the folder of a glob."""
    parts = [p for p in uri.removeprefix("s3://").split("/") if p]
    for part in reversed(parts):
        literal = part
        for i, char in enumerate(part):
            if char in _GLOB_CHARS:
                literal = part[:i]
                break
        literal = re.sub(r"[^a-z0-9]+", "-", literal.split(".", 1)[0].lower()).strip("-")[:MAX_JOB_NAME].strip("-")
        if literal:
            return literal
    return "source"


class MixtureSource(ApiModel):
    """One source of a training mixture: a file or a glob over shards, and its share of the mixture."""

    cel_rules = (
        CelRule(
            rule="!(has(self.weight) && has(self.samples))",
            message="set weight (a proportion of the mixture) or samples (an exact count), not both",
            field_path=".samples",
        ),
    )

    name: DnsLabel | None = None
    """A short name for the dataset stats and the per-source evaluation loss (default: the file name without
    its extension, or the last folder before a glob). Unique within the mixture."""

    uri: StorageUri
    """A file (`s3://bucket/key` or a filesystem path), or a glob over shards (`s3://bucket/data/*.parquet`,
    `dir/part-*.jsonl`; `*` and `?` stay within one path segment, `**` crosses folders). Shards are listed,
    then read one at a time, in name order."""

    format: Literal["auto", "jsonl", "json", "parquet", "csv"] | None = None
    """File format of this source (default: `train.format`, whose `auto` uses each file's extension)."""

    weight: float | None = Field(default=None, gt=0, le=1_000_000)
    """Relative proportion of this source among the weighted sources. The weighted sources together keep the
    size they have (the sum of their usable examples) and share it in proportion to their weights: a source
    smaller than its share is repeated (each example the same number of times, ±1), a larger one is sampled
    without replacement. Neither `weight` nor `samples`: every example of the source, once."""

    samples: int | None = Field(default=None, ge=1, le=1_000_000_000)
    """Exactly this many training examples from this source (before the length policy, which may drop
    overlong ones): sampled without replacement, or repeated when the source has fewer. Shards are read in a
    seeded order only until enough rows are read, so a small sample of a large glob reads a few shards."""

    data_schema: Literal["auto", "prompt_completion", "messages", "alpaca", "sharegpt", "text"] | None = Field(
        default=None, alias="schema"
    )
    """Row layout of this source (default: `dataset.schema`)."""

    column_map: dict[str, Name] | None = Field(default=None, max_length=32)
    """Column renames for this source (default: `dataset.columnMap`): `{fileColumn: expectedColumn}`."""

    @field_validator("weight", mode="before")
    @classmethod
    def _positive_weight(cls, value: Any) -> Any:
        # One message that says what to do, instead of pydantic's bound or type error.
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                             and 0 < value <= 1_000_000):
            return value
        raise ValueError(f"must be a positive number up to 1000000 (a relative proportion such as 0.3, or 3 "
                         f"for three times another source's 1), got {value!r}; to leave a source out, remove it")

    @field_validator("samples", mode="before")
    @classmethod
    def _positive_samples(cls, value: Any) -> Any:
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1_000_000_000):
            return value
        raise ValueError(f"must be a whole number of examples, at least 1, got {value!r}; for a proportion use "
                         "weight instead")

    @model_validator(mode="before")
    @classmethod
    def _no_chat_template(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("chatTemplate" in data or "chat_template" in data):
            raise ValueError(
                "chatTemplate: is set once for the whole dataset (dataset.chatTemplate), not per source: the "
                "model is trained and exported with one chat template, so every source is rendered with it; map "
                "each source to a common layout with its own schema and columnMap instead"
            )
        return data

    @model_validator(mode="after")
    def _weight_or_samples(self) -> MixtureSource:
        if self.weight is not None and self.samples is not None:
            raise ValueError("samples: set weight (a proportion of the mixture) or samples (an exact count), "
                             "not both")
        return self


class TrainingData(ApiModel):
    """The training data: one file, a glob over shards, or a weighted mixture of sources."""

    cel_rules = (
        CelRule(
            rule="has(self.uri) != has(self.sources)",
            message="set uri (one file or a glob over shards) or sources (a mixture), exactly one of them",
            field_path=".sources",
        ),
        CelRule(
            rule="!has(self.sources) || self.sources.all(s, has(s.name) ? "
            "self.sources.exists_one(t, has(t.name) ? t.name == s.name : false) : true)",
            message="source names must be unique within the mixture",
            field_path=".sources",
        ),
    )

    uri: StorageUri | None = None
    """The training file: `s3://bucket/key` or a filesystem path, or a glob over shards
    (`s3://bucket/data/*.parquet`, read one shard at a time). Mutually exclusive with `sources`."""

    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    """File format. `auto` uses the file extension (`.jsonl`, `.json`, `.parquet`, `.csv`). With `sources`,
    the format of every source that sets none."""

    sources: list[MixtureSource] | None = Field(default=None, min_length=1, max_length=MAX_SOURCES)
    """A mixture: several files or globs, each with a `weight` (relative proportion) or a `samples` count.
    The mixture is drawn with `hyperparameters.seed` (the same seed gives the same examples in the same order)
    and shuffled; its realised proportions appear in `status.dataset.sources`. Mutually exclusive with `uri`."""

    @model_validator(mode="after")
    def _one_kind(self) -> TrainingData:
        if (self.uri is None) == (self.sources is None):
            raise ValueError("sources: set uri (one file or a glob over shards) or sources (a mixture), "
                             "exactly one of them")
        names = [s.name for s in self.sources or () if s.name]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"sources: source names must be unique within the mixture; repeated: "
                             f"{', '.join(repeated)}")
        return self

    def mixture(self) -> list[MixtureSource]:
        """The sources, with names and formats resolved; one source (no weight) for `uri`."""
        if self.sources is None:
            return [MixtureSource(name=_default_source_name(self.uri or ""), uri=self.uri or "", format=self.format)]
        taken: set[str] = {s.name for s in self.sources if s.name}
        out = []
        for source in self.sources:
            name = source.name
            if name is None:
                base = _default_source_name(source.uri)
                name, n = base, 1
                while name in taken:
                    n += 1
                    name = f"{base}-{n}"
                taken.add(name)
            out.append(source.model_copy(update={"name": name, "format": source.format or self.format}))
        return out

    def describe(self) -> str:
        """One line for humans: the file or glob, or the sources with their weights or counts."""
        if self.sources is None:
            return str(self.uri)
        parts = []
        for source in self.mixture():
            share = (f" weight {source.weight:g}" if source.weight is not None
                     else f" samples {source.samples}" if source.samples is not None else "")
            parts.append(f"{source.name} ({source.uri}{share})")
        return f"mixture of {len(parts)}: " + ", ".join(parts)


class DatasetSpec(ApiModel):
    """The instruction/response data and how it becomes token sequences."""

    cel_rules = (
        CelRule(
            rule="!(has(self.validation) && has(self.validationSplit))",
            message="set either validation or validationSplit, not both",
            field_path=".validationSplit",
        ),
    )

    train: TrainingData
    """The training data: `{uri}` (one file, or a glob over shards) or `{sources: [...]}` (a weighted mixture)."""

    validation: DataSource | None = None
    """A held-out file (or a glob over shards). Mutually exclusive with `validationSplit`. With a mixture,
    `validationSplit` holds out rows of every source, so the evaluation loss can be reported per source."""

    validation_split: float | None = Field(default=None, gt=0, lt=0.5)
    """Fraction of the training rows held out for validation (split with `hyperparameters.seed`; in a
    mixture, of each source's rows before the mixture is drawn, so no repeated example is on both sides).
    Mutually exclusive with `validation`. Neither set: no evaluation."""

    data_schema: Literal["auto", "prompt_completion", "messages", "alpaca", "sharegpt", "text"] = Field(
        default="auto", alias="schema"
    )
    """Row layout. `auto` detects it from the columns: `prompt`+`completion` (or `response`),
    `messages`, `instruction`+`output` (Alpaca), `conversations` (ShareGPT) or `text`."""

    column_map: dict[str, Name] = Field(default_factory=dict, max_length=32)
    """Renames applied to every row before the schema is detected: `{fileColumn: expectedColumn}`."""

    chat_template: Text = "auto"
    """`auto` (the tokenizer's own template, else ChatML), a named template (`chatml`, `llama3`,
    `zephyr`), or an inline Jinja template."""

    train_on: Literal["assistant", "last_assistant", "all"] = "assistant"
    """Which tokens carry loss: every assistant turn (`assistant`), only the last assistant turn
    (`last_assistant`), or every token (`all`). A trained turn is its content (reasoning and tool calls
    included, as the chat template renders them) and the end-of-turn token right after it. An assistant
    message with `weight: 0` carries no loss."""

    reasoning: Literal["keep", "drop"] = "keep"
    """Reasoning of assistant turns (`reasoning_content`, `reasoning`, `thinking`, or a leading
    `<think>` block): `keep` renders it through the chat template and trains it with the turn (a template
    that shows only the last turn's reasoning keeps only that one; one that cannot render it fails
    preflight); `drop` removes it, so only the answers are trained."""

    max_seq_length: int | Literal["auto"] = Field(
        default="auto",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == string ? self == 'auto' : self >= 16",
                    "message": "must be 'auto' or an integer of at least 16",
                }
            ]
        },
    )
    """Longest example in tokens. `auto`: with `packing`, the longest example (every row the model's context
    holds is kept whole); without, the 99th percentile of the token lengths. Capped at the model's limit."""

    overlong: Literal["truncate_prompt", "drop"] = "truncate_prompt"
    """What happens to an example longer than `maxSeqLength`: cut from the start of the prompt
    (`truncate_prompt`) or `drop` it. Both are counted and reported."""

    max_dropped_fraction: float = Field(default=0.1, ge=0, le=1)
    """Preflight fails when more than this fraction of rows is dropped or truncated."""

    packing: bool = True
    """Pack examples into padding-free sequences whose attention never crosses example boundaries.
    When false, batches are length-grouped and padded."""

    dedup: bool = True
    """Drop exact duplicate rows (after whitespace and case normalisation)."""

    secret_ref: SecretReference | None = None
    """Secret with credentials to read the data (AWS keys, `AWS_ENDPOINT_URL`)."""

    @field_validator("max_seq_length", mode="before")
    @classmethod
    def _seq_length_floor(cls, value: Any) -> Any:
        # One clear message instead of one per union branch.
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 16):
            return value
        raise ValueError(f"must be 'auto' or an integer of at least 16, got {value!r}")

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value == "auto" or value in NAMED_CHAT_TEMPLATES or _JINJA.search(value):
            return value
        raise ValueError(
            f"'{value}' is neither 'auto', a named template ({', '.join(NAMED_CHAT_TEMPLATES)}) nor Jinja"
        )

    @model_validator(mode="after")
    def _one_validation_source(self) -> DatasetSpec:
        if self.validation is not None and self.validation_split is not None:
            raise ValueError("validationSplit: set either validation or validationSplit, not both")
        return self

    def with_uris(self, change: Callable[[str], str]) -> DatasetSpec:
        """A copy with `change` applied to every dataset URI (the training file or each source, the validation).

        Args:
            change: Maps one URI to another (e.g. a relative path to an absolute one).

        Returns:
            The changed copy; this spec is left as it is.
        """
        train = self.train
        if train.uri is not None:
            train = train.model_copy(update={"uri": change(train.uri)})
        if train.sources is not None:
            train = train.model_copy(update={"sources": [s.model_copy(update={"uri": change(s.uri)})
                                                         for s in train.sources]})
        validation = self.validation
        if validation is not None:
            validation = validation.model_copy(update={"uri": change(validation.uri)})
        return self.model_copy(update={"train": train, "validation": validation})


# --------------------------------------------------------------------------------------------- method


class LoraSpec(ApiModel):
    """Low-rank adapter settings (LoRA and QLoRA)."""

    r: int = Field(default=16, ge=1, le=1024)
    """Rank of the adapter matrices."""

    alpha: int = Field(default=32, ge=1)
    """Scaling numerator; the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."""

    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter input."""

    target_modules: list[Name] = Field(default_factory=lambda: ["all-linear"], min_length=1, max_length=64)
    """Module names to adapt, or `all-linear` for every linear layer except the output head."""

    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""

    use_rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r)."""


class QuantizationSpec(ApiModel):
    """4-bit quantisation of the frozen base for QLoRA (bitsandbytes; needs a CUDA GPU)."""

    bits: Literal[4] = 4
    """Bits per base weight."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; NF4 is the QLoRA paper's choice."""

    double_quant: bool = True
    """Also quantise the quantisation constants (saves ~0.4 bit per weight)."""


class FreezeSpec(ApiModel):
    """Layer freezing: train only the top transformer blocks."""

    trainable_layers: int = Field(ge=1)
    """How many of the top transformer blocks are trained; all lower blocks stay frozen."""

    train_embeddings: bool = False
    """Also train the input embeddings and the output head."""


class PromptTuningSpec(ApiModel):
    """Prompt tuning: learned virtual tokens prepended to every input; the model stays frozen."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=512)
    """Number of learned virtual tokens."""

    init_text: Text | None = None
    """Initialise the virtual tokens from this text's embeddings (random when unset)."""


class MethodSpec(ApiModel):
    """The fine-tuning method."""

    cel_rules = (
        CelRule(
            rule="self.type != 'qlora' || has(self.quantization)",
            message="qlora needs quantization",
            field_path=".quantization",
        ),
        CelRule(
            rule="self.type == 'qlora' || !has(self.quantization)",
            message="quantization applies only to type qlora",
            field_path=".quantization",
        ),
        CelRule(
            rule="self.type != 'freeze' || has(self.freeze)",
            message="type freeze needs freeze.trainableLayers",
            field_path=".freeze",
        ),
    )

    type: Literal["lora", "qlora", "full", "freeze", "prompt_tuning"] = "lora"
    """`lora`, `qlora` (LoRA over a 4-bit base), `full` (every weight), `freeze` (only the top N
    blocks), or `prompt_tuning` (learned virtual tokens)."""

    lora: LoraSpec = Field(default_factory=LoraSpec)
    """Adapter settings for `lora` and `qlora`."""

    quantization: QuantizationSpec | None = None
    """Base quantisation; required for `qlora`, rejected for the other types."""

    freeze: FreezeSpec | None = None
    """Which blocks train; required for `freeze`."""

    prompt_tuning: PromptTuningSpec = Field(default_factory=PromptTuningSpec)
    """Virtual-token settings for `prompt_tuning`."""

    @model_validator(mode="after")
    def _method_sections(self) -> MethodSpec:
        if self.type == "qlora" and self.quantization is None:
            raise ValueError("quantization: qlora needs quantization (e.g. {bits: 4, quantType: nf4})")
        if self.type != "qlora" and self.quantization is not None:
            raise ValueError("quantization: applies only to type qlora")
        if self.type == "freeze" and self.freeze is None:
            raise ValueError("freeze: type freeze needs freeze.trainableLayers")
        return self

    @property
    def is_adapter(self) -> bool:
        """Whether the method trains a PEFT adapter (saved as `adapter/`) instead of the model's weights."""
        return self.type in ("lora", "qlora", "prompt_tuning")

    @property
    def can_merge(self) -> bool:
        """Whether the adapter can be merged into the base weights (LoRA and QLoRA; virtual tokens cannot)."""
        return self.type in ("lora", "qlora")


# ------------------------------------------------------------------------------------ hyperparameters


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


# -------------------------------------------------------------------------------------------- compute


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration)."""

    key: Name | None = None
    """Taint key; empty with operator Exists matches every taint."""

    operator: Literal["Exists", "Equal"] = "Equal"
    """How `value` is compared."""

    value: Name | None = None
    """Taint value for operator Equal."""

    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""

    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


class ComputeSpec(ApiModel):
    """Where and on what the Ray Train workers run."""

    num_workers: int = Field(default=1, ge=1, le=1024)
    """Ray Train workers (data-parallel ranks)."""

    gpus_per_worker: int = Field(default=1, ge=0, le=16)
    """GPUs per worker (`nvidia.com/gpu`); 0 trains on CPU."""

    cpus_per_worker: int = Field(default=4, ge=1, le=512)
    """CPU cores per worker."""

    memory_per_worker: Quantity = "32Gi"
    """Memory per worker as a Kubernetes quantity."""

    image: Name | None = None
    """Trainer image; unset uses the operator's default."""

    node_selector: dict[str, Name] = Field(default_factory=dict, max_length=64)
    """Node labels the worker pods must match."""

    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations of the worker pods (e.g. for tainted GPU nodes)."""

    priority_class_name: Name | None = None
    """PriorityClass of the Ray pods."""

    service_account_name: Name | None = None
    """ServiceAccount of the Ray pods (e.g. for IAM roles for service accounts)."""


# ---------------------------------------------------------------------------------- checkpoints, eval


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


class ReferenceSet(DataSource):
    """Text the base model handles and the fine-tuned model must keep handling: the yardstick of forgetting."""

    max_rows: int = Field(default=256, ge=1, le=100_000)
    """Rows read from the start of the file; later rows are ignored, so the check stays cheap."""

    max_tokens: int = Field(default=16384, ge=16, le=10_000_000)
    """Tokens (prompt and answer) scored at most: rows are taken in file order until this budget is spent,
    each cut to the job's resolved `maxSeqLength`. The check costs two forward passes over them."""


# Task metrics computed on generated answers (`evaluation.metrics`); `sftjob_trainer.task_metrics` implements them.
TaskMetricName = Literal["exact_match", "json_equal", "contains", "regex", "chrf", "rouge_l"]
_HTTP_URL = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]*)?$"
DEFAULT_METRICS: tuple[TaskMetricName, ...] = ("exact_match",)
_TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
TaskName = Annotated[
    str,
    Field(max_length=MAX_NAME, json_schema_extra={"pattern": _TASK_NAME}),
    matches(_TASK_NAME, "an lm-eval task name: letters, digits, '_', '.', '-' (e.g. arc_easy)"),
]
HttpUrl = Annotated[
    str,
    Field(max_length=MAX_NAME, json_schema_extra={"pattern": _HTTP_URL}),
    matches(_HTTP_URL, "an http:// or https:// URL such as http://judge.llm.svc:8000/v1"),
]


class BenchmarkTask(ApiModel):
    """An lm-evaluation-harness task run on the base and the fine-tuned model."""

    cel_rules = (
        CelRule(
            rule="!has(self.type) || has(self.uri)",
            message="type describes a custom task file: set uri too (a built-in task has neither)",
            field_path=".type",
        ),
    )

    name: TaskName
    """A built-in lm-eval task (e.g. `arc_easy`, `hellaswag`: its data must be reachable from the trainer,
    through the Hub or a local Hugging Face cache), or the name of the custom task in `uri`."""

    uri: StorageUri | None = None
    """A custom task: a JSONL file (`s3://` or a path). `generate_until` rows are `{"input", "target"}` and are
    scored by exact match of the greedy answer (whitespace trimmed); `multiple_choice` rows are
    `{"input", "choices": [...], "label": index}` and scored by accuracy of the most likely choice."""

    type: Literal["generate_until", "multiple_choice"] | None = None
    """How a custom task is scored (required with `uri`)."""

    limit: int | None = Field(default=None, ge=1, le=100_000)
    """Score at most this many rows of the task (unset: all)."""

    @model_validator(mode="after")
    def _custom_needs_both(self) -> BenchmarkTask:
        if (self.uri is None) != (self.type is None):
            raise ValueError("type: a custom task needs both uri and type (a built-in task has neither)")
        return self


class JudgeSpec(ApiModel):
    """A model that compares base and fine-tuned answers pairwise, through an OpenAI-compatible endpoint."""

    endpoint: HttpUrl
    """Base URL of the OpenAI-compatible API, up to and including `/v1` (e.g. `http://vllm.llm.svc:8000/v1`,
    `https://api.openai.com/v1`)."""

    model: Name
    """The judge model's name at the endpoint."""

    secret_ref: SecretReference | None = None
    """Secret holding the API key as `OPENAI_API_KEY`, sent as a bearer token (unset: the placeholder `unused`
    is sent, which a server without authentication ignores)."""

    rubric: Text | None = None
    """What makes an answer better (e.g. "correct JSON with every field of the order"). Unset: helpfulness,
    correctness and faithfulness to the reference answer."""

    max_samples: int = Field(default=32, ge=1, le=1000)
    """Held-out prompts judged (each twice, with the answers in both orders to cancel position bias)."""

    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Timeout of one judge request."""

    max_retries: int = Field(default=4, ge=0, le=20)
    """Retries of a request that times out or answers 429 or 5xx (exponential backoff). Once they are spent
    on one request, the judge is given up: the job still succeeds, with a `JudgeUnavailable` condition."""


class EvaluationSpec(ApiModel):
    """Evaluation after training: task metrics on generated answers, benchmarks, a judge, forgetting, a report.

    Everything lands in `eval_report.md` (base vs fine-tuned) and its headline in `status.evaluation`.
    """

    cel_rules = (
        CelRule(
            rule="!has(self.maxForgetting) || has(self.reference)",
            message="maxForgetting needs a reference set (evaluation.reference) to measure forgetting on",
            field_path=".maxForgetting",
        ),
        CelRule(
            rule="!has(self.metrics) || !self.metrics.exists(m, m == 'regex') || has(self.regex)",
            message="the regex metric needs evaluation.regex (the pattern whose match is compared)",
            field_path=".regex",
        ),
    )

    num_samples: int = Field(default=16, ge=0, le=1000)
    """How many validation prompts to answer with the base and the fine-tuned model."""

    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    """Longest generated answer in tokens."""

    metrics: list[TaskMetricName] = Field(default_factory=lambda: list(DEFAULT_METRICS), min_length=1, max_length=6)
    """Task metrics on the generated answers, for the base and the fine-tuned model: `exact_match` (whitespace
    trimmed), `json_equal` (both parse as JSON and are equal), `contains` (the reference appears in the answer),
    `regex` (the first match of `regex` in the answer equals its first match in the reference, e.g. a final
    number), `chrf` (sacrebleu's chrF, 0-100) and `rouge_l` (rouge-score's ROUGE-L F1). The first is the
    headline (`status.evaluation.score`, the `Score` column)."""

    regex: Text | None = None
    """Pattern of the `regex` metric (Python syntax); its first group, if it has one, is what is compared."""

    during_training: bool = False
    """Also generate answers and compute the metrics at every evaluation during training (`hyperparameters.
    evalInterval`), so their curves appear beside the loss curve in the report. Costs one generation pass each."""

    tasks: list[BenchmarkTask] = Field(default_factory=list, max_length=16)
    """lm-evaluation-harness tasks run on the base and the fine-tuned model; results with their stderr."""

    judge: JudgeSpec | None = None
    """A judge model comparing base and fine-tuned answers pairwise (win rate with a 95% interval)."""

    reference: ReferenceSet | None = None
    """A reference set to measure forgetting on: the mean token loss of the base model (before training) and
    of the fine-tuned model on it, and their ratio, are reported in `status.evaluation.forgetting`,
    `manifest.json` and the model card. Rows with a `text` column are scored on every token; chat rows
    (`messages`, or any other `dataset.schema` layout) on their assistant turns, rendered with
    `dataset.chatTemplate`. Read with the dataset's credentials (`dataset.secretRef`)."""

    max_forgetting: float | None = Field(default=None, gt=0)
    """Largest accepted ratio of the fine-tuned to the base model's loss on `reference` (e.g. 1.1: at most
    10% higher). Above it the job ends as `onForgetting` says. Unset: forgetting is reported, never enforced."""

    on_forgetting: Literal["degrade", "fail"] = "degrade"
    """What a ratio above `maxForgetting` does. `degrade`: the job succeeds with its outputs kept and marked
    (a `Degraded` condition with reason `ForgettingExceeded`, and a warning in `manifest.json` and the model
    card). `fail`: the job fails with the non-retryable error `ForgettingExceeded` and writes no
    `manifest.json`, so no reader trusts the weights left in the output."""

    @model_validator(mode="after")
    def _gate_needs_reference(self) -> EvaluationSpec:
        if self.max_forgetting is not None and self.reference is None:
            raise ValueError("maxForgetting: needs a reference set (evaluation.reference) to measure forgetting on")
        if "regex" in self.metrics and self.regex is None:
            raise ValueError("regex: the regex metric needs evaluation.regex (the pattern whose match is compared)")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"regex: not a valid regular expression: {err}") from None
        return self


class OutputSpec(ApiModel):
    """Where the artifacts go."""

    uri: StorageUri
    """`s3://bucket/prefix` or a filesystem path. Artifacts land in `<uri>/<namespace>/<name>/`
    (local runs: `<uri>/<name>/`)."""

    save_adapter: bool = True
    """Save the adapter (`adapter/`, PEFT format) for adapter methods."""

    merge_adapter: bool = False
    """Also save the base with the adapter merged (`model/`); QLoRA merges into the unquantised base."""

    secret_ref: SecretReference | None = None
    """Secret with credentials to write the output."""

    select: Literal["last", "best"] = "last"
    """Which weights are exported: `last` (the end of training) or `best` (the checkpoint with the lowest
    evaluation loss; needs validation data, and evaluation at every checkpoint: `evalInterval` equal to
    `checkpointing.interval`, which `best` sets when they are unset)."""


class RunPolicySpec(ApiModel):
    """Lifecycle: suspension, deadlines, retries, cleanup and queueing."""

    suspend: bool = False
    """Suspend the job: no Ray pods run while true; resuming continues from the latest checkpoint."""

    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job with DeadlineExceeded when it has run this long."""

    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Retries after retryable failures (node lost, preemption, NCCL timeout)."""

    retry_on_out_of_memory: bool = False
    """Also retry attempts that ran out of memory (they usually fail again with the same settings)."""

    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the SFTJob this long after it finished; the artifacts stay."""

    queue_name: Name | None = None
    """Kueue LocalQueue that admits the job (`kueue.x-k8s.io/queue-name`)."""

    startup_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail an attempt whose Ray cluster has not started running this long after KubeRay began creating it
    (the RayJob's `preRunningDeadlineSeconds`, counted from its `status.startTime`). The failure is not retried
    and names what the pods were stuck on (Unschedulable, ImagePullBackOff, CrashLoopBackOff, ...). Unset: an
    attempt may wait for its pods forever (the `PodsHealthy` condition still says why)."""

    stall_timeout_seconds: int | None = Field(default=None, ge=1)
    """Stop and retry (within `backoffLimit`) an attempt whose trainer has not updated `progress.json` for this
    long while it runs: a hung trainer gets a `Stalled` condition and a new attempt that resumes from the latest
    checkpoint. The trainer writes at least every step and at each phase change; set this above the longest
    quiet stretch (loading the model, dataset preparation, an evaluation pass, a checkpoint upload)."""


class MlflowTrackingSpec(ApiModel):
    """An MLflow tracking server that receives the job's run."""

    tracking_uri: HttpUrl
    """Base URL of the MLflow tracking server (e.g. `http://mlflow.mlops.svc:5000`). Artifacts go through the
    server (`mlflow server --serve-artifacts`, its default), so the trainer needs no artifact-store credentials."""

    experiment: Name = "sftjob"
    """The experiment the run belongs to (created when missing)."""

    secret_ref: SecretReference | None = None
    """Secret with the server's credentials: `MLFLOW_TRACKING_TOKEN` (a bearer token), or
    `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD` (basic auth). Unset: no authentication."""


class WandbTrackingSpec(ApiModel):
    """A Weights & Biases project that receives the job's run."""

    project: Name
    """The W&B project."""

    entity: Name | None = None
    """The W&B team or user owning the project (unset: the API key's default entity)."""

    secret_ref: SecretReference | None = None
    """Secret holding `WANDB_API_KEY` (and `WANDB_BASE_URL` for a self-hosted server). Not needed offline."""

    mode: Literal["online", "offline"] = "online"
    """`online` streams to the W&B server; `offline` writes the run's files under `<output>/wandb/` without any
    network (upload them later with `wandb sync`)."""


class TrackingSpec(ApiModel):
    """Experiment tracking: one run per job, continued by every attempt, each step logged once."""

    mlflow: MlflowTrackingSpec | None = None
    """Log to an MLflow tracking server: hyperparameters as params, training and evaluation metrics per step,
    and the dataset statistics, evaluation results and `manifest.json` as artifacts at the end."""

    tensorboard: bool = False
    """Write TensorBoard event files (the same metrics) under `<output>/tensorboard/`."""

    wandb: WandbTrackingSpec | None = None
    """Log to Weights & Biases (the same params, metrics and artifacts)."""


# ---------------------------------------------------------------------------------------------- distillation

# `dataset.train.uri` of a job with `distillation`: the job trains on the teacher's answers, which the trainer
# writes to `<job output>/data/distilled.jsonl` before training (a reserved name, never read as a path).
DISTILLED_TRAIN_URI = "distilled"


class TeacherSpec(ApiModel):
    """The model that answers the prompts: any OpenAI-compatible chat-completions endpoint."""

    endpoint: HttpUrl
    """Base URL of the OpenAI-compatible API, up to and including `/v1` (vLLM, SGLang, a hosted API,
    `transformers serve`), e.g. `http://vllm.llm.svc:8000/v1`. Requests go to `<endpoint>/chat/completions`."""

    model: Name
    """The teacher model's name at the endpoint."""

    secret_ref: SecretReference | None = None
    """Secret holding the API key as `OPENAI_API_KEY`, sent as a bearer token. The trainer reads it from
    `SFTJOB_TEACHER_API_KEY`, else `OPENAI_API_KEY`; it never appears in the resource, the RayJob, logs, errors
    or artifacts. Unset: no Authorization header (a server without authentication)."""

    concurrency: int = Field(default=8, ge=1, le=1024)
    """Requests in flight at most, across the Ray cluster (Ray Data actors x requests per actor)."""

    timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    """Timeout of one request, connection included; a request that takes longer counts as failed and is
    retried."""

    max_retries: int = Field(default=4, ge=0, le=10)
    """Retries of one request that times out, cannot connect, or is answered 408, 429 or 5xx, with exponential
    backoff (1, 2, 4, ... s). When one request has spent them, the attempt fails with the retryable
    `TeacherUnavailable`; what was generated is kept, and the next attempt continues from it."""


class SelfInstructSpec(ApiModel):
    """Self-Instruct: grow new instructions from a few seed tasks with the teacher, then answer them."""

    seed_tasks: StorageUri
    """A file of seed tasks (jsonl, json, parquet or csv), one per row in an `instruction` or `prompt` column
    (Alpaca's `input` is appended to the instruction). A few dozen diverse tasks is typical (Self-Instruct
    started from 175)."""

    count: int = Field(ge=1, le=50_000)
    """How many new instructions to generate (the seed tasks are not answered themselves)."""

    similarity_threshold: float = Field(default=0.7, gt=0, le=1)
    """A generated instruction whose ROUGE-L F1 with any instruction already in the pool (seeds included) is
    above this is a near-duplicate and dropped (Self-Instruct's 0.7)."""

    evolve: Literal["deeper", "broader"] | None = None
    """Evol-Instruct: rewrite every generated instruction once with a fixed prompt, `deeper` (harder: more
    constraints, more reasoning steps) or `broader` (a new, rarer task of the same domain). Unset: no rewrite."""


class PromptsSpec(ApiModel):
    """The prompts the teacher answers: a file, or instructions grown from seed tasks (`generate`)."""

    cel_rules = (
        CelRule(
            rule="has(self.uri) != has(self.generate)",
            message="set exactly one of uri (a prompts file) and generate (Self-Instruct from seed tasks)",
            field_path=".uri",
        ),
    )

    uri: StorageUri | None = None
    """The prompts file (`s3://bucket/key` or a path): jsonl, json, parquet or csv."""

    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    """File format. `auto` uses the file extension."""

    prompt_schema: Literal["auto", "prompt", "alpaca", "messages"] = Field(default="auto", alias="schema")
    """Row layout: `prompt` (a string column), `alpaca` (`instruction`, optional `input`) or `messages`
    (a conversation; turns after its last user turn are dropped, so an SFT dataset can be re-answered).
    `auto` detects it from the columns, in that order of precedence: messages, instruction, prompt."""

    column_map: dict[str, Name] = Field(default_factory=dict, max_length=32)
    """Renames applied to every row first: `{fileColumn: expectedColumn}`, e.g. `{question: prompt}`."""

    limit: int | None = Field(default=None, ge=1)
    """Answer only the first N prompts of the file (try a recipe on a few before paying for all)."""

    generate: SelfInstructSpec | None = None
    """Self-Instruct instead of a prompts file: the prompts are instructions the teacher writes."""

    @model_validator(mode="after")
    def _one_source(self) -> PromptsSpec:
        if (self.uri is None) == (self.generate is None):
            raise ValueError("uri: set exactly one of uri (a prompts file) and generate (Self-Instruct from seed "
                             "tasks)")
        return self


class VerifierSpec(ApiModel):
    """Rejection sampling: keep an answer only when its final answer equals the prompt's reference answer."""

    cel_rules = (
        CelRule(
            rule="self.extract != 'regex' || has(self.regex)",
            message="extract regex needs regex (the pattern whose first group is the final answer)",
            field_path=".regex",
        ),
    )

    extract: Literal["boxed", "regex"] = "boxed"
    """How the final answer is taken from the teacher's answer: the last `\\boxed{...}` (braces balanced), or
    the last match of `regex`. The reference is read the same way when it matches, else used whole."""

    regex: Text | None = None
    """Pattern for `extract: regex` (Python syntax); its first group, if it has one, is the answer."""

    reference_column: Name = "answer"
    """The prompts file's column holding the reference answer (after `prompts.columnMap`). Answers are compared
    trimmed, without `$`, thousands separators or a trailing period, and as numbers when both parse as numbers."""

    @model_validator(mode="after")
    def _regex_given(self) -> VerifierSpec:
        if self.extract == "regex" and self.regex is None:
            raise ValueError("regex: extract regex needs regex (the pattern whose first group is the final answer)")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"regex: not a valid regular expression: {err}") from None
        return self


class DistillDedupSpec(ApiModel):
    """Duplicate removal on the generated (prompt, answer) pairs."""

    exact: bool = True
    """Drop a pair whose prompt and answer equal an earlier pair's, after whitespace and case normalisation."""

    near: bool = True
    """Drop a pair whose text is a near-duplicate of an earlier kept pair: MinHash (128 permutations) of word
    5-gram shingles, indexed by LSH, above `nearThreshold` estimated Jaccard similarity."""

    near_threshold: float = Field(default=0.8, gt=0, le=1)
    """Jaccard similarity of the shingle sets above which two pairs are near-duplicates."""


class DecontaminationSpec(ApiModel):
    """Drop generated rows that overlap the data the model is evaluated on (word n-gram overlap)."""

    enabled: bool = True
    """Compare against `dataset.validation`, the files of `evaluation.tasks` and `uris`. Nothing to compare
    against (e.g. `validationSplit` only): nothing is dropped."""

    ngram: int = Field(default=13, ge=1, le=64)
    """A row is contaminated when one of its word n-grams (lowercased words) appears in an evaluation text; a
    text shorter than n words counts as one n-gram of its own length (13: GPT-3's decontamination)."""

    uris: list[StorageUri] = Field(default_factory=list, max_length=16)
    """More files to decontaminate against (jsonl, json, parquet or csv; every string in a row counts)."""


class DistillationFilters(ApiModel):
    """What makes a teacher's answer a training example. Every drop is counted by reason."""

    cel_rules = (
        CelRule(
            rule="!has(self.maxLength) || self.maxLength >= self.minLength",
            message="maxLength must be at least minLength",
            field_path=".maxLength",
        ),
    )

    verifier: VerifierSpec | None = None
    """Rejection sampling against a reference answer (unset: answers are not checked)."""

    dedup: DistillDedupSpec = Field(default_factory=DistillDedupSpec)
    """Exact and near-duplicate removal."""

    min_length: int = Field(default=1, ge=0, le=1_000_000)
    """Shortest answer kept, in characters (reasoning not counted)."""

    max_length: int | None = Field(default=None, ge=1, le=10_000_000)
    """Longest answer kept, in characters (reasoning not counted). Unset: no bound. An answer the teacher cut
    at `maxTokens` is always dropped (`truncated`)."""

    refusals: bool = True
    """Drop refusals: answers that start with or contain a known refusal phrase ("I'm sorry, but I can't",
    "As an AI language model", ...; the list is in docs/distillation.md)."""

    decontaminate: DecontaminationSpec = Field(default_factory=DecontaminationSpec)
    """Drop rows that overlap evaluation data."""

    @model_validator(mode="after")
    def _length_bounds(self) -> DistillationFilters:
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(f"maxLength: must be at least minLength ({self.min_length})")
        return self


class DistillationSpec(ApiModel):
    """Generate the training data with a teacher model first, then train on it.

    The teacher's answers, filtered, become `<output>/data/distilled.jsonl` (the messages schema), with their
    statistics in `data/distilled.stats.json`; `dataset.train.uri` must be `distilled`. Generation is cached by
    a content hash of the prompts, the teacher and the sampling settings, so a retried attempt never pays for it
    twice, and continues from what an interrupted attempt generated.
    """

    cel_rules = (
        CelRule(
            # double(): a temperature written as an integer (0, 1) decodes as one.
            rule="self.samplesPerPrompt == 1 || double(self.temperature) > 0.0",
            message="samplesPerPrompt above 1 needs temperature above 0 (greedy decoding repeats one answer)",
            field_path=".samplesPerPrompt",
        ),
        CelRule(
            rule="!has(self.filters) || !has(self.filters.verifier) || has(self.prompts.uri)",
            message="filters.verifier compares with a reference column of a prompts file: set prompts.uri",
            field_path=".filters.verifier",
        ),
    )

    teacher: TeacherSpec
    """The endpoint and model that answer."""

    prompts: PromptsSpec
    """What the teacher answers."""

    system_prompt: Text | None = None
    """A system message sent before every prompt, e.g. Orca's "explain step by step, justify your answer".
    It is sent to the teacher only, never trained on; a prompt row's own system message wins."""

    temperature: float = Field(default=0.7, ge=0, le=2)
    """Sampling temperature of the teacher (0: greedy)."""

    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling: the smallest token set whose probability reaches this."""

    max_tokens: int = Field(default=2048, ge=1, le=262_144)
    """Longest answer in tokens (reasoning included); a cut answer is dropped as `truncated`."""

    samples_per_prompt: int = Field(default=1, ge=1, le=64)
    """Answers requested per prompt (one request each): with a verifier, more samples keep more prompts
    (rejection sampling); the kept answers of one prompt all train."""

    keep_reasoning: bool = True
    """Keep the teacher's reasoning (`reasoning_content` / `reasoning` of the reply, or a leading
    `<think>...</think>` block) as the assistant message's `reasoning` field, which `dataset.reasoning` then
    keeps or drops. False: the reasoning is discarded and only the answer is stored."""

    filters: DistillationFilters = Field(default_factory=DistillationFilters)
    """Verification, duplicates, length bounds, refusals and decontamination."""

    @model_validator(mode="after")
    def _sampling_and_verifier(self) -> DistillationSpec:
        if self.samples_per_prompt > 1 and self.temperature == 0:
            raise ValueError("samplesPerPrompt: above 1 needs temperature above 0 (greedy decoding repeats one "
                             "answer)")
        if self.filters.verifier is not None and self.prompts.uri is None:
            raise ValueError("filters: the verifier compares with a reference column of a prompts file: set "
                             "prompts.uri")
        return self


class DistillationStats(ApiModel):
    """What a distillation run generated and kept: `data/distilled.stats.json`, for the status and the manifest."""

    uri: StorageUri | None = None
    """The distilled training file (`<output>/data/distilled.jsonl`)."""

    complete: bool = False
    """Whether every request was answered; a partial run (the teacher went away) is never trained on."""

    prompts: int = Field(default=0, ge=0)
    """Prompts answered (after `limit`; for Self-Instruct, the instructions generated)."""

    instructions_generated: int | None = Field(default=None, ge=0)
    """Self-Instruct: new instructions kept in the pool (after the ROUGE-L filter)."""

    instructions_dropped: int | None = Field(default=None, ge=0)
    """Self-Instruct: generated instructions dropped as near-duplicates, unparseable or empty."""

    requests: int = Field(default=0, ge=0)
    """Requests this run sent to the teacher (retries of one request count once)."""

    cached_requests: int = Field(default=0, ge=0)
    """Answers reused from an earlier run's cache instead of being requested again."""

    responses: int = Field(default=0, ge=0)
    """Answers the filters saw (prompts x samplesPerPrompt when complete)."""

    kept: int = Field(default=0, ge=0)
    """Answers kept as training examples."""

    dropped: dict[str, int] = Field(default_factory=dict, max_length=32)
    """Dropped answers by reason: teacher_error, empty, truncated, too_short, too_long, refusal, no_answer,
    wrong_answer, contaminated, duplicate, near_duplicate."""

    prompt_tokens: int = Field(default=0, ge=0)
    """Prompt tokens of every answer used (as the teacher counted them), cached ones included."""

    completion_tokens: int = Field(default=0, ge=0)
    """Completion tokens of every answer used (reasoning included)."""

    seconds: float = Field(default=0.0, ge=0)
    """Wall time of this run's generation (cache hits cost none)."""

    cache: Name | None = None
    """`hit <key>` (every answer reused), `partial <key>` (some reused) or `miss <key>`; `<key>` is the first 12
    hex digits of the content hash of prompts, teacher and sampling settings."""

    sha256: Name | None = None
    """Digest of `distilled.jsonl`."""


class SFTJobSpec(ApiModel):
    """The desired fine-tuning run."""

    cel_rules = (
        CelRule(
            rule="self.model == oldSelf.model",
            message="model is immutable; create a new SFTJob",
            field_path=".model",
        ),
        CelRule(
            rule="self.dataset == oldSelf.dataset",
            message="dataset is immutable; create a new SFTJob",
            field_path=".dataset",
        ),
        CelRule(
            rule="self.method == oldSelf.method",
            message="method is immutable; create a new SFTJob",
            field_path=".method",
        ),
        CelRule(
            rule="self.hyperparameters == oldSelf.hyperparameters",
            message="hyperparameters are immutable; create a new SFTJob",
            field_path=".hyperparameters",
        ),
        CelRule(
            rule="self.output == oldSelf.output",
            message="output is immutable; create a new SFTJob",
            field_path=".output",
        ),
        CelRule(
            rule="!has(self.output.select) || self.output.select != 'best' || has(self.dataset.validation) "
                 "|| has(self.dataset.validationSplit)",
            message="output.select best picks the checkpoint with the lowest evaluation loss: set dataset.validation "
                    "or dataset.validationSplit",
            field_path=".output.select",
        ),
        CelRule(
            rule="has(self.distillation) == has(oldSelf.distillation) "
                 "&& (!has(self.distillation) || self.distillation == oldSelf.distillation)",
            message="distillation is immutable; create a new SFTJob",
            field_path=".distillation",
        ),
        CelRule(
            rule=f"!has(self.distillation) || (has(self.dataset.train.uri) "
                 f"&& self.dataset.train.uri == '{DISTILLED_TRAIN_URI}')",
            message="with distillation the job trains on the teacher's answers (<output>/data/distilled.jsonl): set "
                    f"dataset.train.uri: {DISTILLED_TRAIN_URI}",
            field_path=".dataset.train.uri",
        ),
        CelRule(
            rule=f"has(self.distillation) || !has(self.dataset.train.uri) "
                 f"|| self.dataset.train.uri != '{DISTILLED_TRAIN_URI}'",
            message=f"dataset.train.uri '{DISTILLED_TRAIN_URI}' names the teacher's answers: set distillation, or "
                    "point dataset.train.uri at a file",
            field_path=".dataset.train.uri",
        ),
        CelRule(
            rule="!has(self.distillation) || !has(self.dataset.schema) || self.dataset.schema == 'auto' "
                 "|| self.dataset.schema == 'messages'",
            message="distilled data is in the messages schema: set dataset.schema to auto or messages",
            field_path=".dataset.schema",
        ),
    )

    model: ModelSpec
    """The base model."""

    dataset: DatasetSpec
    """Training (and validation) data."""

    distillation: DistillationSpec | None = None
    """Generate the training data first: a teacher model answers prompts (or grows instructions from seed tasks),
    the answers are filtered, and the job trains on them (`dataset.train.uri: distilled`). Unset: the job trains
    on `dataset.train`."""

    method: MethodSpec = Field(default_factory=MethodSpec)
    """LoRA, QLoRA, full fine-tuning, layer freezing or prompt tuning."""

    hyperparameters: HyperparametersSpec = Field(default_factory=HyperparametersSpec)
    """Optimisation settings."""

    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    """Workers and their resources."""

    checkpointing: CheckpointingSpec = Field(default_factory=CheckpointingSpec)
    """Checkpoint cadence, retention and resume."""

    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Generated samples and forgetting on a reference set, after training."""

    output: OutputSpec
    """Where the artifacts go."""

    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)
    """Suspension, deadline, retries, TTL and queueing."""

    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Experiment tracking (MLflow, TensorBoard, Weights & Biases); off unless set."""

    @model_validator(mode="after")
    def _best_needs_evaluation(self) -> SFTJobSpec:
        if self.output.select != "best":
            return self
        if self.dataset.validation is None and self.dataset.validation_split is None:
            raise ValueError("output.select: best picks the checkpoint with the lowest evaluation loss: set "
                             "dataset.validation or dataset.validationSplit")
        every, save = self.hyperparameters.eval_interval, self.checkpointing.interval
        if every is not None and save is not None and every != save:
            raise ValueError(f"output.select: best compares evaluated checkpoints, so hyperparameters.evalInterval "
                             f"({every}) must equal checkpointing.interval ({save}); set one of them, or both equal")
        return self

    @model_validator(mode="after")
    def _distillation_trains_on_its_answers(self) -> SFTJobSpec:
        distilled = self.dataset.train.uri == DISTILLED_TRAIN_URI
        if self.distillation is not None and not distilled:
            raise ValueError(f"dataset: with distillation the job trains on the teacher's answers "
                             f"(<output>/data/distilled.jsonl): set dataset.train.uri: {DISTILLED_TRAIN_URI}")
        if self.distillation is None and distilled:
            raise ValueError(f"dataset: dataset.train.uri '{DISTILLED_TRAIN_URI}' names the teacher's answers: set "
                             "distillation, or point dataset.train.uri at a file")
        if self.distillation is not None and self.dataset.data_schema not in ("auto", "messages"):
            raise ValueError("dataset: distilled data is in the messages schema: set dataset.schema to auto or "
                             "messages")
        return self


# --------------------------------------------------------------------------------------------- status

Phase = Literal[
    "Pending", "Validating", "Queued", "Initializing", "Generating", "Running", "Exporting", "Succeeded", "Failed",
    "Suspended"
]


class Condition(ApiModel):
    """A condition in the shape of metav1.Condition."""

    type: Name
    """Condition type in CamelCase: `Validated`, `Running`, `Succeeded`, `Failed`, `Suspended`, `Degraded`
    (succeeded, but the outputs are marked: e.g. reason `ForgettingExceeded`)."""

    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""

    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """Machine-readable CamelCase reason, e.g. `InvalidSpec`, `DeadlineExceeded`."""

    message: Text = ""
    """Human-readable detail."""

    last_transition_time: str = Field(json_schema_extra={"format": "date-time"}, max_length=64)
    """When `status` last changed (RFC 3339)."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The `.metadata.generation` the condition was computed from."""


class AttemptRecord(ApiModel):
    """One attempt: a RayJob and how it ended."""

    attempt: int = Field(ge=1)
    """Attempt number, from 1."""

    ray_job_name: Name
    """The attempt's RayJob."""

    result: Literal["Running", "Succeeded", "Failed", "Suspended"] = "Running"
    """How the attempt ended (Running while it runs)."""

    reason: Name | None = None
    """Why it ended, e.g. `NodeLost`, `OutOfMemory`."""

    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the RayJob was created."""

    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the attempt ended."""

    resumed_from_step: int | None = Field(default=None, ge=0)
    """The checkpoint step the attempt resumed from."""


class RayJobStatus(ApiModel):
    """The current attempt's RayJob as KubeRay reports it."""

    name: Name
    """RayJob name (`<sftjob>-a<attempt>`)."""

    job_status: Name | None = None
    """Ray job status: PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED."""

    job_deployment_status: Name | None = None
    """KubeRay deployment status: Initializing, Running, Complete, Failed, Suspended, ..."""

    dashboard_url: Name | None = Field(default=None, alias="dashboardURL")
    """Ray dashboard address."""


class ResolvedSettings(ApiModel):
    """The values the trainer chose for `auto` and unset fields."""

    learning_rate: float | None = None
    """Peak learning rate used."""

    per_device_batch_size: int | None = None
    """Examples per worker per forward pass."""

    gradient_accumulation_steps: int | None = None
    """Forward passes per optimizer step on each worker."""

    global_batch_size: int | None = None
    """perDeviceBatchSize x gradientAccumulationSteps x numWorkers."""

    num_workers: int | None = None
    """Ray Train workers."""

    precision: Name | None = None
    """bf16, fp16 or fp32."""

    gradient_checkpointing: bool | None = None
    """Whether activations were recomputed."""

    max_seq_length: int | None = None
    """Longest example in tokens."""

    batching: Name | None = None
    """How batches were formed: `packed` (padding-free) or `length_grouped` (padded)."""

    attention: Name | None = None
    """Attention implementation, e.g. `sdpa`, `flash_attention_2`."""

    kernels: Name | None = None
    """Fused training kernels: `liger` (Liger's Triton kernels, chosen on CUDA when liger-kernel is
    installed) or `none`."""

    chat_template: Name | None = None
    """The template that rendered conversations: `tokenizer`, a named template or `inline`."""

    total_steps: int | None = None
    """Optimizer steps planned."""

    device: Name | None = None
    """Device type of the workers: `cuda` or `cpu`."""


class DatasetStats(ApiModel):
    """What the data pipeline made of the dataset."""

    format: Name | None = None
    """The detected or configured schema."""

    rows: int | None = None
    """Rows read from the training file."""

    train_examples: int | None = None
    """Examples trained on after filtering."""

    validation_examples: int | None = None
    """Held-out examples."""

    dropped: dict[str, int] = Field(default_factory=dict, max_length=32)
    """Dropped rows by reason (duplicate, empty_response, too_long, ...)."""

    truncated: int | None = None
    """Examples cut to maxSeqLength."""

    tokens: int | None = None
    """Tokens in the training examples."""

    trainable_tokens: int | None = None
    """Tokens that carry loss."""

    sha256: Name | None = None
    """Digest of the training file."""

    cache: Name | None = None
    """The trainer's data cache: `hit <key>` (prepared data reused, nothing re-tokenized) or
    `miss <key>` (prepared and stored for the next attempt); `<key>` is the first 12 hex digits of
    the content hash."""

    sources: list[SourceStats] | None = Field(default=None, max_length=MAX_SOURCES)
    """Per source of a mixture (`dataset.train.sources`): what was read, requested and realised."""


class SourceStats(ApiModel):
    """One source of a training mixture, as drawn."""

    name: Name
    """The source's name (`sources[].name`, or the one derived from its URI)."""

    format: Name | None = None
    """The detected or configured schema of this source."""

    files: int = Field(default=0, ge=0)
    """Files read (a glob's shards; fewer than `filesMatched` when a `samples` count needed only some)."""

    files_matched: int = Field(default=0, ge=0)
    """Files the URI or glob matched."""

    rows: int = Field(default=0, ge=0)
    """Rows read from this source's files."""

    available: int = Field(default=0, ge=0)
    """Usable distinct training examples the mixture was drawn from (after format checks, quality filter,
    de-duplication and the validation hold-out)."""

    weight: float | None = None
    """The requested weight, if any."""

    samples: int | None = None
    """The requested count, if any."""

    train_examples: int = Field(default=0, ge=0)
    """Training examples drawn from this source (after the length policy); above `available` when repeated."""

    proportion: float = Field(default=0.0, ge=0, le=1)
    """Realised share of the training examples."""

    tokens: int = Field(default=0, ge=0)
    """Training tokens from this source."""

    validation_examples: int = Field(default=0, ge=0)
    """Held-out examples of this source (with `validationSplit`)."""

    eval_loss: float | None = None
    """Evaluation loss on this source's held-out examples, after training."""


class Progress(ApiModel):
    """Training progress, from the trainer's progress.json."""

    percentage: float | None = Field(default=None, ge=0, le=100)
    """step / totalSteps in percent."""

    step: int | None = Field(default=None, ge=0)
    """Optimizer steps done."""

    total_steps: int | None = Field(default=None, ge=0)
    """Optimizer steps planned."""

    epoch: float | None = Field(default=None, ge=0)
    """Fractional epoch."""

    trained_tokens: int | None = Field(default=None, ge=0)
    """Loss-bearing tokens processed."""

    tokens_per_second: float | None = Field(default=None, ge=0)
    """Recent throughput in loss-bearing tokens per second, all workers."""

    skipped_batches: int | None = Field(default=None, ge=0)
    """Batches the loss-spike guard (`hyperparameters.lossSpike`) skipped: their steps applied no update."""

    estimated_finish_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When training is expected to end."""

    eta: Name | None = None
    """Time left as a duration, e.g. `12m30s` (the ETA column)."""

    last_update_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the trainer last wrote progress."""


class Metrics(ApiModel):
    """Latest training metrics."""

    train_loss: float | None = None
    """Training loss (mean over the last logging interval)."""

    eval_loss: float | None = None
    """Loss on the validation data at the last evaluation."""

    learning_rate: float | None = None
    """Current learning rate."""

    grad_norm: float | None = None
    """Gradient norm before clipping."""

    token_accuracy: float | None = None
    """Fraction of loss-bearing validation tokens predicted exactly."""


class ForgettingResult(ApiModel):
    """Forgetting on `spec.evaluation.reference`: the mean token loss of the base and the fine-tuned model.

    Losses are means over the loss-bearing tokens of the whole set (token-weighted, not a mean of row means).
    A loss that is not finite (a diverged model) is left out, and its ratio with it.
    """

    base_loss: float | None = None
    """Mean token loss of the base model, measured before training."""

    tuned_loss: float | None = None
    """Mean token loss of the fine-tuned model."""

    ratio: float | None = None
    """tunedLoss / baseLoss: above 1 the fine-tuned model predicts the reference set worse than the base."""

    tokens: int = Field(default=0, ge=0)
    """Loss-bearing tokens the means are taken over."""

    rows: int = Field(default=0, ge=0)
    """Reference rows scored."""

    max_forgetting: float | None = None
    """The `evaluation.maxForgetting` the ratio was held against (unset: no gate)."""

    exceeded: bool = False
    """Whether the ratio is above `maxForgetting` (or could not be measured while a gate was set)."""

    def summary(self) -> str:
        """One line: `forgetting on the reference set (N tokens): base loss X, tuned loss Y, ratio Z`.

        With a `maxForgetting`, the line ends with where the ratio stands against it.
        """

        def show(value: float | None, digits: int) -> str:
            return "not finite" if value is None else f"{value:.{digits}f}"

        line = (f"forgetting on the reference set ({self.tokens} tokens): base loss {show(self.base_loss, 4)}, "
                f"tuned loss {show(self.tuned_loss, 4)}, ratio {show(self.ratio, 3)}")
        if self.max_forgetting is not None:
            line += f", {'above' if self.exceeded else 'within'} evaluation.maxForgetting {self.max_forgetting}"
        return line


class MetricResult(ApiModel):
    """One task metric on the held-out prompts, for the base and the fine-tuned model."""

    name: Name
    """The metric (`evaluation.metrics`)."""

    base: float
    """The base model's score: a rate in 0..1, chrF in 0..100, ROUGE-L F1 in 0..1."""

    tuned: float
    """The fine-tuned model's score, on the same scale."""

    samples: int = Field(ge=0)
    """Held-out prompts scored."""


class BenchmarkResult(ApiModel):
    """One lm-evaluation-harness task on the base and the fine-tuned model."""

    task: Name
    """The task name."""

    metric: Name
    """lm-eval's metric (e.g. `acc`, `exact_match`)."""

    base: float | None = None
    """The base model's score."""

    base_stderr: float | None = None
    """Its standard error (lm-eval's bootstrap or analytic estimate)."""

    tuned: float | None = None
    """The fine-tuned model's score."""

    tuned_stderr: float | None = None
    """Its standard error."""

    samples: int = Field(default=0, ge=0)
    """Rows scored."""


class JudgeResult(ApiModel):
    """Pairwise judgement of fine-tuned against base answers: every prompt judged in both orders."""

    model: Name
    """The judge model."""

    prompts: int = Field(default=0, ge=0)
    """Prompts judged in both orders."""

    tuned_wins: float = Field(default=0, ge=0)
    """Prompts the fine-tuned answer won (a prompt whose two orders disagree counts half a win each side)."""

    base_wins: float = Field(default=0, ge=0)
    """Prompts the base answer won."""

    ties: float = Field(default=0, ge=0)
    """Prompts judged a tie."""

    win_rate: float | None = None
    """(tunedWins + ties / 2) / prompts: above 0.5 the judge prefers the fine-tuned model."""

    ci_low: float | None = None
    """Lower end of the 95% interval of the win rate (Wilson score interval)."""

    ci_high: float | None = None
    """Upper end of the 95% interval."""

    error: Text | None = None
    """Why the judge gave up (it stayed unreachable after its retries); the job still succeeds."""


class EvaluationStatus(ApiModel):
    """Evaluation of the fine-tuned model against its base, from the trainer."""

    score: Name | None = None
    """The headline, e.g. `json_equal 0.92 (base 0.00)`: the first of `evaluation.metrics` (the `Score` column)."""

    metrics: list[MetricResult] = Field(default_factory=list, max_length=8)
    """Task metrics on the generated answers (`evaluation.metrics`)."""

    tasks: list[BenchmarkResult] = Field(default_factory=list, max_length=16)
    """lm-evaluation-harness results (`evaluation.tasks`)."""

    judge: JudgeResult | None = None
    """The judge's verdict (`evaluation.judge`)."""

    forgetting: ForgettingResult | None = None
    """Loss on the reference set before and after training (set when `evaluation.reference` is)."""

    seconds: float | None = Field(default=None, ge=0)
    """Wall time spent evaluating (generation, benchmarks, judge, forgetting), apart from training."""


class CheckpointRef(ApiModel):
    """A saved checkpoint."""

    step: int = Field(ge=0)
    """Optimizer step of the checkpoint."""

    uri: StorageUri
    """Directory of the checkpoint."""

    eval_loss: float | None = None
    """Evaluation loss at that step, if evaluated."""

    trained_tokens: int | None = Field(default=None, ge=0)
    """Loss-bearing tokens trained up to that step; a run resumed from the checkpoint counts on from it."""


class OutputStatus(ApiModel):
    """The artifacts; filled only once `manifest.json` exists."""

    uri: StorageUri
    """The job's output directory."""

    adapter_uri: StorageUri | None = None
    """The PEFT adapter (`adapter/`)."""

    model_uri: StorageUri | None = None
    """Full or merged weights (`model/`)."""

    manifest_uri: StorageUri | None = None
    """`manifest.json`: sha256 of every file, resolved settings, versions."""

    size_bytes: int | None = Field(default=None, ge=0)
    """Total size of the artifacts."""


class ErrorStatus(ApiModel):
    """Why the job (or its last attempt) failed."""

    code: Name
    """Stable machine-readable code, e.g. `InvalidSpec`, `DatasetUnreadable`, `OutOfMemory`."""

    message: Text
    """What went wrong and what to do."""

    field: Name | None = None
    """The spec field (or file:line) at fault."""

    retryable: bool = False
    """Whether another attempt may succeed."""


class MlflowRunStatus(ApiModel):
    """The job's MLflow run."""

    run_id: Name
    """The run id; every attempt of the job logs to this run."""

    experiment_id: Name
    """The id of the run's experiment."""

    url: str = Field(max_length=2048)
    """The run's page on the tracking server."""


class WandbRunStatus(ApiModel):
    """The job's Weights & Biases run."""

    run_id: Name
    """The run id; every attempt of the job resumes this run."""

    mode: Literal["online", "offline"]
    """`offline`: the run's files are under `<output>/wandb/`, to upload with `wandb sync`."""

    url: str | None = Field(default=None, max_length=2048)
    """The run's page (online mode only)."""


class TrackingStatus(ApiModel):
    """Where the job's experiment tracking runs are (`spec.tracking`)."""

    mlflow: MlflowRunStatus | None = None
    """The MLflow run."""

    wandb: WandbRunStatus | None = None
    """The Weights & Biases run."""

    tensorboard_uri: StorageUri | None = None
    """The directory of the TensorBoard event files (`tensorboard --logdir` it, or its synced copy)."""

    message: Text | None = None
    """Why a tracker is missing: its server could not be reached (training goes on without it)."""


class SFTJobStatus(ApiModel):
    """Observed state, written by the operator only."""

    phase: Phase = "Pending"
    """Pending, Validating, Queued, Initializing, Generating (distillation), Running, Exporting, Succeeded, Failed or
    Suspended."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The `.metadata.generation` this status describes."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations, one per condition type."""

    attempt: int | None = Field(default=None, ge=0)
    """The current attempt (1 is the first)."""

    attempts: list[AttemptRecord] = Field(default_factory=list, max_length=MAX_HISTORY)
    """The most recent attempts, oldest first."""

    ray_job: RayJobStatus | None = None
    """The current attempt's RayJob."""

    resolved: ResolvedSettings | None = None
    """The values the trainer chose for `auto` and unset fields."""

    dataset: DatasetStats | None = None
    """Dataset statistics from the trainer's preflight."""

    distillation: DistillationStats | None = None
    """What the distillation step generated and kept (`spec.distillation`): prompts, answers kept and dropped by
    reason, teacher requests and tokens, the cache state."""

    progress: Progress | None = None
    """Training progress."""

    metrics: Metrics | None = None
    """Latest metrics."""

    evaluation: EvaluationStatus | None = None
    """Evaluation results: forgetting on the reference set."""

    tracking: TrackingStatus | None = None
    """The experiment tracking runs (MLflow, Weights & Biases) and the TensorBoard directory, with their URLs."""

    best_checkpoint: CheckpointRef | None = None
    """The checkpoint with the lowest evaluation loss."""

    checkpoints: list[CheckpointRef] = Field(default_factory=list, max_length=MAX_HISTORY)
    """The most recent checkpoints, oldest first."""

    output: OutputStatus | None = None
    """Artifacts, once complete."""

    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the first attempt started."""

    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, max_length=64)
    """When the job reached Succeeded or Failed."""

    error: ErrorStatus | None = None
    """Why the job failed."""


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta the API checks; everything else passes through."""

    model_config = ConfigDict(**{**ApiModel.model_config, "extra": "allow"})

    name: DnsLabel | None = None
    """Job name; a DNS-1123 label of at most 63 characters (it labels every child object)."""

    namespace: DnsLabel | None = None
    """Namespace of the job."""


class SFTJob(ApiModel):
    """A supervised fine-tuning job: one base model, one dataset, one method, one output."""

    api_version: Literal["sftjob.dev/v1alpha1"] = "sftjob.dev/v1alpha1"
    """`sftjob.dev/v1alpha1`."""

    kind: Literal["SFTJob"] = "SFTJob"
    """`SFTJob`."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""

    spec: SFTJobSpec
    """The desired run."""

    status: SFTJobStatus | None = None
    """The observed state."""

    @property
    def name(self) -> str:
        """The job's name (empty when the document has none)."""
        return self.metadata.name or ""


def parse_sftjob(document: Any) -> SFTJob:
    """Validate a decoded SFTJob document (camelCase, as stored by the API server).

    Args:
        document: The decoded YAML or JSON object.

    Returns:
        The validated job.

    Raises:
        pydantic.ValidationError: With one entry per problem.
    """
    return SFTJob.model_validate(document, by_alias=True)


__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "MAX_HISTORY",
    "MAX_JOB_NAME",
    "MAX_NAME",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "SFTJob",
    "SFTJobSpec",
    "SFTJobStatus",
    "parse_sftjob",
]
