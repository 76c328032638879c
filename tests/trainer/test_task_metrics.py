"""Task metrics on generated answers: each metric's value on known pairs, chrF and ROUGE-L against their libraries."""

from __future__ import annotations

import pytest

from sftjob_api.types import MetricResult
from sftjob_trainer.task_metrics import (
    Scorer,
    chrf,
    contains,
    exact_match,
    format_score,
    headline,
    json_equal,
    regex_match,
    rouge_l,
)


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    assert exact_match("  Paris\n", "Paris") == 1.0
    assert exact_match("paris", "Paris") == 0.0


def test_json_equal_compares_parsed_values() -> None:
    assert json_equal('{"b": 2, "a": [1, 2]}', '{"a":[1,2],"b":2}') == 1.0
    assert json_equal('{"a": 1}', '{"a": 2}') == 0.0
    assert json_equal("not json", "not json") == 0.0  # equal strings, but not JSON


def test_contains_looks_for_the_trimmed_reference() -> None:
    assert contains("The capital is Paris.", " Paris ") == 1.0
    assert contains("The capital is Lyon.", "Paris") == 0.0


def test_regex_compares_the_first_group_and_falls_back_to_the_whole_reference() -> None:
    final = regex_match(r"answer is (-?\d+)")
    assert final("so the answer is 42.", "the answer is 42") == 1.0
    assert final("so the answer is 41.", "the answer is 42") == 0.0
    assert final("the answer is 7", "7") == 1.0  # a bare reference the pattern does not match
    assert final("no number here", "7") == 0.0


def test_chrf_is_sacrebleus_sentence_score() -> None:
    from sacrebleu.metrics import CHRF

    assert chrf("the cat sat", "the cat sat") == 100.0
    expected = CHRF().sentence_score("the cat sat on", ["the cat sat"]).score
    assert chrf("the cat sat on", "the cat sat") == pytest.approx(expected)
    assert 0 < chrf("the cat", "the cat sat") < 100


def test_rouge_l_is_the_longest_common_subsequence_f1() -> None:
    # LCS of "a b c d" and "a c d e" is "a c d": precision 3/4, recall 3/4.
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("x y", "a b") == 0.0


def test_scorer_compares_base_and_tuned_on_the_same_references() -> None:
    scorer = Scorer(("json_equal", "exact_match", "chrf"))
    references = ['{"a": 1}', '{"a": 2}']
    results = scorer.compare(base=["{}", '{"a": 2}'], tuned=['{"a":1}', '{"a": 2}'], references=references)
    assert [r.name for r in results] == ["json_equal", "exact_match", "chrf"]
    assert (results[0].base, results[0].tuned, results[0].samples) == (0.5, 1.0, 2)
    assert (results[1].base, results[1].tuned) == (0.5, 0.5)  # '{"a":1}' is JSON-equal but not exactly equal
    from sacrebleu.metrics import CHRF

    assert results[2].tuned == pytest.approx(CHRF().corpus_score(['{"a":1}', '{"a": 2}'], [references]).score)


def test_scorer_needs_its_pattern_for_the_regex_metric() -> None:
    with pytest.raises(ValueError, match=r"evaluation\.regex"):
        Scorer(("regex",)).per_answer(["a"], ["a"])


def test_headline_names_the_first_metric_tuned_then_base() -> None:
    results = [MetricResult(name="json_equal", base=0.0, tuned=0.92, samples=50),
               MetricResult(name="chrf", base=10.0, tuned=80.0, samples=50)]
    assert headline(results) == "json_equal 0.92 (base 0.00)"
    assert headline([]) is None
    assert format_score("chrf", 54.123) == "54.1"
