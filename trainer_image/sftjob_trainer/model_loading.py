"""Base model and tokenizer: from `hf://org/name[@rev]`, `s3://bucket/prefix`, a local directory or a GGUF file.

An s3:// model is downloaded (and a GGUF file converted, see `sftjob_trainer.gguf_model`) once per node:
workers on one node take a file lock, and the first one to hold it does the work while the others wait
and then reuse the copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.types import ModelSpec
from sftjob_trainer import object_store
from sftjob_trainer.trainer_error import TrainerError

PAD_TOKEN = "<|pad|>"
CACHE_ENV = "SFTJOB_CACHE_DIR"
# Marks a complete download; a directory without it was cut short and is fetched again.
_COMPLETE = ".sftjob-complete"


def cache_root() -> Path:
    """Where downloaded models live on this node (`SFTJOB_CACHE_DIR`, else a temp-dir subfolder)."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "sftjob-cache")


def split_hf(source: str, revision: str | None) -> tuple[str, str | None]:
    """`hf://org/name@rev` → (`org/name`, revision); `revision` overrides the suffix."""
    repo, _, suffix = source[len("hf://") :].partition("@")
    return repo, revision or suffix or None


def _fill_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """`target`, filled by `fill(target)` unless a complete copy is there: once per node, under a file lock."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_suffix(".lock")
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / _COMPLETE).exists():
                fill(target)
                (target / _COMPLETE).write_text("complete")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _download_s3(uri: str) -> Path:
    def fill(path: Path) -> None:
        object_store.download_dir(uri, path)

    return _fill_once(cache_root() / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16], fill)


@contextmanager
def _hub_errors(spec: ModelSpec) -> Iterator[None]:
    """Hugging Face Hub failures as TrainerErrors naming the field to fix."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise TrainerError(
            ErrorCode.ACCESS_DENIED,
            f"{spec.source} is gated: put an HF_TOKEN with access into the model.secretRef Secret",
            "spec.model.secretRef",
        ) from None
    except RepositoryNotFoundError:
        raise TrainerError(
            ErrorCode.MODEL_UNREADABLE,
            f"{spec.source}: no such model repository (or it is private and HF_TOKEN is missing)",
            "spec.model.source",
        ) from None
    except EntryNotFoundError:
        raise TrainerError(ErrorCode.MODEL_UNREADABLE,
                           f"{spec.source} has no file {spec.gguf_file}", "spec.model.ggufFile") \
            from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise TrainerError(
            ErrorCode.STORAGE_UNAVAILABLE, f"{spec.source}: cannot download from the Hugging Face Hub: {err}",
            "spec.model.source",
        ) from None


def _download_hf(spec: ModelSpec) -> Path:
    from huggingface_hub import snapshot_download

    repo, revision = split_hf(spec.source, spec.revision)
    patterns = None if spec.allow_unsafe_weights else ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja"]
    with _hub_errors(spec):
        path = snapshot_download(
            repo, revision=revision, token=os.environ.get("HF_TOKEN") or None, allow_patterns=patterns,
            cache_dir=str(cache_root() / "hf"),
        )
    return Path(path)


def hub_file(spec: ModelSpec, filename: str) -> Path:
    """One file of the `hf://` repository of `spec` (e.g. its `ggufFile`), from the node's Hub cache or downloaded.

    Raises:
        TrainerError: ModelUnreadable, AccessDenied or StorageUnavailable, naming the field to fix.
    """
    from huggingface_hub import hf_hub_download

    repo, revision = split_hf(spec.source, spec.revision)
    with _hub_errors(spec):
        path = hf_hub_download(repo, filename, revision=revision, token=os.environ.get("HF_TOKEN") or None,
                               cache_dir=str(cache_root() / "hf"))
    return Path(path)


def _gguf_model_dir(spec: ModelSpec) -> Path:
    """A `save_pretrained` directory converted from the GGUF file of `spec` (once per node and file content)."""
    from sftjob_trainer import gguf_model

    path = (hub_file(spec, str(spec.gguf_file)) if spec.source.startswith("hf://")
            else gguf_model.fetch(spec, cache_root() / "gguf"))

    def fill(directory: Path) -> None:
        # Checked only before a conversion: reading the header costs seconds (a 49k-token vocabulary is parsed).
        gguf_model.convert(path, gguf_model.inspect(path, spec.source), directory)

    return _fill_once(cache_root() / "gguf" / "models" / object_store.sha256_file(path)[:32], fill)


