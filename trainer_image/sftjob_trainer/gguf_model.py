"""GGUF files (llama.cpp, Ollama) as base models: checked, dequantised once per node, then a normal model directory.

transformers reads a GGUF file's config, tokenizer (with its chat template) and weights, dequantising every
tensor to float32. A model loaded that way refuses `save_pretrained` ("quantized with gguf and is not
serializable"), and PEFT, Ray Train workers and the exporters all want a `save_pretrained` directory. So the
file is converted once per node into one, keyed by the file's sha256: the model is rebuilt from its config
without the GGUF quantisation entry and given the dequantised weights, then saved as safetensors with the
tokenizer. Every later step (tokenizer, `load_model` in the training dtype, merges, full exports) reads that
directory like any other base model, and `ORIGIN_FILE` beside it says which GGUF file it came from (the
manifest records it).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.types import ModelSpec
from sftjob_trainer import object_store
from sftjob_trainer.trainer_error import TrainerError

# Written into a converted directory: the GGUF file it was made from (see GgufOrigin).
ORIGIN_FILE = "sftjob-gguf.json"
SOURCE_FIELD = "spec.model.source"
# The first bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"
# Tensor types that need no quantisation codec (gguf.dequantize reads them directly).
_PLAIN_TYPES = ("F32", "F16")


@dataclass(frozen=True)
class GgufOrigin:
    """The GGUF file a base model directory was converted from (recorded in manifest.json)."""

    file: str
    """The file name."""
    sha256: str
    """Hex sha256 of the file."""
    quantization: str
    """llama.cpp's file type, e.g. `Q4_1`, `Q4_K_M`, `Q8_0`, `F16`."""
    architecture: str
    """`general.architecture`, e.g. `llama`, `qwen2`."""
    tensor_types: dict[str, int]
    """How many tensors of each GGML type the file holds, e.g. {"Q4_1": 210, "F32": 61}."""

    def to_wire(self) -> dict[str, Any]:
        """The manifest's `baseModel.gguf` entry."""
        return {"file": self.file, "sha256": self.sha256, "quantization": self.quantization,
                "architecture": self.architecture, "tensorTypes": self.tensor_types}


def supported_architectures() -> list[str]:
    """GGUF architectures the installed transformers converts (`general.architecture` values)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    # The mapping it is read from also keys the file's non-architecture sections.
    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})


def supported_tensor_types() -> set[str]:
    """GGML tensor types the installed `gguf` package dequantises."""
    from gguf import quants

    return {*_PLAIN_TYPES, *(qtype.name for qtype in quants._type_traits)}


def _unreadable(source: str, what: str) -> TrainerError:
    return TrainerError(ErrorCode.MODEL_UNREADABLE, f"base model {source}: {what}", SOURCE_FIELD)


def inspect(path: Path, source: str) -> GgufOrigin:
    """Check a GGUF file before anything is loaded: the format, the architecture and every tensor type.

    Args:
        path: The local file.
        source: `spec.model.source` as the user wrote it, for messages.

    Returns:
        What the file is (its sha256 included).

    Raises:
        TrainerError: ModelUnreadable naming `spec.model.source` for a file that is not GGUF, an
            architecture transformers cannot convert or a quantisation type it cannot dequantise.
    """
    from gguf import GGUFReader, LlamaFileType

    with path.open("rb") as handle:
        if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise _unreadable(source, f"{path.name} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError) as err:  # a truncated or corrupt header
        raise _unreadable(source, f"{path.name} is not a readable GGUF file ({err})") from None

    def field(name: str) -> Any:
        value = reader.get_field(name)
        return None if value is None else value.contents()

    architecture = str(field("general.architecture") or "")
    supported = supported_architectures()
    # transformers maps a few llama.cpp names itself (qwen2moe, qwen3moe, gpt-oss, minimax-m2, t5encoder).
    normalised = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2",
                  "t5encoder": "t5"}.get(architecture, architecture)
    if architecture not in supported and normalised not in supported:
        raise _unreadable(source, f"GGUF architecture {architecture or '(none)'!r} cannot be converted by transformers "
                                  f"(it converts: {', '.join(supported)}); use a Hugging Face checkpoint of this model")
    types = Counter(tensor.tensor_type.name for tensor in reader.tensors)
    unsupported = sorted(set(types) - supported_tensor_types())
    if unsupported:
        raise _unreadable(source, f"GGUF tensor types {', '.join(unsupported)} cannot be dequantised by the gguf "
                                  "package; export the model with a common type (Q8_0, Q4_K_M, Q4_0, F16)")
    file_type = field("general.file_type")
    try:
        quantization = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        quantization = types.most_common(1)[0][0] if types else "unknown"
    return GgufOrigin(file=path.name, sha256=object_store.sha256_file(path), quantization=quantization,
                      architecture=architecture, tensor_types=dict(types.most_common()))


def fetch(spec: ModelSpec, cache: Path) -> Path:
    """The GGUF file of `spec` on local disk: the path itself, or a download from s3://.

    A file in an `hf://` repository comes through `model_loading.hub_file`, with the rest of the Hub's handling.

    Raises:
        TrainerError: ModelUnreadable when the file is missing, or a storage error code.
    """
    if object_store.is_s3(spec.source):
        target = cache / "files" / hashlib.sha256(spec.source.encode()).hexdigest()[:16] / Path(spec.source).name
        if not target.is_file():
            partial = target.with_name(target.name + ".part")
            try:
                object_store.download_file(spec.source, partial)
            except object_store.StorageError as err:
                code = ErrorCode.MODEL_UNREADABLE if err.code == object_store.NOT_FOUND else err.code
                raise TrainerError(code, f"base model: {err}", SOURCE_FIELD) from None
            partial.replace(target)  # a download cut short never looks complete
        return target
    path = Path(spec.source)
    if not path.is_file():
        raise _unreadable(spec.source, "no such file" if not path.exists() else "is not a file")
    return path


def convert(gguf_path: Path, origin: GgufOrigin, target: Path) -> None:
    """Write the model of a GGUF file into `target` as a `save_pretrained` directory (float32 safetensors).

    Args:
        gguf_path: The GGUF file (already checked by `inspect`).
        origin: What `inspect` found.
        target: The directory to fill.

    Raises:
        TrainerError: ModelUnreadable when transformers cannot read the file after all.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = gguf_path.parent, gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as err:
        raise _unreadable(origin.file, f"transformers cannot load this GGUF file: {err}") from None
    config = loaded.config
    # A GGUF-loaded model is marked quantized and refuses save_pretrained; the same architecture built from
    # the config without that entry takes the dequantised weights (assigned: no second copy in memory).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / ORIGIN_FILE).write_text(json.dumps(asdict(origin), indent=2))


def origin_of(model_dir: Path) -> GgufOrigin | None:
    """The GGUF file a base model directory was converted from; None for any other model directory."""
    path = model_dir / ORIGIN_FILE
    if not path.is_file():
        return None
    return GgufOrigin(**json.loads(path.read_text()))
