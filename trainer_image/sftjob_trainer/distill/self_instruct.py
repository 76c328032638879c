"""Self-Instruct (Wang et al., 2022) and Evol-Instruct (Xu et al., 2023): new instructions written by the teacher.

Rounds: each request shows the teacher `SEED_EXAMPLES` seed tasks and up to `GENERATED_EXAMPLES` instructions
generated so far (drawn with a fixed random seed per round, so an attempt that replays cached replies rebuilds the
same pool) and asks for `INSTRUCTIONS_PER_REQUEST` new ones (`SELF_INSTRUCT_PROMPT`). A round asks for what is
still missing, and rounds go on until `count` instructions are in the pool, a round adds none, or `MAX_ROUNDS`.

Each new instruction is kept only if it passes Self-Instruct's heuristics (3 to 150 words, none of the
`UNSUITABLE_WORDS` a text-only model cannot do, not starting with punctuation) and its ROUGE-L F1 (rouge-score,
no stemming) with every instruction in the pool, seeds included, is at most `similarityThreshold`. The ROUGE-L
check is exact; a unigram-overlap bound (the LCS never exceeds the shared words) skips the pairs that cannot reach
the threshold, so the quadratic comparison stays cheap.

`evolve: deeper | broader` rewrites every kept instruction once with `EVOL_DEEPER_PROMPT` or `EVOL_BROADER_PROMPT`
(WizardLM's in-depth and in-breadth evolving, condensed); a rewrite replaces its instruction when it passes the
same checks against the rest of the pool, else the original stays (`evolve_failed`).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from rouge_score import rouge_scorer, tokenizers

SEED_EXAMPLES: Final = 6
GENERATED_EXAMPLES: Final = 2
INSTRUCTIONS_PER_REQUEST: Final = 8
MAX_ROUNDS: Final = 50
MIN_WORDS: Final = 3
MAX_WORDS: Final = 150
# Self-Instruct's filter: tasks a text-only language model cannot do.
UNSUITABLE_WORDS: Final = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map",
                           "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")

SELF_INSTRUCT_PROMPT: Final = """\
You are helping to build a diverse set of task instructions for training a language model.
Here are some example tasks:

{examples}

Write {count} new tasks that differ from the examples and from each other: vary the topic, the verb and the kind \
of task (questions, rewriting, classification, open-ended writing, step-by-step reasoning). Each task must be one \
self-contained instruction that a text-only language model can complete, including any input it needs. \
Do not answer the tasks. Write one task per line, numbered "1." to "{count}.", and nothing else."""

EVOL_DEEPER_PROMPT: Final = """\
I want you to act as a prompt rewriter. Rewrite the given prompt into a more complex version that is harder for \
a strong AI assistant to handle, while staying reasonable and answerable by humans. Make it harder in one way: \
add one more constraint or requirement, ask about a deeper or more specific aspect, or require explicit \
multi-step reasoning. Keep everything the given prompt contains, and add at most 10 to 20 words.

#Given Prompt#:
{instruction}

Reply with the rewritten prompt only."""

EVOL_BROADER_PROMPT: Final = """\
I want you to act as a prompt creator. Draw inspiration from the given prompt to create a brand-new prompt that \
belongs to the same domain but is rarer. Its length and difficulty must be similar to the given prompt's, and it \
must be reasonable and answerable by humans.

#Given Prompt#:
{instruction}

Reply with the created prompt only."""

EVOL_PROMPTS: Final = {"deeper": EVOL_DEEPER_PROMPT, "broader": EVOL_BROADER_PROMPT}

_NUMBERED = re.compile(r"^\s*(?:\d+\s*[.):]|task\s*\d+\s*[:.]|[-*\u2022])\s*(.+?)\s*$", re.IGNORECASE)
_LABEL = re.compile(r"^\s*#?\s*(?:rewritten|created|new)\s+prompt\s*#?\s*:?\s*", re.IGNORECASE)

Turns = tuple[tuple[str, str], ...]
# Sends prompts (one per request) to the teacher and returns the texts it answered, in order ("" for none).
Ask = Callable[[Sequence[Turns], str], list[str]]


@dataclass
class GrowResult:
    """The instructions Self-Instruct produced, and what it dropped."""

    instructions: list[str] = field(default_factory=list)
    """New instructions (seeds excluded), in the order they were accepted."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Dropped candidates by reason: too_short, too_long, unsuitable, similar, evolve_failed."""
    rounds: int = 0
    """Rounds of generation."""
    requests: int = 0
    """Requests made (or replayed from the cache)."""


def parse_instructions(reply: str) -> list[str]:
    """The numbered (or bulleted) lines of a reply, without their numbers (pure)."""
    found = []
    for line in reply.splitlines():
        match = _NUMBERED.match(line)
        if match:
            found.append(match.group(1).strip().strip('"').strip())
    return found


def clean_rewrite(reply: str) -> str:
    """An Evol-Instruct rewrite without labels such as `#Rewritten Prompt#:` or surrounding quotes (pure)."""
    text = reply.strip()
    text = _LABEL.sub("", text).strip()
    return text.strip('"').strip()


def unsuitable(instruction: str) -> str | None:
    """Self-Instruct's heuristics: the drop reason of an instruction, or None when it is usable (pure)."""
    tokens = instruction.split()
    if len(tokens) < MIN_WORDS:
        return "too_short"
    if len(tokens) > MAX_WORDS:
        return "too_long"
    lowered = f" {' '.join(re.findall(r'[a-z]+', instruction.lower()))} "
    if any(f" {word} " in lowered for word in UNSUITABLE_WORDS) or not instruction[0].isalnum():
        return "unsuitable"
    return None


