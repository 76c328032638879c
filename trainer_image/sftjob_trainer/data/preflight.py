"""Preflight: the checks that fail a job before training, and the mixture's report source by source."""

from __future__ import annotations

from collections import Counter

from sftjob_api.types import DatasetSpec, MixtureSource
from sftjob_trainer.data.examples import Example
from sftjob_trainer.data.jinja_template import JinjaTemplate
from sftjob_trainer.data.named_templates import NamedTemplate
from sftjob_trainer.data.problems import Problem
from sftjob_trainer.data.readers import SourceData
from sftjob_trainer.data.report import DataReport, SourceReport
from sftjob_trainer.data.templates import Renderer

# Drop reasons that do not count against maxDroppedFraction: removing a duplicate loses no information.
HARMLESS_DROPS = frozenset({"duplicate"})
# Drop reasons of the length policy (applied after a mixture is drawn).
LENGTH_DROPS = ("too_long", "response_too_long")
# With dedup on, preflight fails when more than this share of the rows are copies of another row: curated
# datasets carry a few percent of duplicates, a file that is mostly copies is a broken export (a join that
# fanned out, a loop that wrote the same rows again) and would train on far fewer examples than it seems to.
MAX_DUPLICATE_SHARE = 0.5
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


def report_sources(report: DataReport, sources: list[SourceData], settings: list[MixtureSource], formats: list[str],
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


def preflight_problems(spec: DatasetSpec, report: DataReport, file: str, template: str, renderer: Renderer | None,
                       drops: dict[str, list[int]], drawn: int | None = None) -> list[Problem]:
    """What dooms training on the prepared data: no example left, mostly copies, no loss, no stop, too many drops.

    Args:
        spec: The `dataset` section.
        report: The filled report of the prepared data.
        file: The training data's name, for the problems.
        template: The chat template's name.
        renderer: The renderer of the training rows (None when none resolved).
        drops: The lines of the dropped rows by reason.
        drawn: How many distinct rows a mixture drew (None without a mixture).
    """
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
