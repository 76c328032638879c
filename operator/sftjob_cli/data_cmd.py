"""`sftjob data inspect|tokens FILE`: what the data pipeline makes of a dataset; the data part of `sftjob validate`.

FILE is a dataset file, a glob over shards (quoted: `'s3://bucket/data/*.parquet'`), or an SFTJob YAML file,
whose `dataset` section is used as the trainer uses it: a mixture of sources is drawn with the job's seed and
shown source by source (files read, rows, usable examples, what was asked, what was drawn, the realised share).

Exit codes as everywhere in the CLI: 0 fine, 2 a problem with the input (each printed as
`file:line: field: message`). The trainer is imported lazily, inside the handlers.
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

EXIT_OK = 0
EXIT_INVALID = 2
# Terminal highlight of trained tokens (reverse video green) and the plain-text markers used otherwise.
_ON, _OFF = "\x1b[30;42m", "\x1b[0m"
_OPEN, _CLOSE = "[[", "]]"
# A rendered sample longer than this is cut in the human output (the JSON keeps it whole).
_SAMPLE_CHARS = 1500
# `sftjob validate` must answer quickly when object storage is slow or unreachable: short timeouts, one try.
_S3_CONNECT_TIMEOUT_S = 3
_S3_READ_TIMEOUT_S = 20


def register(commands: argparse._SubParsersAction) -> None:
    """Add `sftjob data inspect` and `sftjob data tokens` to the CLI."""
    data = commands.add_parser("data", help="inspect datasets")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    inspect = sub.add_parser("inspect", help="report format, token counts, masks and problems of a dataset file")
    _dataset_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(handler=_cmd_inspect)
    tokens = sub.add_parser("tokens", help="print each training example's input_ids and labels, one JSON line "
                            "per example, as the trainer prepares them")
    _dataset_options(tokens)
    tokens.add_argument("--no-packing", dest="packing", action="store_false",
                        help="the length policy of dataset.packing: false (auto maxSeqLength is the p99)")
    tokens.set_defaults(handler=_cmd_tokens)


def _dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE",
                        help="dataset file (a path or s3://bucket/key), a quoted glob over shards ('dir/*.jsonl'), "
                        "or an SFTJob YAML file: its dataset section, mixture included (the options below that "
                        "set dataset fields are then ignored)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the validation split and the mixture draw (default: the job's, else 42)")
    parser.add_argument("--schema", default="auto",
                        help="auto, prompt_completion, messages, alpaca, sharegpt or text (default: auto)")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="directory of a Hugging Face tokenizer (a model directory: its config.json gives the "
                        "context length); without it counts are UTF-8 bytes")
    parser.add_argument("--chat-template", default="auto", help="auto, chatml, llama3, zephyr or inline Jinja")
    parser.add_argument("--train-on", default="assistant", help="assistant, last_assistant or all")
    parser.add_argument("--reasoning", default="keep", help="keep (default: rendered and trained) or drop")
    parser.add_argument("--max-seq-length", default="auto", help="an integer, or auto (default)")
    parser.add_argument("--overlong", default="truncate_prompt", help="truncate_prompt (default) or drop")
    parser.add_argument("--column-map", action="append", default=[], metavar="FROM=TO",
                        help="rename a column before the format is detected (repeatable)")


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
class _Loaded:
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
    return path.endswith((".yaml", ".yml")) and Path(path).is_file()


def _job_dataset(args: argparse.Namespace) -> tuple[_Loaded | None, list[str]]:
    """The dataset section of the SFTJob in FILE (relative paths resolved against its folder), or problems."""
    from sftjob_api.errors import check_document
    from sftjob_cli.yaml_source import SourceError, load_documents, read_text
    from sftjob_trainer.data import ByteTokenizer

    try:
        documents = load_documents(read_text(args.file), args.file)
    except SourceError as err:
        return None, [str(err)]
    document = next((d for d in documents if isinstance(d.data, dict) and d.data.get("kind") == "SFTJob"), None)
    if document is None:
        return None, [f"{args.file}: no SFTJob document in this YAML file (a dataset file must be .jsonl, .json, "
                      ".parquet or .csv)"]
    job, problems = check_document(document.data)
    if job is None:
        return None, [f"{args.file}:{document.line_of(p.path) or ''}: {p.field}: {p.message}" for p in problems]
    base = Path(args.file).parent
    spec = job.spec.dataset.with_uris(lambda uri: _resolve(uri, base))
    if args.tokenizer:
        tokenizer, problem = load_tokenizer(args.tokenizer)
        if problem is not None:
            return None, [problem]
        context = _model_context(args.tokenizer)
    else:
        tokenizer = _local_tokenizer(job.spec.model.source, base) or ByteTokenizer()
        context = None
    seed = args.seed if args.seed is not None else job.spec.hyperparameters.seed
    return _Loaded(spec, tokenizer, seed, context), []


def _spec_and_tokenizer(args: argparse.Namespace, command: str) -> _Loaded | None:
    """The dataset spec and tokenizer a `sftjob data` command's arguments name; None after printing the problem."""
    if _is_job_file(args.file):
        loaded, job_problems = _job_dataset(args)
        for line in job_problems:
            print(f"sftjob data {command}: {line}", file=sys.stderr)
        return loaded
    spec, problem = _spec_from_args(args)
    tokenizer = None
    if problem is None:
        tokenizer, problem = load_tokenizer(args.tokenizer)
    if problem is not None:
        print(f"sftjob data {command}: {problem}", file=sys.stderr)
        return None
    return _Loaded(spec, tokenizer, args.seed if args.seed is not None else 42, _model_context(args.tokenizer))


