"""Task metrics on generated answers (`evaluation.metrics`), for the base and the fine-tuned model.

The string metrics are a line each; chrF comes from sacrebleu and ROUGE-L from rouge-score, the
implementations papers report, so a figure here means what it means elsewhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from sftjob_api.types import MetricResult

# Metrics reported on 0..100 (sacrebleu's convention); the others are fractions in 0..1.
PERCENT_METRICS = frozenset({"chrf"})


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer equals the reference, surrounding whitespace aside."""
    return float(answer.strip() == reference.strip())


def json_equal(answer: str, reference: str) -> float:
    """1.0 when both parse as JSON and are equal (key order and spacing aside)."""
    try:
        return float(json.loads(answer) == json.loads(reference))
    except ValueError:
        return 0.0


def contains(answer: str, reference: str) -> float:
    """1.0 when the reference (whitespace trimmed) appears in the answer."""
    return float(reference.strip() in answer)


def _first_match(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.search(text)
    if found is None:
        return None
    return found.group(1) if pattern.groups else found.group(0)


def regex_match(pattern: str) -> Callable[[str, str], float]:
    """The `regex` metric: the pattern's first match (its first group, if any) in the answer equals the reference's.

    A reference the pattern does not match is compared whole (trimmed): a reference column may hold the bare
    answer (`42`) while answers hold a sentence around it (`The answer is 42.`).
    """
    compiled = re.compile(pattern)

    def score(answer: str, reference: str) -> float:
        expected = _first_match(compiled, reference)
        got = _first_match(compiled, answer)
        return float(got is not None and got.strip() == (reference.strip() if expected is None else expected.strip()))

    return score


def chrf(answer: str, reference: str) -> float:
    """Sentence-level chrF (sacrebleu, 0..100) of one answer."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(answer, [reference]).score)


@cache
def _rouge_scorer() -> object:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 (rouge-score, 0..1) of one answer."""
    return float(_rouge_scorer().score(reference, answer)["rougeL"].fmeasure)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Scorer:
    """The metrics of a job: per-answer scores and corpus figures."""

    names: tuple[str, ...]
    """Metric names in the spec's order (the first is the headline)."""
    pattern: str | None = None
    """`evaluation.regex`, for the `regex` metric."""

    def _function(self, name: str) -> Callable[[str, str], float]:
        if name == "regex":
            if self.pattern is None:
                raise ValueError("the regex metric needs evaluation.regex")
            return regex_match(self.pattern)
        return {"exact_match": exact_match, "json_equal": json_equal, "contains": contains, "chrf": chrf,
                "rouge_l": rouge_l}[name]

    def per_answer(self, answers: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
        """Every metric's score of every answer, `{metric: [score per answer]}`."""
        out: dict[str, list[float]] = {}
        for name in self.names:
            function = self._function(name)
            out[name] = [function(a, r) for a, r in zip(answers, references, strict=True)]
        return out

    def corpus(self, answers: Sequence[str], references: Sequence[str]) -> dict[str, float]:
        """Every metric over all answers: chrF at corpus level (sacrebleu's statistic), the others as means."""
        from sacrebleu.metrics import CHRF

        if not answers:
            return dict.fromkeys(self.names, 0.0)
        out: dict[str, float] = {}
        for name in self.names:
            if name == "chrf":
                out[name] = float(CHRF().corpus_score(list(answers), [list(references)]).score)
            else:
                function = self._function(name)
                scores = [function(a, r) for a, r in zip(answers, references, strict=True)]
                out[name] = sum(scores) / len(scores)
        return out

    def compare(self, base: Sequence[str], tuned: Sequence[str], references: Sequence[str]) -> list[MetricResult]:
        """Base and fine-tuned figures of every metric on the same held-out prompts."""
        before = self.corpus(base, references)
        after = self.corpus(tuned, references)
        return [MetricResult(name=n, base=before[n], tuned=after[n], samples=len(references)) for n in self.names]


def format_score(name: str, value: float) -> str:
    """`0.92` for a fraction, `54.1` for chrF."""
    return f"{value:.1f}" if name in PERCENT_METRICS else f"{value:.2f}"


def headline(results: Sequence[MetricResult]) -> str | None:
    """`json_equal 0.92 (base 0.00)`: the first metric, fine-tuned then base (the `Score` printer column)."""
    if not results:
        return None
    first = results[0]
    return f"{first.name} {format_score(first.name, first.tuned)} (base {format_score(first.name, first.base)})"


__all__ = ["PERCENT_METRICS", "Scorer", "chrf", "contains", "exact_match", "format_score", "headline", "json_equal",
           "regex_match", "rouge_l"]
