"""Weighted dataset mixtures: how many examples each source gives, which ones, and the loss per source.

Pure functions (no I/O). The pipeline calls `mixture_targets` and `draw` after every source has been
converted, filtered, de-duplicated and split; the driver calls `per_source_eval_loss` and
`with_eval_losses` after training, to report the evaluation loss of each source.

The rules (docs/datasets.md):

- a source with `samples: k` gives exactly k examples;
- the sources with a `weight` keep the size they have together (the sum of their usable examples) and
  share it in proportion to their weights, rounded by largest remainder so the counts add up;
- a source with neither gives each of its examples once.

A source asked for k examples out of n draws without replacement when k <= n; when k > n every example
is repeated k // n times and k % n of them once more (so repeats differ by at most one, unlike sampling
with replacement). Each source draws with its own seeded generator, and the drawn examples are shuffled
together with another, so the same seed gives the same examples in the same order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from sftjob_api.types import DatasetStats, MixtureSource

if TYPE_CHECKING:
    from sftjob_trainer.data.examples import Example

# A `samples` source reads shards until it has this many times the rows it needs (before the validation
# hold-out), so rows dropped by the quality filter and de-duplication rarely leave it short.
SAMPLE_OVERREAD = 1.25
# `Example.source` of the examples of `dataset.validation` (a separate file, of no training source).
VALIDATION_FILE_SOURCE = -1


def rows_to_read(samples: int | None, validation_split: float | None) -> int | None:
    """How many rows a source must read: enough for `samples` after the hold-out; None (all) without a count."""
    if samples is None:
        return None
    return math.ceil(samples * SAMPLE_OVERREAD / (1 - (validation_split or 0.0)))


def mixture_targets(sources: Sequence[MixtureSource], available: Sequence[int]) -> list[int]:
    """How many training examples each source gives.

    Args:
        sources: The mixture's sources (`weight`, `samples` or neither).
        available: Usable examples of each source, in the same order.

    Returns:
        One count per source: `samples`; a weighted share of the weighted sources' total size; or `available`.
    """
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    total = sum(available[i] for i in weighted)
    weight_sum = sum(float(sources[i].weight or 0.0) for i in weighted)
    quotas = {i: total * float(sources[i].weight or 0.0) / weight_sum for i in weighted} if weight_sum else {}
    counts = {i: math.floor(q) for i, q in quotas.items()}
    left = total - sum(counts.values())
    # Largest remainder first; ties go to the earlier source, so the result is deterministic.
    for i in sorted(quotas, key=lambda i: (-(quotas[i] - counts[i]), i))[:left]:
        counts[i] += 1
    out = []
    for i, source in enumerate(sources):
        if source.samples is not None:
            out.append(source.samples)
        elif i in counts:
            out.append(counts[i])
        else:
            out.append(available[i])
    return out


def draw(targets: Sequence[int], available: Sequence[int], seed: int) -> list[tuple[int, int]]:
    """The mixture: `(source, index)` pairs, `targets[s]` of them per source with examples, shuffled.

    Args:
        targets: Examples wanted from each source.
        available: Examples each source has (indexes `0..available[s]-1`).
        seed: The job's seed.

    Returns:
        The drawn pairs in training order; a source without examples gives none.
    """
    entries: list[tuple[int, int]] = []
    for source, (want, have) in enumerate(zip(targets, available, strict=True)):
        if have == 0 or want == 0:
            continue
        rng = random.Random(f"{seed}:draw:{source}")  # noqa: S311 - a seeded draw, not cryptography
        if want <= have:
            picks = rng.sample(range(have), want)
        else:
            picks = list(range(have)) * (want // have) + rng.sample(range(have), want % have)
        entries.extend((source, index) for index in picks)
    random.Random(f"{seed}:mixture").shuffle(entries)  # noqa: S311 - a seeded order, not cryptography
    return entries


def split_by_source(examples: Sequence[Example]) -> dict[int, list[Example]]:
    """The examples grouped by `Example.source`, in their order (-1: the `dataset.validation` file)."""
    groups: dict[int, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.source, []).append(example)
    return dict(sorted(groups.items()))


def per_source_eval_loss(validation: Sequence[Example], score: Callable[[list[Example]], float]) -> dict[int, float]:
    """The evaluation loss of each source's held-out examples.

    Args:
        validation: `PreparedData.validation` (each example tagged with its source).
        score: The mean token loss of a list of examples, e.g.
            `lambda ex: mean_token_loss(model, [{"input_ids": e.input_ids, "labels": e.labels} for e in ex],
            batch_size, tokenizer.pad_token_id)` (sftjob_trainer.forgetting).

    Returns:
        `{source index: loss}` for every source with held-out examples.
    """
    return {source: float(score(examples)) for source, examples in split_by_source(validation).items()}


def with_eval_losses(stats: DatasetStats, losses: Mapping[int, float]) -> DatasetStats:
    """`stats` with `sources[i].evalLoss` set from `losses` (a loss that is not finite is left unset).

    Args:
        stats: `PreparedData.report.to_stats()` (or the dataset stats already in progress).
        losses: From `per_source_eval_loss`.

    Returns:
        A copy; `stats` itself is unchanged. Stats without sources (a single file) come back as they are.
    """
    if not stats.sources:
        return stats
    sources = [s.model_copy(update={"eval_loss": round(losses[i], 6)})
               if i in losses and math.isfinite(losses[i]) else s for i, s in enumerate(stats.sources)]
    return stats.model_copy(update={"sources": sources})


def eval_loss_table(stats: DatasetStats) -> str:
    """A Markdown table of the sources, their realised proportions and evaluation losses (empty: no mixture)."""
    if not stats.sources:
        return ""
    lines = ["| source | weight / samples | train examples | proportion | eval loss |", "|---|---|---|---|---|"]
    for s in stats.sources:
        asked = (f"weight {s.weight:g}" if s.weight is not None
                 else f"samples {s.samples}" if s.samples is not None else "all")
        loss = f"{s.eval_loss:.4f}" if s.eval_loss is not None else "–"
        lines.append(f"| {s.name} | {asked} | {s.train_examples} | {s.proportion:.1%} | {loss} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "SAMPLE_OVERREAD",
    "VALIDATION_FILE_SOURCE",
    "draw",
    "eval_loss_table",
    "mixture_targets",
    "per_source_eval_loss",
    "rows_to_read",
    "split_by_source",
    "with_eval_losses",
]