def _analyze(loaded: _Loaded) -> Any:
    """The prepared data of `loaded`, read as the trainer reads it.

    Raises:
        DataError: When a file cannot be read (or a glob matches nothing).
    """
    from sftjob_trainer.data import analyze
    from sftjob_trainer.data.pipeline import read_training_data

    sources, validation = read_training_data(loaded.spec, loaded.seed)
    return analyze(loaded.spec, loaded.tokenizer, sources, validation, seed=loaded.seed,
                   model_max_length=loaded.model_max_length)


def _cmd_tokens(args: argparse.Namespace) -> int:
    """One JSON line per training example, `{"line", "input_ids", "labels"}`: the trainer's own examples.

    A stable interface (scripts depend on it): the keys and their meaning stay. A mixture adds `source`, the
    name of the source an example was drawn from, and lists the examples in the drawn (training) order.
    Nothing is printed to stdout when the data has a problem; the problems go to stderr and the exit code is 2.
    """
    from sftjob_trainer.data import DataError

    loaded = _spec_and_tokenizer(args, "tokens")
    if loaded is None:
        return EXIT_INVALID
    try:
        prepared = _analyze(loaded)
    except DataError as err:
        _print_problems(err.problems)
        return EXIT_INVALID
    if prepared.report.errors:
        for error in prepared.report.errors:
            print(_problem_line(error), file=sys.stderr)
        return EXIT_INVALID
    names = [s.name for s in prepared.report.sources]
    sys.stdout.writelines(json.dumps({"line": e.line, "input_ids": e.input_ids, "labels": e.labels}
                                     | ({"source": names[e.source]} if names else {})) + "\n"
                          for e in prepared.train)
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from sftjob_trainer.data import DataError

    loaded = _spec_and_tokenizer(args, "inspect")
    if loaded is None:
        return EXIT_INVALID
    try:
        report = _analyze(loaded).report
    except DataError as err:
        if args.json:
            print(json.dumps({"file": args.file, "format": None, "rows": 0, "dropped": {}, "tokens": 0,
                              "trainable_tokens": 0, "truncated": 0, "duplicates": 0,
                              "errors": [p.to_json() for p in err.problems]}))
        _print_problems(err.problems)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        _print_report(report, loaded.spec, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    for error in report.errors:
        print(_problem_line(error), file=sys.stderr)
    return EXIT_INVALID if report.errors else EXIT_OK


def _problem_line(error: dict[str, Any]) -> str:
    where = error.get("file") or "(dataset)"
    if error.get("line") is not None:
        where += f":{error['line']}"
    field = f" {error['field']}:" if error.get("field") else ""
    return f"{where}:{field} {error['message']}"


def _print_problems(problems: list[Any]) -> None:
    for problem in problems:
        print(str(problem), file=sys.stderr)


def _print_report(report: Any, spec: Any, color: bool) -> None:
    out = sys.stdout.write
    pct = report.length_percentiles
    auto = (" (auto: longest, packing)" if spec.packing else " (auto: p99)") if spec.max_seq_length == "auto" else ""
    out(f"file:        {report.file}\n")
    out(f"format:      {report.format}    chat template: {report.chat_template}    trainOn: {report.train_on}\n")
    out(f"tokenizer:   {report.tokenizer}\n")
    out(f"rows:        {report.rows}    train examples: {report.train_examples}"
        f"    validation examples: {report.validation_examples}\n")
    dropped = ", ".join(f"{reason} {n}" for reason, n in report.dropped.items()) or "none"
    out(f"dropped:     {dropped}\n")
    out(f"duplicates:  {report.duplicates}    truncated: {report.truncated}\n")
    out(f"tokens:      {report.tokens}    trainable: {report.trainable_tokens} ({report.trainable_fraction:.1%})"
        f"    EOS trained: {'yes' if report.eos_trained else 'NO'}\n")
    out(f"length:      p50 {pct.get('p50', 0)}    p95 {pct.get('p95', 0)}    max {pct.get('max', 0)}"
        f"    maxSeqLength {report.max_seq_length}{auto}\n")
    if report.sources:
        out(_mixture_table(report.sources))
    for warning in report.warnings:
        out(f"warning:     {warning}\n")
    for i, sample in enumerate(report.samples, start=1):
        legend = "highlighted" if color else f"between {_OPEN} and {_CLOSE}"
        out(f"\n--- example {i} (line {sample.line}); trained tokens {legend} ---\n")
        text = "".join((f"{_ON}{t}{_OFF}" if color else f"{_OPEN}{t}{_CLOSE}") if trained else t
                       for t, trained in sample.segments)
        out((text if len(text) <= _SAMPLE_CHARS else text[:_SAMPLE_CHARS] + " …") + "\n")


def _mixture_table(sources: list[Any]) -> str:
    """The sources of a mixture, one line each: what was read, asked and drawn."""
    header = ("source", "files", "rows", "usable", "asked", "drawn", "share", "tokens", "validation")
    rows = [header]
    for s in sources:
        asked = (f"weight {s.weight:g}" if s.weight is not None
                 else f"samples {s.samples}" if s.samples is not None else "all")
        rows.append((s.name, f"{s.files}/{s.files_matched}", str(s.rows), str(s.available), asked,
                     str(s.train_examples), f"{s.proportion:.1%}", str(s.tokens), str(s.validation_examples)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "mixture:     " + "\n             ".join(lines) + "\n"


def _resolve(uri: str, base: Path) -> str:
    """A job's dataset URI as seen from here: relative paths are relative to the job file's folder."""
    from sftjob_api.types import is_glob

    if uri.startswith("s3://") or Path(uri).is_absolute() or (not is_glob(uri) and Path(uri).is_file()):
        return uri
    return str(base / uri)


def _readable(uri: str) -> str | None:
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

    from sftjob_trainer.storage import parse_s3

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


def _local_tokenizer(source: str, base: Path) -> Any:
    """A tokenizer from a local model directory, or None (the byte-level fallback is used then)."""
    for candidate in (Path(source), base / source):
        if candidate.is_dir() and (candidate / "tokenizer_config.json").is_file():
            tokenizer, problem = load_tokenizer(str(candidate))
            return tokenizer if problem is None else None
    return None


def check_job_datasets(documents: list[YamlDocument], name: str) -> tuple[list[str], list[str]]:
    """Run the data preflight for each valid SFTJob whose dataset can be read from here.

    Args:
        documents: The parsed (and already validated) documents of one file.
        name: The file name used in messages.

    Returns:
        Problem lines (`file:line: field: message`) and notes (what was checked, with which tokenizer,
        or why a dataset was not checked).
    """
    from sftjob_api.types import parse_sftjob
    from sftjob_trainer.data import ByteTokenizer, DataError, analyze
    from sftjob_trainer.data.pipeline import read_training_data

    problems: list[str] = []
    notes: list[str] = []
    base = Path(name).parent if name != "-" else Path.cwd()
    for document in documents:
        job = parse_sftjob(document.data)
        dataset = job.spec.dataset
        described = dataset.train.describe()
        spec = dataset.with_uris(lambda uri: _resolve(uri, base))
        uris = [s.uri for s in spec.train.mixture()] + ([spec.validation.uri] if spec.validation else [])
        why = next((r for r in (_readable(u) for u in uris) if r), None)
        if why:
            notes.append(f"{name}: dataset {described} not checked: {why}")
            continue
        tokenizer = _local_tokenizer(job.spec.model.source, base) or ByteTokenizer()
        seed = job.spec.hyperparameters.seed
        try:
            train, validation = read_training_data(spec, seed)
        except DataError as err:
            problems.extend(str(p) for p in err.problems)
            continue
        report = analyze(spec, tokenizer, train, validation, seed=seed).report
        if not report.errors:
            fallback = " (byte-level token counts)" if isinstance(tokenizer, ByteTokenizer) else ""
            mix = "".join(f"; {s.name} {s.train_examples} ({s.proportion:.1%})" for s in report.sources)
            notes.append(f"{name}: dataset {described}: {report.format}, {report.train_examples} examples, "
                         f"{report.trainable_tokens} trainable tokens{fallback}{mix}")
        for error in report.errors:
            if error.get("line") is None and str(error.get("field") or "").startswith("dataset."):
                # A problem of the data as a whole points at the job's setting that governs it.
                path = ("spec", *str(error["field"]).split("."))
                line = document.line_of(path)
                problems.append(f"{name}:{line}: spec.{error['field']}: {error['message']} ({error['file']})")
            else:
                problems.append(_problem_line(error))
    return problems, notes
