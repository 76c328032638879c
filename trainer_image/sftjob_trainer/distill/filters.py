"""The filters that turn teacher answers into training examples: pure functions, every drop counted by reason.

`apply_filters` checks each candidate in order and drops it for the first reason that applies:

1. `teacher_error`: the teacher sent an error object instead of an answer (e.g. a prompt over its context);
2. `truncated`: cut at `maxTokens` (`finish_reason: length`): an unfinished answer teaches unfinished answers;
3. `empty`: no answer text (reasoning alone is not an answer);
4. `too_short` / `too_long`: outside `minLength` / `maxLength` characters (reasoning not counted);
5. `refusal`: one of `REFUSAL_PHRASES` in the first `REFUSAL_WINDOW` characters;
6. `no_answer` / `wrong_answer`: the verifier found no final answer, or one that differs from the reference
   (rejection sampling);
7. `contaminated`: the prompt or the answer shares a word n-gram with an evaluation text;
8. `duplicate`: the same prompt and answer as an earlier kept pair (whitespace and case normalised);
9. `near_duplicate`: MinHash-LSH estimated Jaccard similarity of word 5-gram shingles above the threshold with an
   earlier kept pair (datasketch; the estimate is checked against the stored signature, not only the LSH bucket).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from datasketch import MinHash, MinHashLSH

from sftjob_api.types import DistillationFilters, VerifierSpec

# Refusal phrases (lowercase, straight apostrophes), looked for in the first REFUSAL_WINDOW characters of an
# answer: a refusal says so up front, while "I cannot find a closed form, so ..." deep in an answer is work.
REFUSAL_PHRASES: Final = (
    "as an ai language model",
    "as an ai assistant",
    "as a language model",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i'm sorry, i can't",
    "i'm sorry, i cannot",
    "i cannot fulfill",
    "i can't fulfill",
    "i cannot comply",
    "i can't comply",
    "i cannot help with",
    "i can't help with",
    "i cannot assist with",
    "i can't assist with",
    "i'm not able to help with",
    "i am not able to help with",
    "i'm unable to help with",
    "i am unable to help with",
    "i must decline",
    "i won't be able to help",
)
REFUSAL_WINDOW: Final = 200
# Word n-grams of the near-duplicate shingles, and MinHash permutations.
SHINGLE_WORDS: Final = 5
NUM_PERM: Final = 128
# Texts shorter than this many words (labels, one-word answers) are never decontamination evidence.
MIN_CONTAMINATION_WORDS: Final = 3
# Drop reasons, in the order they are checked.
REASONS: Final = ("teacher_error", "truncated", "empty", "too_short", "too_long", "refusal", "no_answer",
                  "wrong_answer", "contaminated", "duplicate", "near_duplicate")

_WORD = re.compile(r"\w+")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


@dataclass(frozen=True)
class Candidate:
    """One teacher answer to one prompt, before filtering."""

    prompt: str
    """The prompt's text (its user turns), for duplicates and decontamination."""
    answer: str
    """The answer, reasoning split off."""
    reasoning: str = ""
    """The teacher's reasoning."""
    finish_reason: str = "stop"
    """Why the teacher stopped; `length` means cut at maxTokens."""
    reference: str | None = None
    """The reference answer (verifier), if any."""
    error: str = ""
    """The teacher's error instead of an answer."""


@dataclass
class FilterOutcome:
    """Which candidates were kept and why the others were dropped."""

    kept: list[int] = field(default_factory=list)
    """Indexes of the kept candidates, in input order."""
    dropped: list[tuple[int, str]] = field(default_factory=list)
    """(index, reason) of the dropped candidates."""

    @property
    def counts(self) -> dict[str, int]:
        """Drops by reason (reasons with no drop left out)."""
        counts = Counter(reason for _, reason in self.dropped)
        return {reason: counts[reason] for reason in REASONS if counts[reason]}


def normalize(text: str) -> str:
    """Whitespace collapsed and case folded: the exact-duplicate form."""
    return " ".join(text.split()).casefold()


def words(text: str) -> list[str]:
    r"""Lowercased words (`\w+`), the unit of n-grams and shingles."""
    return _WORD.findall(text.casefold())


def is_refusal(answer: str) -> bool:
    """Whether the start of an answer holds one of `REFUSAL_PHRASES`."""
    head = answer[:REFUSAL_WINDOW].casefold().replace("\u2019", "'")
    return any(phrase in head for phrase in REFUSAL_PHRASES)


