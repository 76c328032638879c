"""The data pipeline: rows to tokens with loss masks, then length policy, de-duplication, split and preflight.

Rows become conversations, conversations rendered text, text tokens with labels.

`prepare_dataset` reads the files and raises `DataError` on anything that dooms the job;
`analyze` does the same work on rows already read and reports problems instead of raising
(`sftjob data inspect` and `sftjob validate` print them).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import replace
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.types import DatasetSpec, MixtureSource
from sftjob_trainer.data.cache import KEY_PREFIX_CHARS, DataCache, cache_key
from sftjob_trainer.data.cache import load as load_cached
from sftjob_trainer.data.cache import store as store_cached
from sftjob_trainer.data.conversation import Conversation
from sftjob_trainer.data.encoding import Encoded, Renderers, render_all, served_prompt, stop_token_ids, token_samples
from sftjob_trainer.data.examples import Example, PreparedData
from sftjob_trainer.data.formats import convert_rows
from sftjob_trainer.data.length_policy import apply_length, choose_max_length, model_limit, percentile
from sftjob_trainer.data.mixture import VALIDATION_FILE_SOURCE, draw, mixture_targets, rows_to_read
from sftjob_trainer.data.preflight import MAX_DUPLICATE_SHARE, preflight_problems, report_sources
from sftjob_trainer.data.problems import DataError, Problem
from sftjob_trainer.data.readers import RawDataset, SourceData, read_source
from sftjob_trainer.data.rendering import TemplateError, TrainOn
from sftjob_trainer.data.report import DataReport
from sftjob_trainer.data.selection import dedup, quality_filter, split_held_out
from sftjob_trainer.data.templates import end_of_turn_markers
from sftjob_trainer.data.tokens import IGNORE_INDEX, ByteTokenizer, first_token_at

log = logging.getLogger(__name__)


def read_training_data(spec: DatasetSpec, seed: int) -> tuple[list[SourceData], SourceData | None]:
    """Read the training sources and the validation file (each a file or a glob over shards).

    A source with a `samples` count reads its shards in a seeded order only until it has enough rows
    (`mixture.rows_to_read`); every other source reads all of its files.

    Raises:
        DataError: DatasetUnreadable (a missing file, a glob that matches nothing), a storage code, or
            InvalidDataset (a malformed file).
    """
    sources = []
    for index, source in enumerate(spec.train.mixture()):
        field_name = "dataset.train.uri" if spec.train.sources is None else f"dataset.train.sources[{index}].uri"
        sources.append(read_source(source.name or "", source.uri, source.format or "auto", field=field_name,
                                   min_rows=rows_to_read(source.samples, spec.validation_split), seed=seed))
    validation = None
    if spec.validation is not None:
        validation = read_source("validation", spec.validation.uri, spec.validation.format,
                                 field="dataset.validation.uri")
    return sources, validation


def training_digest(sources: list[SourceData]) -> str:
    """The digest of the training data: the file's sha256 for one file, else one over every source's digest."""
    if len(sources) == 1:
        return sources[0].sha256
    return hashlib.sha256("".join(f"{s.name}\0{s.sha256}\n" for s in sources).encode()).hexdigest()


def prepare_dataset(spec: DatasetSpec, tokenizer: Any, *, seed: int, model_max_length: int | None = None,
                    cache: DataCache | None = None) -> PreparedData:
    """Read, render, tokenize, mask, filter, split, mix and check the dataset of a job.

    Args:
        spec: The job's `dataset` section.
        tokenizer: A fast Hugging Face tokenizer whose pad token is not its EOS token.
        seed: The job's seed (validation split, shard order of a sample, mixture draw and order).
        model_max_length: The model's context length (caps `maxSeqLength`).
        cache: Where prepared data is looked up by content hash and stored (None: no cache). The files
            are read either way (their bytes are part of the key); a hit skips everything after that.
            Only data that passed every check is stored.

    Returns:
        The prepared examples; `report.cache` says `hit <key12>` or `miss <key12>` when a cache was given.

    Raises:
        DataError: InvalidDataset, DatasetUnreadable, a storage code, or PreflightFailed.
    """
    train, validation = read_training_data(spec, seed)
    key = None
    if cache is not None and cache.roots:
        key = cache_key(spec, tokenizer, training_digest(train), validation.sha256 if validation else None, seed,
                        model_max_length)
    if cache is not None and key is not None:
        found = load_cached(cache, key)
        if found is not None:
            cached, root = found
            cached.report.cache = f"hit {key[:KEY_PREFIX_CHARS]}"
            log.info("data: cache hit %s (%s)", key[:KEY_PREFIX_CHARS], root)
            return cached
    prepared, invalid, preflight = _build(spec, tokenizer, train, validation, seed, model_max_length)
    if invalid:
        raise DataError.from_problems(ErrorCode.INVALID_DATASET, invalid)
    if preflight:
        raise DataError.from_problems(ErrorCode.PREFLIGHT_FAILED, preflight)
    if cache is not None and key is not None:
        prepared.report.warnings.extend(store_cached(cache, key, prepared))
        prepared.report.cache = f"miss {key[:KEY_PREFIX_CHARS]}"
        log.info("data: cache miss %s, prepared and stored", key[:KEY_PREFIX_CHARS])
    return prepared


def analyze(spec: DatasetSpec, tokenizer: Any, train: RawDataset | list[SourceData],
            validation: RawDataset | SourceData | None = None, *, seed: int = 42,
            model_max_length: int | None = None) -> PreparedData:
    """The same work as `prepare_dataset` on data already read; problems go to `report.errors`.

    Args:
        spec: The `dataset` section.
        tokenizer: The tokenizer (or `ByteTokenizer`).
        train: One file's rows, or the sources of `read_training_data` (one per `spec.train.mixture()`).
        validation: The validation file's rows, if any.
        seed: The job's seed.
        model_max_length: The model's context length.
    """
    sources = [_whole(train, spec.train.mixture()[0].name or "")] if isinstance(train, RawDataset) else train
    val = _whole(validation, "validation") if isinstance(validation, RawDataset) else validation
    prepared, _, _ = _build(spec, tokenizer, sources, val, seed, model_max_length)
    return prepared


def _whole(raw: RawDataset, name: str) -> SourceData:
    return SourceData(name=name, uri=raw.uri, files=[raw], files_matched=1)


def encode_conversations(conversations: list[Conversation], tokenizer: Any, *, chat_template: str = "auto",
                         train_on: TrainOn = "assistant", reasoning: str = "keep") -> list[Example]:
    """Render, tokenize and mask conversations with no filtering and no length policy.

    Raises:
        DataError: InvalidDataset when the template cannot render a conversation.
    """
    problems: list[Problem] = []
    if reasoning == "drop":
        conversations = [c.without_reasoning() for c in conversations]
    encoded = render_all(conversations, Renderers(chat_template, tokenizer), train_on, tokenizer, "", problems,
                         problems)
    if problems:
        raise DataError.from_problems(ErrorCode.INVALID_DATASET, problems)
    return [Example(e.ids, e.labels, e.ids[:first_token_at(e.starts, e.rendered.prompt_end)], e.rendered.reference,
                    e.conversation.line) for e in encoded]


def _convert_source(source: SourceData, setting: MixtureSource, spec: DatasetSpec, index: int,
                    invalid: list[Problem]) -> tuple[str, list[Conversation]]:
    """The conversations of one source's files (tagged with `index`) and the schema(s) found, `+`-joined."""
    schema_setting = setting.data_schema or spec.data_schema
    column_map = setting.column_map if setting.column_map is not None else spec.column_map
    schemas: list[str] = []
    out: list[Conversation] = []
    for raw in source.files:
        if not raw.rows:
            continue
        schema, conversations, problems = convert_rows(raw.rows, schema_setting, column_map, raw.uri)
        invalid.extend(problems)
        if schema not in schemas:
            schemas.append(schema)
        out.extend(conversations if index == 0 else [replace(c, source=index) for c in conversations])
    known = [s for s in schemas if s != "unknown"]
    return "+".join(known) or "unknown", out


