"""The data pipeline: rows to tokens with loss masks, then length policy, de-duplication, split and preflight.

Rows become conversations, conversations rendered text, text tokens with labels.

`prepare_dataset` reads the files and raises `DataError` on anything that dooms the job;
`analyze` does the same work on rows already read and reports problems instead of raising
(`sftjob data inspect` and `sftjob validate` print them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from sftjob_api.types import DatasetSpec, MixtureSource
from sftjob_trainer.data.cache import KEY_PREFIX_CHARS, DataCache, cache_key
from sftjob_trainer.data.cache import load as load_cached
from sftjob_trainer.data.cache import store as store_cached
from sftjob_trainer.data.errors import DataError, Problem
from sftjob_trainer.data.examples import Example, PreparedData
from sftjob_trainer.data.formats import Conversation, convert_rows
from sftjob_trainer.data.mixture import VALIDATION_FILE_SOURCE, draw, mixture_targets, rows_to_read
from sftjob_trainer.data.readers import RawDataset, SourceData, read_source
from sftjob_trainer.data.report import DataReport, Sample, SourceReport
from sftjob_trainer.data.templates import (
    KNOWN_END_OF_TURN,
    JinjaTemplate,
    NamedTemplate,
    ReasoningNotRendered,
    Rendered,
    Renderer,
    TemplateError,
    TrainOn,
    end_of_turn_markers,
    resolve_template,
)
from sftjob_trainer.data.tokens import IGNORE_INDEX, ByteTokenizer, encode, first_token_at, mask_labels

# maxSeqLength: auto without packing takes this percentile of the token lengths: the longest 1% are truncated
# or dropped instead of setting the padded size of every batch. With packing a long row costs only its own
# tokens, so auto keeps every row that fits the model's context.
AUTO_PERCENTILE = 99
# A tokenizer's model_max_length above this is transformers' "unset" sentinel (1e30), not a real limit.
UNSET_MODEL_LENGTH = 10_000_000
# Drop reasons that do not count against maxDroppedFraction: removing a duplicate loses no information.
HARMLESS_DROPS = frozenset({"duplicate"})
# Drop reasons of the length policy (applied after a mixture is drawn).
LENGTH_DROPS = ("too_long", "response_too_long")
# With dedup on, preflight fails when more than this share of the rows are copies of another row: curated
# datasets carry a few percent of duplicates, a file that is mostly copies is a broken export (a join that
# fanned out, a loop that wrote the same rows again) and would train on far fewer examples than it seems to.
MAX_DUPLICATE_SHARE = 0.5
SAMPLES = 2
# Lines named per drop reason when every row was dropped.
LINES_SHOWN = 8
# What each drop reason means, for the error that says why no row is left.
DROP_REASONS = {
    "empty_text": "the text is empty",
    "no_assistant_turn": "no assistant turn",
    "empty_response": "an assistant turn is empty",
    "no_trained_turn": "every assistant turn that trainOn selects has weight 0",
    "duplicate": "a copy of an earlier row",
    "too_long": "longer than maxSeqLength {max_len} (overlong: drop)",
    "response_too_long": "the answer alone is longer than maxSeqLength {max_len}",
}

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
        raise DataError.from_problems("InvalidDataset", invalid)
    if preflight:
        raise DataError.from_problems("PreflightFailed", preflight)
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
    encoded = _render_all(conversations, _Renderers(chat_template, tokenizer), train_on, tokenizer, "", problems,
                          problems)
    if problems:
        raise DataError.from_problems("InvalidDataset", problems)
    return [Example(e.ids, e.labels, e.ids[:first_token_at(e.starts, e.rendered.prompt_end)], e.rendered.reference,
                    e.conversation.line) for e in encoded]


@dataclass
class _Encoded:
    conversation: Conversation
    rendered: Rendered
    ids: list[int]
    starts: list[int]
    labels: list[int]


class _Renderers:
    """One renderer per data kind, resolved once."""

    def __init__(self, setting: str, tokenizer: Any) -> None:
        self.setting = setting
        self.tokenizer = tokenizer
        self.cache: dict[str, Renderer] = {}

    def get(self, kind: str) -> Renderer:
        if kind not in self.cache:
            self.cache[kind] = resolve_template(self.setting, self.tokenizer, kind)
        return self.cache[kind]


def _drop_reason(conv: Conversation, train_on: str) -> str | None:
    """Why the quality filter drops a row, or None to keep it."""
    if conv.kind == "text":
        return "empty_text" if not conv.messages[0].content.strip() else None
    assistants = [conv.messages[i] for i in conv.assistant_indexes]
    if not assistants:
        return None if train_on == "all" else "no_assistant_turn"
    if any(not m.content.strip() and not m.tool_calls and not m.reasoning.strip() for m in assistants):
        return "empty_response"
    selected = assistants[-1:] if train_on == "last_assistant" else assistants
    if train_on != "all" and not any(m.weight for m in selected):
        return "no_trained_turn"
    return None


def _quality(conversations: list[Conversation], train_on: str,
             drops: dict[str, list[int]] | None = None) -> list[Conversation]:
    """The rows the quality filter keeps; the lines of the others go to `drops` by reason."""
    kept: list[Conversation] = []
    for conv in conversations:
        reason = _drop_reason(conv, train_on)
        if reason is None:
            kept.append(conv)
        elif drops is not None:
            drops.setdefault(reason, []).append(conv.line)
    return kept


def _dedup(conversations: list[Conversation], enabled: bool,
           drops: dict[str, list[int]] | None = None) -> tuple[list[Conversation], int]:
    seen: set[str] = set()
    kept, duplicates = [], 0
    for conv in conversations:
        key = conv.key()
        if key in seen:
            duplicates += 1
            if enabled:
                if drops is not None:
                    drops.setdefault("duplicate", []).append(conv.line)
                continue
        seen.add(key)
        kept.append(conv)
    return kept, duplicates


def _render_all(conversations: list[Conversation], renderers: _Renderers, train_on: TrainOn, tokenizer: Any,
                file: str, problems: list[Problem], unrendered_reasoning: list[Problem]) -> list[_Encoded]:
    """Render, tokenize and mask.

    A row the template cannot render goes to `problems`; one whose reasoning it cannot render goes to
    `unrendered_reasoning` (a preflight matter of `dataset.reasoning`).
    """
    rendered: list[tuple[Conversation, Rendered]] = []
    for conv in conversations:
        try:
            rendered.append((conv, renderers.get(conv.kind).render(conv, train_on)))
        except ReasoningNotRendered as err:
            unrendered_reasoning.append(Problem(
                f"{err}; this row carries reasoning: set dataset.reasoning: drop to train on the answers "
                "without it, or use a chat template that renders reasoning (for DeepSeek-R1 distills, TRL's "
                "deepseek_r1_distill_training.jinja as an inline chatTemplate)", file, conv.line, "dataset.reasoning"))
        except TemplateError as err:
            problems.append(Problem(str(err), file, conv.line, "chatTemplate"))
    encoded = encode(tokenizer, [r.text for _, r in rendered])
    return [_Encoded(conv, r, ids, starts, mask_labels(ids, starts, r.trained))
            for (conv, r), (ids, starts) in zip(rendered, encoded, strict=True)]


def _percentile(sorted_values: list[int], pct: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _model_limit(tokenizer: Any, model_max_length: int | None) -> int | None:
    if model_max_length:
        return model_max_length
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < UNSET_MODEL_LENGTH else None


def _apply_length(item: _Encoded, max_len: int, overlong: str, bos_id: int | None) -> tuple[Example | None, str]:
    """The example cut to `max_len` (or None when dropped) and what happened: kept, truncated or a drop reason."""
    ids, labels, starts = item.ids, item.labels, item.starts
    prompt_len = first_token_at(starts, item.rendered.prompt_end)
    line, reference, source = item.conversation.line, item.rendered.reference, item.conversation.source
    if len(ids) <= max_len:
        return Example(ids, labels, ids[:prompt_len], reference, line, source), "kept"
    if overlong == "drop":
        return None, "too_long"
    if item.conversation.kind == "text":
        # Plain text has no prompt side: keep the beginning.
        return Example(ids[:max_len], labels[:max_len], ids[:prompt_len], reference, line, source), "truncated"
    cut = len(ids) - max_len
    head = 1 if ids and bos_id is not None and ids[0] == bos_id else 0
    if prompt_len - head < cut:
        return None, "response_too_long"
    new_ids = ids[:head] + ids[head + cut:]
    new_labels = labels[:head] + labels[head + cut:]
    return Example(new_ids, new_labels, new_ids[:prompt_len - cut], reference, line, source), "truncated"


def served_prompt(conversation: Conversation) -> str:
    """`Example.served` of a held-out conversation: its turns before the last answer, and its tools, as JSON."""
    last = max((i for i, m in enumerate(conversation.messages) if m.role == "assistant"), default=None)
    if last is None or conversation.kind == "text":
        return ""
    return json.dumps({"messages": [m.to_jinja() for m in conversation.messages[:last]],
                       "tools": [dict(t) for t in conversation.tools] or None}, ensure_ascii=False)


def stop_token_ids(tokenizer: Any, renderer_markers: list[str]) -> list[int]:
    """EOS plus every end-of-turn marker that is a single token of this tokenizer."""
    out: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        out.append(eos)
    for marker in dict.fromkeys([*renderer_markers, *KNOWN_END_OF_TURN]):
        if isinstance(tokenizer, ByteTokenizer):
            token_id = tokenizer.convert_tokens_to_ids(marker)
        else:
            pieces = tokenizer(marker, add_special_tokens=False)["input_ids"]
            token_id = pieces[0] if len(pieces) == 1 else None
        if token_id is not None and token_id not in out:
            out.append(token_id)
    return out


def _samples(tokenizer: Any, examples: list[Example]) -> list[Sample]:
    samples = []
    for ex in examples[:SAMPLES]:
        segments: list[tuple[str, bool]] = []
        run: list[int] = []
        flag = False
        for token, label in zip(ex.input_ids, ex.labels, strict=True):
            trained = label != IGNORE_INDEX
            if run and trained != flag:
                segments.append((tokenizer.decode(run), flag))
                run = []
            run.append(token)
            flag = trained
        if run:
            segments.append((tokenizer.decode(run), flag))
        samples.append(Sample(ex.line, segments))
    return samples


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


def _split(conversations: list[Conversation], sources: int, fraction: float,
           seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """(training, held out): `fraction` of each source's rows, at least one and never all, in a seeded choice."""
    train: list[Conversation] = []
    held_out: list[Conversation] = []
    for index in range(sources):
        group = [c for c in conversations if c.source == index] if sources > 1 else conversations
        if len(group) < 2:  # one example each side at least
            train.extend(group)
            continue
        order = list(range(len(group)))
        # Source 0 splits with the seed itself, so a single file splits as it always has.
        random.Random(seed if index == 0 else f"{seed}:split:{index}").shuffle(order)  # noqa: S311 - a seeded split
        n_val = min(len(group) - 1, max(1, round(len(group) * fraction)))
        held = set(order[:n_val])
        held_out.extend(c for i, c in enumerate(group) if i in held)
        train.extend(c for i, c in enumerate(group) if i not in held)
    return train, held_out


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
    conversations = _quality(conversations, spec.train_on, drops)
    conversations, report.duplicates = _dedup(conversations, spec.dedup, drops)
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
        validation_convs = _quality(validation_convs, spec.train_on)
        validation_convs, _ = _dedup(validation_convs, spec.dedup)
        train_keys = {c.key() for c in conversations}
        report.validation_overlap = sum(1 for c in validation_convs if c.key() in train_keys)
        if report.validation_overlap:
            report.warnings.append(f"{report.validation_overlap} validation examples also occur in the training "
                                   "data: evaluation loss will look better than it is")
    elif spec.validation_split is not None:
        conversations, validation_convs = _split(conversations, len(sources), spec.validation_split, seed)

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

    renderers = _Renderers(spec.chat_template, tokenizer)
    template_name = "none"
    try:
        kind = distinct[0].kind if distinct else "chat"
        renderer = renderers.get(kind)
        template_name = renderer.name
    except TemplateError as err:
        invalid.append(Problem(str(err), None, None, "chatTemplate"))
        renderer = None
    report.chat_template = template_name

    encoded: list[_Encoded] = []
    val_encoded: list[_Encoded] = []
    unrendered_reasoning: list[Problem] = []
    if renderer is not None:
        encoded = _render_all(distinct, renderers, spec.train_on, tokenizer, file, invalid, unrendered_reasoning)
        val_encoded = _render_all(validation_convs, renderers, spec.train_on, tokenizer, val_file, invalid,
                                  unrendered_reasoning)

    lengths = sorted(len(e.ids) for e in encoded)
    report.length_percentiles = {"p50": _percentile(lengths, 50), "p95": _percentile(lengths, 95),
                                 "p99": _percentile(lengths, 99), "max": lengths[-1] if lengths else 0}
    limit = _model_limit(tokenizer, model_max_length)
    if spec.max_seq_length == "auto":
        # Packed, a long row costs only its own tokens: keep every row the model's context holds.
        max_len = (lengths[-1] if spec.packing and lengths else _percentile(lengths, AUTO_PERCENTILE)) or 1
        max_len = min(max_len, limit) if limit else max_len
    else:
        max_len = int(spec.max_seq_length)
        if limit and max_len > limit:
            report.warnings.append(f"maxSeqLength {max_len} is above the model's limit {limit}; using {limit}")
            max_len = limit
    report.max_seq_length = max_len

    bos_id = getattr(tokenizer, "bos_token_id", None)
    # The length policy once per distinct example (drops and truncations count rows, not repeats).
    kept: dict[int, Example] = {}
    for item in encoded:
        example, outcome = _apply_length(item, max_len, spec.overlong, bos_id)
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
        example, outcome = _apply_length(item, max_len, spec.overlong, bos_id)
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
    report.samples = _samples(tokenizer, train)
    source_problems: list[Problem] = []
    if mixture:
        source_problems = _report_sources(report, sources, settings, formats, available, targets, train, validation)

    preflight.extend(unrendered_reasoning)
    if not invalid and not unrendered_reasoning:
        preflight.extend(_preflight(spec, report, file, template_name, renderer, drops,
                                    drawn=len(distinct) if mixture else None))
        if report.train_examples:
            preflight.extend(source_problems)
    report.errors = [p.to_json() for p in [*invalid, *preflight]]
    prepared = PreparedData(train, validation, report, max_len, template_name, stops)
    return prepared, invalid, preflight


