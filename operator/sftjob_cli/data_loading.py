"""What a `sftjob data` command works on: the dataset spec (from the options or an SFTJob file) and a tokenizer.

Also whether a job's dataset can be read from this machine at all (`sftjob validate` checks only those).
The trainer is imported lazily, inside the functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sftjob_cli.yaml_source import YamlDocument

# `sftjob validate` must answer quickly when object storage is slow or unreachable: short timeouts, one try.
_S3_CONNECT_TIMEOUT_S = 3
_S3_READ_TIMEOUT_S = 20


def _spec_from_args(args: argparse.Namespace) -> tuple[Any, str | None]:
    """A DatasetSpec for the options, or an error paragraph naming the option."""
    from pydantic import ValidationError

    from sftjob_api.types import DatasetSpec
    from sftjob_trainer.data.formats import SCHEMAS

    if args.schema not in ("auto", *SCHEMAS):
        return None, f"--schema: unknown schema '{args.schema}'; one of: auto, {', '.join(SCHEMAS)}"
    column_map = {}
    for item in args.column_map:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            return None, f"--column-map: expected FROM=TO, got '{item}'"
        column_map[source] = target
    max_len: int | str = args.max_seq_length
    if max_len != "auto":
        try:
            max_len = int(max_len)
        except ValueError:
            return None, f"--max-seq-length: expected an integer or auto, got '{args.max_seq_length}'"
    document = {"train": {"uri": args.file}, "schema": args.schema, "chatTemplate": args.chat_template,
                "trainOn": args.train_on, "reasoning": args.reasoning, "maxSeqLength": max_len,
                "overlong": args.overlong, "columnMap": column_map, "packing": getattr(args, "packing", True)}
    try:
        return DatasetSpec.model_validate(document), None
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        option = {"chatTemplate": "--chat-template", "trainOn": "--train-on", "maxSeqLength": "--max-seq-length",
                  "overlong": "--overlong", "reasoning": "--reasoning", "train": "FILE"}.get(
            str(first["loc"][0]), str(first["loc"][0]))
        return None, f"{option}: {first['msg'].removeprefix('Value error, ')}"


def load_tokenizer(path: str | None) -> tuple[Any, str | None]:
    """The tokenizer in directory `path` (the byte-level fallback when None), or an error paragraph."""
    from sftjob_trainer.data import ByteTokenizer

    if path is None:
        return ByteTokenizer(), None
    if not Path(path, "tokenizer_config.json").is_file() and not Path(path, "tokenizer.json").is_file():
        return None, f"--tokenizer: {path}: no tokenizer_config.json or tokenizer.json in this directory"
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        return None, f"--tokenizer: {path}: cannot load the tokenizer: {err}"
    if not getattr(tokenizer, "is_fast", False):
        return None, f"--tokenizer: {path}: a fast tokenizer (tokenizer.json) is needed for the offset-based masks"
    return tokenizer, None


def _model_context(path: str | None) -> int | None:
    """The context length in a model directory's config.json (what the trainer caps maxSeqLength at), or None."""
    if path is None or not Path(path, "config.json").is_file():
        return None
    try:
        value = json.loads(Path(path, "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


@dataclass
class Loaded:
    """What a `sftjob data` command works on."""

    spec: Any
    """The DatasetSpec (from the options, or the job's with paths resolved)."""
    tokenizer: Any
    """The tokenizer, or the byte-level fallback."""
    seed: int
    """The seed."""
    model_max_length: int | None
    """The model's context length, when known."""


def _is_job_file(path: str) -> bool:
    # A dataset file is never YAML: a .yaml FILE is an SFTJob.
    return path.endswith((".yaml", ".yml")) and Path(path).is_file()


def _sftjob_document(documents: list[YamlDocument]) -> list[YamlDocument] | str:
    """The first SFTJob document, or why the file is neither a job nor a dataset."""
    document = next((d for d in documents if isinstance(d.data, dict) and d.data.get("kind") == "SFTJob"), None)
    if document is None:
        return "no SFTJob document in this YAML file (a dataset file must be .jsonl, .json, .parquet or .csv)"
    return [document]


def _job_dataset(args: argparse.Namespace, prefix: str) -> Loaded | None:
    """The dataset section of the SFTJob in FILE (relative paths resolved against its folder).

    None after printing the problems on stderr, each after `prefix`.
    """
    from sftjob_api.types import parse_sftjob
    from sftjob_cli.common import read_valid_documents
    from sftjob_trainer.data import ByteTokenizer

    documents = read_valid_documents(args.file, prefix, pick=_sftjob_document)
    if documents is None:
        return None
    job = parse_sftjob(documents[0].data)
    base = Path(args.file).parent
    spec = job.spec.dataset.with_uris(lambda uri: resolve_uri(uri, base))
    if args.tokenizer:
        tokenizer, problem = load_tokenizer(args.tokenizer)
        if problem is not None:
            print(f"{prefix}{problem}", file=sys.stderr)
            return None
        context = _model_context(args.tokenizer)
    else:
        tokenizer = local_tokenizer(job.spec.model.source, base) or ByteTokenizer()
        context = None
    seed = args.seed if args.seed is not None else job.spec.hyperparameters.seed
    return Loaded(spec, tokenizer, seed, context)


def spec_and_tokenizer(args: argparse.Namespace, command: str) -> Loaded | None:
    """The dataset spec and tokenizer a `sftjob data` command's arguments name; None after printing the problem."""
    prefix = f"sftjob data {command}: "
    if _is_job_file(args.file):
        return _job_dataset(args, prefix)
    spec, problem = _spec_from_args(args)
    tokenizer = None
    if problem is None:
        tokenizer, problem = load_tokenizer(args.tokenizer)
    if problem is not None:
        print(f"{prefix}{problem}", file=sys.stderr)
        return None
    return Loaded(spec, tokenizer, args.seed if args.seed is not None else 42, _model_context(args.tokenizer))


def analyze_loaded(loaded: Loaded) -> Any:
    """The prepared data of `loaded`, read as the trainer reads it.

    Raises:
        DataError: When a file cannot be read (or a glob matches nothing).
    """
    from sftjob_trainer.data import analyze
    from sftjob_trainer.data.pipeline import read_training_data

    sources, validation = read_training_data(loaded.spec, loaded.seed)
    return analyze(loaded.spec, loaded.tokenizer, sources, validation, seed=loaded.seed,
                   model_max_length=loaded.model_max_length)



def resolve_uri(uri: str, base: Path) -> str:
    """A job's dataset URI as seen from here: relative paths are relative to the job file's folder."""
    from sftjob_api.types import is_glob

    if uri.startswith("s3://") or Path(uri).is_absolute() or (not is_glob(uri) and Path(uri).is_file()):
        return uri
    return str(base / uri)


def unreadable_reason(uri: str) -> str | None:
    """None when the dataset file (or a glob's folder) can be read from here, else why not (then it is not checked)."""
    from sftjob_api.types import is_glob
    from sftjob_trainer.data.readers import split_glob

    glob = is_glob(uri)
    if not uri.startswith("s3://"):
        if glob:
            folder = split_glob(uri)[0] or "."
            return None if Path(folder).is_dir() else "no such folder on this machine"
        return None if Path(uri).is_file() else "no such file on this machine"
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
        # Without credentials boto3 would probe instance metadata for seconds before giving up.
        return "no AWS credentials in the environment"
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    from sftjob_trainer.object_store import parse_s3

    loc = parse_s3(split_glob(uri)[0] if glob else uri)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, region_name=region,
                          config=Config(connect_timeout=_S3_CONNECT_TIMEOUT_S, read_timeout=_S3_READ_TIMEOUT_S,
                                        retries={"max_attempts": 1}))
    try:
        if glob:  # the listing the trainer makes: a glob that matches nothing is then reported by the reader
            client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key.rstrip("/") + "/" if loc.key else "",
                                   MaxKeys=1)
        else:
            client.head_object(Bucket=loc.bucket, Key=loc.key)
    except (BotoCoreError, ClientError) as err:
        return f"not reachable from here ({type(err).__name__})"
    return None


def local_tokenizer(source: str, base: Path) -> Any:
    """A tokenizer from a local model directory, or None (the byte-level fallback is used then)."""
    for candidate in (Path(source), base / source):
        if candidate.is_dir() and (candidate / "tokenizer_config.json").is_file():
            tokenizer, problem = load_tokenizer(str(candidate))
            return tokenizer if problem is None else None
    return None