def last_boxed(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` in `text` (nested braces balanced), or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        for i in range(start + len("\\boxed"), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len("\\boxed{"):i].strip()
        start = text.rfind("\\boxed{", 0, start)  # unbalanced (cut off): try an earlier one
    return None


def extract_answer(text: str, verifier: VerifierSpec) -> str | None:
    r"""The final answer in `text`: the last `\boxed{}` or the last match of the verifier's regex.

    Args:
        text: An answer (or a reference).
        verifier: `extract` and `regex`.

    Returns:
        The extracted answer, or None when there is none.
    """
    if verifier.extract == "boxed":
        return last_boxed(text)
    assert verifier.regex is not None  # the API requires it with extract: regex
    matches = list(re.finditer(verifier.regex, text))
    if not matches:
        return None
    last = matches[-1]
    return (last.group(1) if last.re.groups else last.group(0)).strip()


def _canonical(answer: str) -> str:
    text = answer.strip().strip("$").strip().rstrip(".").strip()
    return text.replace(",", "") if _THOUSANDS.match(text) else text


def answers_match(answer: str, reference: str) -> bool:
    """Whether two final answers agree.

    Both are trimmed, without `$`, thousands separators or a trailing period, then compared as numbers when both
    parse as numbers, else case-insensitively.
    """
    a, b = _canonical(answer), _canonical(reference)
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    except ValueError:
        return a.casefold() == b.casefold()


def verify(answer: str, reference: str, verifier: VerifierSpec) -> str | None:
    r"""Rejection sampling of one answer.

    The reference is read with the same extractor when it matches (a reference in `\boxed{}` or in the
    regex's shape), else used whole.

    Returns:
        None when the answer is right, else the drop reason `no_answer` or `wrong_answer`.
    """
    extracted = extract_answer(answer, verifier)
    if extracted is None:
        return "no_answer"
    expected = extract_answer(reference, verifier)
    return None if answers_match(extracted, expected if expected is not None else reference) else "wrong_answer"


def _grams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    if len(tokens) < n:
        yield tuple(tokens)
        return
    for i in range(len(tokens) - n + 1):
        yield tuple(tokens[i:i + n])


class ContaminationIndex:
    """Word n-grams of evaluation texts, to find generated rows that overlap them.

    A text of at least `n` words contributes its n-grams; a shorter one (of at least MIN_CONTAMINATION_WORDS
    words) contributes itself whole, so a short benchmark question inside a prompt is found. A candidate is
    contaminated when it holds any of them, or, when it is itself shorter than `n`, when it appears whole in an
    evaluation text. Grams are kept as hashes, so a large validation set fits in memory.
    """

    def __init__(self, texts: Iterable[str], n: int):
        """Index `texts` with word n-grams of size `n`."""
        self.n = n
        self._texts = [t for t in (words(x) for x in texts) if len(t) >= MIN_CONTAMINATION_WORDS]
        self._grams = {hash(g) for t in self._texts for g in _grams(t, n)}
        self._lengths = sorted({min(len(t), n) for t in self._texts})
        self._windows: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self._texts)

    def _windows_of(self, length: int) -> set[int]:
        if length not in self._windows:
            self._windows[length] = {hash(tuple(t[i:i + length])) for t in self._texts
                                     for i in range(len(t) - length + 1)}
        return self._windows[length]

    def contaminated(self, text: str) -> bool:
        """Whether `text` overlaps an evaluation text."""
        tokens = words(text)
        if len(tokens) < MIN_CONTAMINATION_WORDS or not self._texts:
            return False
        for length in self._lengths:
            if length <= len(tokens) and any(hash(tuple(tokens[i:i + length])) in self._grams
                                             for i in range(len(tokens) - length + 1)):
                return True
        return len(tokens) < self.n and hash(tuple(tokens)) in self._windows_of(len(tokens))


class NearDuplicateIndex:
    """MinHash signatures of kept texts in an LSH index (datasketch)."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM):
        """An empty index; texts whose estimated Jaccard similarity exceeds `threshold` are near-duplicates."""
        self.threshold = threshold
        self.num_perm = num_perm
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._signatures: dict[str, MinHash] = {}

    def signature(self, text: str) -> MinHash:
        """The MinHash of the text's word shingles."""
        signature = MinHash(num_perm=self.num_perm, seed=1)
        shingles = {" ".join(g) for g in _grams(words(text), SHINGLE_WORDS)}
        signature.update_batch([s.encode() for s in shingles])
        return signature

    def add_if_new(self, text: str) -> bool:
        """Index `text` unless a near-duplicate is indexed; returns whether it was new."""
        signature = self.signature(text)
        for other in self._lsh.query(signature):
            if signature.jaccard(self._signatures[other]) >= self.threshold:
                return False
        name = str(len(self._signatures))
        self._signatures[name] = signature
        self._lsh.insert(name, signature)
        return True


def drop_reason(candidate: Candidate, spec: DistillationFilters,
                contamination: ContaminationIndex | None) -> str | None:
    """The first per-row reason to drop `candidate` (steps 1-7), or None; duplicates are `apply_filters`' job."""
    if candidate.error:
        return "teacher_error"
    if candidate.finish_reason == "length":
        return "truncated"
    answer = candidate.answer.strip()
    if not answer:
        return "empty"
    if len(answer) < spec.min_length:
        return "too_short"
    if spec.max_length is not None and len(answer) > spec.max_length:
        return "too_long"
    if spec.refusals and is_refusal(answer):
        return "refusal"
    if spec.verifier is not None:
        reason = verify(answer, candidate.reference or "", spec.verifier)
        if reason:
            return reason
    if contamination is not None and (contamination.contaminated(candidate.prompt)
                                      or contamination.contaminated(answer)):
        return "contaminated"
    return None


def apply_filters(candidates: Sequence[Candidate], spec: DistillationFilters,
                  contamination: ContaminationIndex | None = None) -> FilterOutcome:
    """Filter candidates in order; the first of two duplicates is the one kept.

    Args:
        candidates: Teacher answers, in prompt order.
        spec: `distillation.filters`.
        contamination: Evaluation texts to decontaminate against (None: no decontamination).

    Returns:
        The kept indexes and the drops with their reasons.
    """
    outcome = FilterOutcome()
    seen: set[str] = set()
    near = NearDuplicateIndex(spec.dedup.near_threshold) if spec.dedup.near else None
    for index, candidate in enumerate(candidates):
        reason = drop_reason(candidate, spec, contamination)
        if reason is None and spec.dedup.exact:
            key = normalize(candidate.prompt) + "\x1e" + normalize(candidate.answer)
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason is None and near is not None and not near.add_if_new(f"{candidate.prompt}\n{candidate.answer}"):
            reason = "near_duplicate"
        if reason is None:
            outcome.kept.append(index)
        else:
            outcome.dropped.append((index, reason))
    return outcome