def _report_sources(report: DataReport, sources: list[SourceData], settings: list[MixtureSource], formats: list[str],
                    available: list[int], targets: list[int], train: list[Example],
                    validation: list[Example]) -> list[Problem]:
    """Fill `report.sources` and the mixture's warnings; returns the problems that fail preflight."""
    counts = Counter(e.source for e in train)
    tokens: Counter[int] = Counter()
    for example in train:
        tokens[example.source] += len(example.input_ids)
    held = Counter(e.source for e in validation)
    problems: list[Problem] = []
    for index, (source, setting) in enumerate(zip(sources, settings, strict=True)):
        name = setting.name or source.name
        report.sources.append(SourceReport(
            name=name, uri=source.uri, format=formats[index], files=len(source.files),
            files_matched=source.files_matched, rows=source.row_count, available=available[index],
            weight=setting.weight, samples=setting.samples, target=targets[index], train_examples=counts[index],
            proportion=round(counts[index] / len(train), 4) if train else 0.0, tokens=tokens[index],
            validation_examples=held[index]))
        field_name = f"dataset.train.sources[{index}]"
        if available[index] == 0:
            problems.append(Problem(
                f"source '{name}' has no usable example ({source.row_count} rows read from {len(source.files)} "
                "file(s), none left after the format checks, quality filter and de-duplication): its share of the "
                "mixture would be missing; fix the source or remove it from the mixture", source.uri, None,
                field_name))
            continue
        if targets[index] > available[index]:
            partly = source.files_matched > len(source.files)
            why = (f" ({len(source.files)} of its {source.files_matched} files were read for samples: "
                   f"{setting.samples}, and the filters left fewer usable rows than that)" if partly else "")
            report.warnings.append(
                f"source '{name}' has {available[index]} usable examples and gives {targets[index]}: each is repeated "
                f"about {targets[index] / available[index]:.1f} times{why}")
    return problems