def _build(spec: DatasetSpec, tokenizer: Any, sources: list[SourceData], val_source: SourceData | None, seed: int,
           model_max_length: int | None) -> tuple[PreparedData, list[Problem], list[Problem]]:
    """Returns (prepared data, problems with rows, preflight problems); problems are also in the report."""
    settings = spec.train.mixture()
    if len(settings) != len(sources):
        raise ValueError(f"{len(sources)} sources were read for the {len(settings)} of dataset.train")
    mixture = spec.train.sources is not None
    file = sources[0].uri if not mixture else f"{len(sources)} sources: {', '.join(s.uri for s in sources)}"
    report = DataReport(file=file, format="unknown", rows=sum(s.row_count for s in sources),
                        sha256=training_digest(sources), train_on=spec.train_on,
                        tokenizer="byte-level fallback (1 token per UTF-8 byte; pass --tokenizer for real counts)"
                        if isinstance(tokenizer, ByteTokenizer) else type(tokenizer).__name__)
    invalid: list[Problem] = []
    preflight: list[Problem] = []
    conversations: list[Conversation] = []
    formats: list[str] = []
    for index, (source, setting) in enumerate(zip(sources, settings, strict=True)):
        fmt, converted = _convert_source(source, setting, spec, index, invalid)
        formats.append(fmt)
        conversations.extend(converted)
    report.format = "+".join(dict.fromkeys(p for f in formats if f != "unknown" for p in f.split("+"))) or "unknown"
    dropped: Counter[str] = Counter()
    if invalid and conversations:
        dropped["invalid"] = report.rows - len(conversations)
    if spec.reasoning == "drop":
        conversations = [c.without_reasoning() for c in conversations]
    drops: dict[str, list[int]] = {}  # the lines of the dropped rows by reason, for an error that names them
    conversations = quality_filter(conversations, spec.train_on, drops)
    conversations, report.duplicates = dedup(conversations, spec.dedup, drops)
    if not spec.dedup and report.rows and report.duplicates / report.rows > MAX_DUPLICATE_SHARE:
        report.warnings.append(f"{report.duplicates} of the {report.rows} rows are exact duplicates of another row; "
                               "dedup is off, so they are trained as given")

    validation_convs: list[Conversation] = []
    val_file = val_source.uri if val_source else file
    if val_source is not None:
        one_schema = report.format != "unknown" and "+" not in report.format
        for raw in val_source.files:
            if not raw.rows:
                continue
            _, converted, val_problems = convert_rows(raw.rows, report.format if one_schema else "auto",
                                                      spec.column_map, raw.uri)
            invalid.extend(val_problems)
            validation_convs.extend(replace(c, source=VALIDATION_FILE_SOURCE) for c in converted)
        if spec.reasoning == "drop":
            validation_convs = [c.without_reasoning() for c in validation_convs]
        validation_convs = quality_filter(validation_convs, spec.train_on)
        validation_convs, _ = dedup(validation_convs, spec.dedup)
        train_keys = {c.key() for c in conversations}
        report.validation_overlap = sum(1 for c in validation_convs if c.key() in train_keys)
        if report.validation_overlap:
            report.warnings.append(f"{report.validation_overlap} validation examples also occur in the training "
                                   "data: evaluation loss will look better than it is")
    elif spec.validation_split is not None:
        conversations, validation_convs = split_held_out(conversations, len(sources), spec.validation_split, seed)

    # The mixture: which examples of each source are trained, how often, in which order. One source: all, once.
    groups = [[c for c in conversations if c.source == i] for i in range(len(sources))] if mixture else [conversations]
    available = [len(g) for g in groups]
    if mixture:
        targets = mixture_targets(settings, available)
        entries = draw(targets, available, seed)
        used = sorted(set(entries))
        distinct = [groups[s][j] for s, j in used]
        position = {pair: k for k, pair in enumerate(used)}
        order = [position[pair] for pair in entries]
    else:
        targets, distinct, order = available, conversations, list(range(len(conversations)))

    renderers = Renderers(spec.chat_template, tokenizer)
    template_name = "none"
    try:
        kind = distinct[0].kind if distinct else "chat"
        renderer = renderers.get(kind)
        template_name = renderer.name
    except TemplateError as err:
        invalid.append(Problem(str(err), None, None, "chatTemplate"))
        renderer = None
    report.chat_template = template_name

    encoded: list[Encoded] = []
    val_encoded: list[Encoded] = []
    unrendered_reasoning: list[Problem] = []
    if renderer is not None:
        encoded = render_all(distinct, renderers, spec.train_on, tokenizer, file, invalid, unrendered_reasoning)
        val_encoded = render_all(validation_convs, renderers, spec.train_on, tokenizer, val_file, invalid,
                                 unrendered_reasoning)

    lengths = sorted(len(e.ids) for e in encoded)
    report.length_percentiles = {"p50": percentile(lengths, 50), "p95": percentile(lengths, 95),
                                 "p99": percentile(lengths, 99), "max": lengths[-1] if lengths else 0}
    max_len = choose_max_length(spec, lengths, model_limit(tokenizer, model_max_length), report.warnings)
    report.max_seq_length = max_len

    bos_id = getattr(tokenizer, "bos_token_id", None)
    # The length policy once per distinct example (drops and truncations count rows, not repeats).
    kept: dict[int, Example] = {}
    for item in encoded:
        example, outcome = apply_length(item, max_len, spec.overlong, bos_id)
        if example is None:
            drops.setdefault(outcome, []).append(item.conversation.line)
            continue
        report.truncated += outcome == "truncated"
        kept[id(item.conversation)] = example
    train: list[Example] = []
    placed: set[int] = set()
    for k in order:
        conv_id = id(distinct[k])
        example = kept.get(conv_id)
        if example is not None:
            train.append(example if conv_id not in placed else replace(example))
            placed.add(conv_id)
    validation: list[Example] = []
    for item in val_encoded:
        example, outcome = apply_length(item, max_len, spec.overlong, bos_id)
        if example is not None:
            # A truncated prompt is not what a server would render from the conversation: no served form.
            validation.append(replace(example, served=served_prompt(item.conversation) if outcome == "kept" else ""))

    left_out = [(e.conversation.line, e.conversation.messages[i].role) for e in encoded for i in e.rendered.left_out]
    for role in sorted({role for _, role in left_out}):
        lines = [line for line, r in left_out if r == role]
        report.warnings.append(f"the chat template leaves the {role} turn out of {len(lines)} row"
                               f"{'' if len(lines) == 1 else 's'} (first: {file}:{lines[0]}): the model never "
                               "sees it in training; check that the template renders what you mean it to")
    markers = [m for r in renderers.cache.values() for m in end_of_turn_markers(r)]
    stops = stop_token_ids(tokenizer, markers)
    stop_set = set(stops)
    dropped.update({reason: len(lines) for reason, lines in drops.items()})
    report.dropped = dict(sorted(dropped.items()))
    report.train_examples, report.validation_examples = len(train), len(validation)
    report.tokens = sum(len(e.input_ids) for e in train)
    report.trainable_tokens = sum(len(e.labels) - e.labels.count(IGNORE_INDEX) for e in train)
    report.trainable_fraction = round(report.trainable_tokens / report.tokens, 4) if report.tokens else 0.0
    report.eos_trained = any(stop in e.labels for stop in stop_set for e in train)
    report.samples = token_samples(tokenizer, train)
    source_problems: list[Problem] = []
    if mixture:
        source_problems = report_sources(report, sources, settings, formats, available, targets, train, validation)

    preflight.extend(unrendered_reasoning)
    if not invalid and not unrendered_reasoning:
        preflight.extend(preflight_problems(spec, report, file, template_name, renderer, drops,
                                             drawn=len(distinct) if mixture else None))
        if report.train_examples:
            preflight.extend(source_problems)
    report.errors = [p.to_json() for p in [*invalid, *preflight]]
    prepared = PreparedData(train, validation, report, max_len, template_name, stops)
    return prepared, invalid, preflight

