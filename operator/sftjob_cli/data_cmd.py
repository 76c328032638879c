"""`sftjob data inspect|tokens FILE`: what the data pipeline makes of a dataset; the data part of `sftjob validate`.

FILE is a dataset file, a glob over shards (quoted: `'s3://bucket/data/*.parquet'`), or an SFTJob YAML file,
whose `dataset` section is used as the trainer uses it: a mixture of sources is drawn with the job's seed and
shown source by source (files read, rows, usable examples, what was asked, what was drawn, the realised share).

Exit codes as everywhere in the CLI: 0 fine, 2 a problem with the input (each printed as
`file:line: field: message`). The trainer is imported lazily, inside the handlers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftjob_cli.common import EXIT_INVALID, EXIT_OK
from sftjob_cli.data_loading import (
    analyze_loaded,
    local_tokenizer,
    resolve_uri,
    spec_and_tokenizer,
    unreadable_reason,
)
from sftjob_cli.data_report_text import print_report, problem_line

if TYPE_CHECKING:
    from sftjob_api.types import DistillationSpec
    from sftjob_cli.yaml_source import YamlDocument


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



def _cmd_tokens(args: argparse.Namespace) -> int:
    """One JSON line per training example, `{"line", "input_ids", "labels"}`: the trainer's own examples.

    A stable interface (scripts depend on it): the keys and their meaning stay. A mixture adds `source`, the
    name of the source an example was drawn from, and lists the examples in the drawn (training) order.
    Nothing is printed to stdout when the data has a problem; the problems go to stderr and the exit code is 2.
    """
    from sftjob_trainer.data import DataError

    loaded = spec_and_tokenizer(args, "tokens")
    if loaded is None:
        return EXIT_INVALID
    try:
        prepared = analyze_loaded(loaded)
    except DataError as err:
        _print_problems(err.problems)
        return EXIT_INVALID
    if prepared.report.errors:
        for error in prepared.report.errors:
            print(problem_line(error), file=sys.stderr)
        return EXIT_INVALID
    names = [s.name for s in prepared.report.sources]
    sys.stdout.writelines(json.dumps({"line": e.line, "input_ids": e.input_ids, "labels": e.labels}
                                     | ({"source": names[e.source]} if names else {})) + "\n"
                          for e in prepared.train)
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from sftjob_trainer.data import DataError

    loaded = spec_and_tokenizer(args, "inspect")
    if loaded is None:
        return EXIT_INVALID
    try:
        report = analyze_loaded(loaded).report
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
        print_report(report, loaded.spec, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    for error in report.errors:
        print(problem_line(error), file=sys.stderr)
    return EXIT_INVALID if report.errors else EXIT_OK



def _print_problems(problems: list[Any]) -> None:
    for problem in problems:
        print(str(problem), file=sys.stderr)


def check_job_datasets(documents: list[YamlDocument], name: str) -> tuple[list[str], list[str]]:
    """Run the data preflight for each valid SFTJob whose dataset can be read from here.

    Args:
        documents: The parsed (and already validated) documents of one file.
        name: The file name used in messages.

    Returns:
        Problem lines (`file:line: field: message`) and notes (what was checked, with which tokenizer,
        or why a dataset was not checked).
    """
    from sftjob_api.types import DISTILLED_TRAIN_URI, parse_sftjob
    from sftjob_trainer.data import ByteTokenizer, DataError, analyze
    from sftjob_trainer.data.pipeline import read_training_data

    problems: list[str] = []
    notes: list[str] = []
    base = Path(name).parent if name != "-" else Path.cwd()
    for document in documents:
        job = parse_sftjob(document.data)
        if job.spec.distillation is not None:  # its training data does not exist before the job runs
            notes.append(f"{name}: dataset {DISTILLED_TRAIN_URI}: {_distilled_note(job.spec.distillation, base)}")
            continue
        dataset = job.spec.dataset
        described = dataset.train.describe()
        spec = dataset.with_uris(lambda uri: resolve_uri(uri, base))
        uris = [s.uri for s in spec.train.mixture()] + ([spec.validation.uri] if spec.validation else [])
        why = next((r for r in (unreadable_reason(u) for u in uris) if r), None)
        if why:
            notes.append(f"{name}: dataset {described} not checked: {why}")
            continue
        tokenizer = local_tokenizer(job.spec.model.source, base) or ByteTokenizer()
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
            # Rows the checks, filters and de-duplication dropped: a user who counted the file's lines sees why
            # the examples are fewer.
            dropped = ", ".join(f"{count} {reason.replace('_', ' ')}"
                                for reason, count in sorted(report.dropped.items()))
            notes.append(f"{name}: dataset {described}: {report.format}, {report.train_examples} examples"
                         f"{f' (dropped: {dropped})' if dropped else ''}, "
                         f"{report.trainable_tokens} trainable tokens{fallback}{mix}")
        for error in report.errors:
            if error.get("line") is None and str(error.get("field") or "").startswith("dataset."):
                # A problem of the data as a whole points at the job's setting that governs it.
                path = ("spec", *str(error["field"]).split("."))
                line = document.line_of(path)
                problems.append(f"{name}:{line}: spec.{error['field']}: {error['message']} ({error['file']})")
            else:
                problems.append(problem_line(error))
    return problems, notes


def _distilled_note(distillation: DistillationSpec, base: Path) -> str:
    """Where a distillation job's training data comes from, with the prompt count when the file is readable here."""
    from sftjob_trainer.data import DataError
    from sftjob_trainer.data.readers import read_dataset

    prompts = distillation.prompts
    if prompts.generate is not None:
        source = f"{prompts.generate.count} instructions grown from {prompts.generate.seed_tasks}"
    else:
        assert prompts.uri is not None  # PromptsSpec holds exactly one of uri and generate
        source = prompts.uri
        uri = resolve_uri(prompts.uri, base)
        # The count is a courtesy: a prompts file that cannot be read is reported when the job reads it.
        with contextlib.suppress(DataError):
            if unreadable_reason(uri) is None:
                source += f" ({len(read_dataset(uri, prompts.format).rows)} prompts)"
    return f"generated by spec.distillation from {source} before training; not checked here"