def _every_row_dropped(drops: dict[str, list[int]], max_len: int) -> str:
    """Which rows were dropped and why, reason by reason, naming their lines."""
    parts = []
    for reason, lines in sorted(drops.items(), key=lambda item: item[1][0]):
        shown = ", ".join(str(line) for line in lines[:LINES_SHOWN])
        more = f" and {len(lines) - LINES_SHOWN} more" if len(lines) > LINES_SHOWN else ""
        why = DROP_REASONS.get(reason, reason).format(max_len=max_len)
        parts.append(f"{reason} ({why}): line{'s' if len(lines) > 1 else ''} {shown}{more}")
    return "; ".join(parts) or "no row was read"


def _preflight(spec: DatasetSpec, report: DataReport, file: str, template: str,
               renderer: Renderer | None, drops: dict[str, list[int]], drawn: int | None = None) -> list[Problem]:
    problems: list[Problem] = []
    if report.train_examples == 0:
        problems.append(Problem("no training examples are left: every row was dropped: "
                                f"{_every_row_dropped(drops, report.max_seq_length)}", file, None, "dataset.train"))
        return problems
    if spec.dedup and report.rows and report.duplicates / report.rows > MAX_DUPLICATE_SHARE:
        left = report.train_examples + report.validation_examples
        problems.append(Problem(
            f"{report.duplicates} of the {report.rows} rows ({report.duplicates / report.rows:.0%}) are exact "
            "duplicates of another row (compared with whitespace collapsed and case folded), more than "
            f"{MAX_DUPLICATE_SHARE:.0%}: only {left} distinct example{'' if left == 1 else 's'} "
            "would be left, and a file that is mostly copies is usually a broken export; deduplicate the file (or fix "
            "what wrote the rows again), or set dataset.dedup: false to train on the copies as given",
            file, None, "dataset.train"))
    if report.trainable_tokens == 0:
        problems.append(Problem(f"no token carries loss (trainOn: {spec.train_on}, chat template: {template}); "
                                "check that the rows have assistant turns", file, None, "dataset.trainOn"))
    elif not report.eos_trained:
        hint = ""
        if isinstance(renderer, NamedTemplate):
            hint = (f"; the {renderer.name} end-of-turn marker {renderer.end_of_turn} is not a single token of "
                    "this tokenizer: use the chat template the model was trained with")
        elif isinstance(renderer, JinjaTemplate):
            hint = "; the chat template ends assistant turns without the EOS token"
        problems.append(Problem("no EOS or end-of-turn token carries loss, so the model would never learn to stop"
                                + hint, file, None, "dataset.chatTemplate"))
    harmful = sum(n for reason, n in report.dropped.items() if reason not in HARMLESS_DROPS)
    share = (harmful + report.truncated) / report.rows if report.rows else 0.0
    if drawn is not None:
        # A mixture tokenizes only the rows it draws: the length policy's share is of those.
        too_long = sum(report.dropped.get(r, 0) for r in LENGTH_DROPS)
        share = ((harmful - too_long) / report.rows if report.rows else 0.0) + \
            ((too_long + report.truncated) / drawn if drawn else 0.0)
    if share > spec.max_dropped_fraction:
        detail = ", ".join(f"{n} {reason}" for reason, n in report.dropped.items() if reason not in HARMLESS_DROPS)
        length_bound = report.truncated or any(r in report.dropped for r in ("too_long", "response_too_long"))
        problems.append(Problem(
            f"{share:.0%} of the rows were dropped or truncated ({detail or 'none dropped'}, "
            f"{report.truncated} truncated at maxSeqLength {report.max_seq_length}), more than maxDroppedFraction "
            f"{spec.max_dropped_fraction}; {'raise maxSeqLength, ' if length_bound else ''}fix the data or raise "
            "maxDroppedFraction", file, None, "dataset.maxDroppedFraction"))
    return problems