def resolve_model_dir(spec: ModelSpec) -> Path:
    """A local directory holding the base model's files.

    Args:
        spec: `spec.model`.

    Returns:
        The directory (a download cache for hf:// and s3://, a converted copy of a GGUF file, the path
        itself otherwise).

    Raises:
        TrainerError: ModelUnreadable, AccessDenied, MissingCredentials or StorageUnavailable.
    """
    if spec.is_gguf:
        return _gguf_model_dir(spec)
    if spec.source.startswith("hf://"):
        return _download_hf(spec)
    if object_store.is_s3(spec.source):
        try:
            return _download_s3(spec.source)
        except object_store.StorageError as err:
            code = ErrorCode.MODEL_UNREADABLE if err.code == object_store.NOT_FOUND else err.code
            raise TrainerError(code, f"base model: {err}", "spec.model.source") from None
    path = Path(spec.source)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json (not a save_pretrained directory)"
        raise TrainerError(ErrorCode.MODEL_UNREADABLE, f"base model {spec.source} {what}", "spec.model.source")
    return path


def load_tokenizer(model_dir: Path, spec: ModelSpec) -> Any:
    """The tokenizer, with a padding token that is not EOS (so EOS is trained, never masked as padding).

    Uses `<|pad|>` when the vocabulary has it, else an unused special token such as `<unk>`, else adds
    `<|pad|>` (the model's embeddings then grow by one row: see `load_model`).

    Args:
        model_dir: The model directory.
        spec: `spec.model` (for trust_remote_code).

    Returns:
        The tokenizer.

    Raises:
        TrainerError: ModelUnreadable when no tokenizer loads.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as err:
        raise TrainerError(ErrorCode.MODEL_UNREADABLE,
                           f"tokenizer of {spec.source}: {err}", "spec.model.source") from None
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        if PAD_TOKEN in vocab:
            tokenizer.pad_token = PAD_TOKEN
        elif tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "right"
    return tokenizer


def torch_dtype(name: str) -> Any:
    """The torch dtype for `bf16`/`fp16`/`fp32` or `bfloat16`/`float16`/`float32`."""
    import torch

    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    return table[name]


def load_model(model_dir: Path, spec: ModelSpec, tokenizer: Any, dtype: str, quantization: Any = None,
               attention: str = "sdpa") -> Any:
    """The causal LM, in `dtype`, embeddings resized when the tokenizer gained a token.

    Args:
        model_dir: The model directory.
        spec: `spec.model` (safetensors-only unless allowUnsafeWeights, trust_remote_code).
        tokenizer: From `load_tokenizer`.
        dtype: `fp32`, `bf16` or `fp16`.
        quantization: A transformers `BitsAndBytesConfig` for QLoRA, or None.
        attention: The attention implementation (`sdpa`, or the varlen SDPA of `sftjob_trainer.attention`).

    Returns:
        The model (on CPU; the Trainer moves it).

    Raises:
        TrainerError: ModelUnreadable when the weights do not load.
    """
    from transformers import AutoModelForCausalLM

    from sftjob_trainer.attention import VARLEN_ATTENTION, register_varlen_attention

    if attention == VARLEN_ATTENTION:
        register_varlen_attention()
    kwargs: dict[str, Any] = {
        "attn_implementation": attention,
        "dtype": torch_dtype(dtype),
        "trust_remote_code": spec.trust_remote_code,
        "use_safetensors": None if spec.allow_unsafe_weights else True,
    }
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        hint = "" if spec.allow_unsafe_weights else " (only safetensors load unless model.allowUnsafeWeights)"
        raise TrainerError(ErrorCode.MODEL_UNREADABLE,
                           f"base model {spec.source}: {err}{hint}", "spec.model.source") from None
    embeddings: Any = model.get_input_embeddings()
    if len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
