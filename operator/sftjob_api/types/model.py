"""The base model (`spec.model`) and the fine-tuning method (`spec.method`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from sftjob_api.base import MAX_NAME, ApiModel, CelRule, ModelUri, Name, Text, matches
from sftjob_api.types.common import SecretReference

# GGUF files (llama.cpp's format): a source with this suffix, or a file named by model.ggufFile.
GGUF_SUFFIX = ".gguf"
# A file in a repository: path segments that start with a letter, digit or '_' (so never '..').
_GGUF_FILE = r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*\.gguf$"
GgufFile = Annotated[
    str,
    Field(max_length=MAX_NAME, json_schema_extra={"pattern": _GGUF_FILE}),
    matches(_GGUF_FILE, "a .gguf file in the repository, e.g. model.Q4_K_M.gguf or Q4_K_M/model.gguf"),
]


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
