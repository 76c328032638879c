"""The distillation filters (sftjob_trainer.distill.filters): pure functions, checked with values."""

from __future__ import annotations

import pytest

from sftjob_api.types import DistillationFilters, VerifierSpec
from sftjob_trainer.distill.filters import (
    REASONS,
    Candidate,
    ContaminationIndex,
    NearDuplicateIndex,
    answers_match,
    apply_filters,
    extract_answer,
    is_refusal,
    last_boxed,
    verify,
)

BOXED = VerifierSpec(extract="boxed")
GSM = VerifierSpec(extract="regex", regex=r"####\s*(-?[\d,.]+)")


@pytest.mark.parametrize(("text", "expected"), [
    (r"so \boxed{12}", "12"),
    (r"first \boxed{3} then \boxed{4}", "4"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{ 7 } and a cut \boxed{8", "7"),
    ("no box here", None),
])
def test_last_boxed_balances_braces_and_takes_the_last(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(("answer", "reference", "same"), [
    ("12", "12.0", True),
    ("$1,000", "1000", True),
    ("42.", "42", True),
    ("Paris", "paris", True),
    ("12", "13", False),
    ("1,2", "12", False),  # not a thousands separator: compared as text
    (r"\frac{1}{2}", r"\frac{1}{2}", True),
])
def test_answers_match_normalises_numbers_and_case(answer: str, reference: str, same: bool) -> None:
    assert answers_match(answer, reference) is same


def test_verify_extracts_from_the_answer_and_from_a_reference_in_the_same_shape() -> None:
    assert verify(r"7 plus 5 is 12. \boxed{12}", "12", BOXED) is None
    assert verify(r"\boxed{13}", "12", BOXED) == "wrong_answer"
    assert verify("twelve", "12", BOXED) == "no_answer"
    # GSM8K-style: the reference holds the whole solution and its final "#### N" line.
    assert verify("... so she pays #### 1,200", "Each costs 600, two cost #### 1200", GSM) is None
    assert verify("#### 5", "#### 6", GSM) == "wrong_answer"
    assert extract_answer("the answer is 4 or 5", VerifierSpec(extract="regex", regex=r"\d+")) == "5"


@pytest.mark.parametrize(("answer", "refused"), [
    ("I'm sorry, but I can't help with that request.", True),
    ("As an AI language model, I do not have opinions.", True),
    ("I\u2019m sorry, I cannot do that.", True),  # a typographic apostrophe
    ("Sure! 7 plus 5 is 12.", False),
    ("x" * 250 + " As an AI language model", False),  # only the start of an answer is looked at
])
def test_refusals_are_found_at_the_start(answer: str, refused: bool) -> None:
    assert is_refusal(answer) is refused


def test_contamination_by_ngram_and_by_whole_short_text() -> None:
    index = ContaminationIndex([
        "Natalia sold clips to 48 of her friends in April and then she sold half as many clips in May",
        "What is 7 plus 5?",  # shorter than n: counts whole
        "12",  # under three words: never evidence
    ], n=8)
    assert index.contaminated("Q: natalia sold clips to 48 of her friends in april, how many in total?")
    assert index.contaminated("Please answer: what is 7 plus 5? Think first.")
    assert not index.contaminated("What is 7 plus 6?")
    assert not index.contaminated("The result is 12 apples")
    assert index.contaminated("she sold half as many")  # a short candidate found whole inside a long text
    assert not index.contaminated("sold half")  # too short to be evidence
    assert len(ContaminationIndex([], n=13)) == 0


def test_near_duplicate_index_uses_jaccard_of_shingles() -> None:
    index = NearDuplicateIndex(threshold=0.8)
    base = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat all afternoon long"
    assert index.add_if_new(base)
    assert not index.add_if_new(base.replace("long", "long."))  # same words: same shingles
    assert index.add_if_new("A completely different sentence about compilers, registers and the art of spilling")
    assert index.add_if_new(base.replace("quick brown fox", "slow red hen"))  # several shingles changed


def _filters(**kwargs: object) -> DistillationFilters:
    return DistillationFilters.model_validate(kwargs)


def test_every_reason_counted_in_order() -> None:
    spec = _filters(verifier={"extract": "boxed"}, minLength=5, maxLength=60,
                    decontaminate={"ngram": 4})
    contamination = ContaminationIndex(["What is 41 plus 1?"], n=4)
    good = r"7 plus 5 is 12. \boxed{12}"
    candidates = [
        Candidate("What is 7 plus 5?", good, reference="12"),  # kept
        Candidate("What is 7 plus 5?", "", error="context too long", reference="12"),
        Candidate("What is 7 plus 5?", good, finish_reason="length", reference="12"),
        Candidate("What is 7 plus 5?", "   ", reasoning="thinking only", reference="12"),
        Candidate("What is 7 plus 5?", r"\b{1}", reference="12"),  # long enough, but no \boxed{}
        Candidate("What is 7 plus 5?", "12", reference="12"),
        Candidate("What is 7 plus 5?", "x" * 61, reference="12"),
        Candidate("What is 7 plus 5?", r"I'm sorry, but I can't. \boxed{12}", reference="12"),
        Candidate("What is 7 plus 5?", r"It is \boxed{13}", reference="12"),
        Candidate("What is 41 plus 1?", r"41 plus 1 is 42. \boxed{42}", reference="42"),
        Candidate("What is 7 plus 5?", r"Twelve: \boxed{12}", reference="12"),  # another right answer: kept
        Candidate("What is 7  plus 5?", good + " ", reference="12"),  # whitespace only: an exact duplicate
    ]
    outcome = apply_filters(candidates, spec, contamination)
    assert outcome.kept == [0, 10]
    reasons = dict(outcome.dropped)
    assert reasons == {1: "teacher_error", 2: "truncated", 3: "empty", 4: "no_answer", 5: "too_short",
                       6: "too_long", 7: "refusal", 8: "wrong_answer", 9: "contaminated", 11: "duplicate"}
    assert outcome.counts == {"teacher_error": 1, "truncated": 1, "empty": 1, "too_short": 1, "too_long": 1,
                              "refusal": 1, "no_answer": 1, "wrong_answer": 1, "contaminated": 1, "duplicate": 1}
    assert list(outcome.counts) == [r for r in REASONS if r in outcome.counts]  # in check order


def test_near_duplicates_and_switches() -> None:
    long_answer = ("To add seven and five, count five steps up from seven: eight, nine, ten, eleven, twelve. "
                   "So the sum is twelve, and the final answer is 12.")
    candidates = [Candidate("What is 7 plus 5?", long_answer),
                  Candidate("What is 7 plus 5?", long_answer.replace("12.", "12!")),
                  Candidate("What is 7 plus 5?", long_answer)]
    assert apply_filters(candidates, _filters()).counts == {"near_duplicate": 1, "duplicate": 1}
    assert apply_filters(candidates, _filters(dedup={"near": False})).counts == {"duplicate": 1}
    assert apply_filters(candidates, _filters(dedup={"exact": False, "near": False})).counts == {}
    refusal = [Candidate("p", "As an AI language model, I cannot.")]
    assert apply_filters(refusal, _filters(refusals=False)).kept == [0]