class RougePool:
    """Instructions against which a new one must stay below a ROUGE-L F1 threshold."""

    def __init__(self, threshold: float, texts: Sequence[str] = ()):
        """A pool holding `texts`; `similar()` compares against it."""
        self.threshold = threshold
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self._tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
        self._texts: list[str] = []
        self._counts: list[Counter[str]] = []
        self._lengths: list[int] = []
        self._postings: dict[str, list[int]] = {}
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> None:
        """Put `text` in the pool."""
        counts = Counter(self._tokenizer.tokenize(text))
        index = len(self._texts)
        self._texts.append(text)
        self._counts.append(counts)
        self._lengths.append(sum(counts.values()))
        for token in counts:
            self._postings.setdefault(token, []).append(index)

    def _candidates(self, text: str, skip: int | None) -> list[tuple[float, int]]:
        # (upper bound of the ROUGE-L F1, index) of every member sharing a word, best bound first: the LCS is at
        # most the shared word count, and F1 = 2 * LCS / (len(a) + len(b)).
        counts = Counter(self._tokenizer.tokenize(text))
        length = sum(counts.values())
        overlap: Counter[int] = Counter()
        for token, count in counts.items():
            for index in self._postings.get(token, ()):
                overlap[index] += min(count, self._counts[index][token])
        bounds = [(2 * shared / (length + self._lengths[index]), index) for index, shared in overlap.items()
                  if index != skip]
        return sorted(bounds, reverse=True)

    def _score(self, index: int, text: str) -> float:
        return float(self._scorer.score(self._texts[index], text)["rougeL"].fmeasure)

    def max_similarity(self, text: str, skip: int | None = None) -> float:
        """The highest ROUGE-L F1 of `text` with a pool member (the one at `skip` left out)."""
        best = 0.0
        for bound, index in self._candidates(text, skip):
            if bound <= best:
                break
            best = max(best, self._score(index, text))
        return best

    def similar(self, text: str, skip: int | None = None) -> bool:
        """Whether `text` is above the threshold with a pool member (the one at `skip` left out)."""
        for bound, index in self._candidates(text, skip):
            if bound <= self.threshold:
                return False
            if self._score(index, text) > self.threshold:
                return True
        return False

    def replace(self, index: int, text: str) -> None:
        """Swap the member at `index` for `text` (an accepted Evol-Instruct rewrite)."""
        old = self._counts[index]
        for token in old:
            self._postings[token].remove(index)
        counts = Counter(self._tokenizer.tokenize(text))
        self._texts[index] = text
        self._counts[index] = counts
        self._lengths[index] = sum(counts.values())
        for token in counts:
            self._postings.setdefault(token, []).append(index)


def instruction_request(examples: Sequence[str], count: int = INSTRUCTIONS_PER_REQUEST) -> Turns:
    """The turns asking for `count` new instructions after `examples` (pure)."""
    listed = "\n".join(f"{i}. {' '.join(example.split())}" for i, example in enumerate(examples, start=1))
    return (("user", SELF_INSTRUCT_PROMPT.format(examples=listed, count=count)),)


def evolve_request(instruction: str, how: str) -> Turns:
    """The turns asking for the Evol-Instruct rewrite `how` (deeper, broader) of `instruction` (pure)."""
    return (("user", EVOL_PROMPTS[how].format(instruction=instruction)),)


def grow_instructions(seeds: Sequence[str], count: int, threshold: float, ask: Ask,
                      evolve: str | None = None) -> GrowResult:
    """Grow `count` new instructions from `seeds` with the teacher.

    Args:
        seeds: The seed tasks.
        count: New instructions wanted.
        threshold: ROUGE-L F1 above which a candidate is a near-duplicate of the pool.
        ask: Sends prompts to the teacher (through the cache) and returns the answers, in order.
        evolve: `deeper`, `broader` or None.

    Returns:
        The instructions (at most `count`) and the drops by reason.
    """
    result = GrowResult()
    pool = RougePool(threshold, seeds)
    while len(result.instructions) < count and result.rounds < MAX_ROUNDS:
        rng = random.Random(result.rounds)  # noqa: S311 - reproducible example choice, not a secret
        missing = count - len(result.instructions)
        prompts = []
        for _ in range(math.ceil(missing / INSTRUCTIONS_PER_REQUEST)):
            examples = rng.sample(list(seeds), min(SEED_EXAMPLES, len(seeds)))
            examples += rng.sample(result.instructions, min(GENERATED_EXAMPLES, len(result.instructions)))
            rng.shuffle(examples)
            prompts.append(instruction_request(examples))
        result.rounds += 1
        result.requests += len(prompts)
        added = 0
        for reply in ask(prompts, f"instructions round {result.rounds}"):
            for candidate in parse_instructions(reply):
                if len(result.instructions) >= count:
                    break
                reason = unsuitable(candidate) or ("similar" if pool.similar(candidate) else None)
                if reason:
                    result.dropped[reason] += 1
                    continue
                pool.add(candidate)
                result.instructions.append(candidate)
                added += 1
        if not added:
            break
    if evolve and result.instructions:
        offset = len(seeds)
        rewrites = ask([evolve_request(i, evolve) for i in result.instructions], f"evolve {evolve}")
        result.requests += len(result.instructions)
        for index, rewrite in enumerate(rewrites):
            text = clean_rewrite(rewrite)
            if (not text or text == result.instructions[index] or unsuitable(text)
                    or pool.similar(text, skip=offset + index)):
                result.dropped["evolve_failed"] += 1
                continue
            pool.replace(offset + index, text)
            result.instructions[index] = text
    return result
