"""Self-Instruct and Evol-Instruct (sftjob_trainer.distill.self_instruct) with a scripted teacher: no HTTP here."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from rouge_score import rouge_scorer

from sftjob_trainer.distill.self_instruct import (
    EVOL_BROADER_PROMPT,
    EVOL_DEEPER_PROMPT,
    INSTRUCTIONS_PER_REQUEST,
    RougePool,
    Turns,
    clean_rewrite,
    evolve_request,
    grow_instructions,
    instruction_request,
    parse_instructions,
    unsuitable,
)

SEEDS = ["Give three tips for staying healthy.", "Translate 'good morning' into French.",
         "Classify the sentiment of: I loved this film."]


def test_parse_numbered_and_bulleted_lines() -> None:
    reply = ("Here you go:\n1. Write a haiku about rain.\n2) Name two prime numbers.\nTask 3: Sort 3, 1, 2.\n"
             "- Define entropy.")
    assert parse_instructions(reply) == ["Write a haiku about rain.", "Name two prime numbers.", "Sort 3, 1, 2.",
                                         "Define entropy."]


def test_unsuitable_follows_self_instruct_heuristics() -> None:
    assert unsuitable("Sum two.") == "too_short"
    assert unsuitable(" ".join(["word"] * 151)) == "too_long"
    assert unsuitable("Draw a picture of a cat for me.") == "unsuitable"
    assert unsuitable("Describe this image in detail please.") == "unsuitable"
    assert unsuitable("\"Quoted start of a task here.") == "unsuitable"
    assert unsuitable("Summarise the story of Hamlet in two sentences.") is None
    assert unsuitable("Summarise the plot of Hamlet.") == "unsuitable"  # the original list's known false positive
    assert unsuitable("Explain how mapping functions work in Python.") is None  # "map" only as a whole word


def test_rouge_pool_agrees_with_rouge_score() -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = ["Write a short poem about the sea.", "List three uses of copper.", "Explain photosynthesis simply."]
    pool = RougePool(0.7, texts)
    for candidate in ["Write a short poem about the ocean.", "List four uses of iron.", "Bake bread."]:
        expected = max(scorer.score(t, candidate)["rougeL"].fmeasure for t in texts)
        assert abs(pool.max_similarity(candidate) - expected) < 1e-12
    assert pool.similar("Write a short poem about the sea!")
    assert not pool.similar("Write a short poem about the sea!", skip=0)
    pool.replace(0, "Describe a volcano eruption.")
    assert not pool.similar("Write a short poem about the sea!")


def test_rewrites_lose_their_labels() -> None:
    assert clean_rewrite('#Rewritten Prompt#: "Sort the list and explain why."') == "Sort the list and explain why."
    assert clean_rewrite("Created Prompt: Name a rare gemstone.") == "Name a rare gemstone."
    assert "#Given Prompt#:\nSort it." in evolve_request("Sort it.", "deeper")[0][1]
    assert EVOL_DEEPER_PROMPT != EVOL_BROADER_PROMPT


class Scripted:
    """A teacher: numbered instruction lists (some duplicated, some unsuitable) and Evol rewrites."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.counter = itertools.count()

    def __call__(self, prompts: Sequence[Turns], stage: str) -> list[str]:
        self.calls.append((stage, len(prompts)))
        replies = []
        for turns in prompts:
            text = turns[-1][1]
            if "#Given Prompt#" in text:
                given = text.split("#Given Prompt#:\n", 1)[1].split("\n\nReply", 1)[0]
                # Every other rewrite is a copy: it must be refused and the original kept.
                replies.append(given if "[0]" in given else f"#Rewritten Prompt#: {given} Show each step.")
                continue
            lines = []
            for _ in range(INSTRUCTIONS_PER_REQUEST):
                n = next(self.counter)
                lines.append(f"{len(lines) + 1}. Describe the history of invention number {n} [{n % 2}] in detail."
                             if n % 4 else f"{len(lines) + 1}. Draw a map of place {n}.")
            lines.append(f"{len(lines) + 1}. Give three tips for staying healthy.")  # a seed again: similar
            replies.append("\n".join(lines))
        return replies


def test_grow_until_count_dropping_duplicates_and_unsuitable() -> None:
    ask = Scripted()
    result = grow_instructions(SEEDS, count=10, threshold=0.95, ask=ask)
    assert len(result.instructions) == 10
    assert result.dropped["unsuitable"] >= 2 and result.dropped["similar"] >= 1
    assert ask.calls[0] == ("instructions round 1", 2)  # ceil(10 / 8) requests
    assert result.requests == sum(n for _, n in ask.calls) and result.rounds == len(ask.calls)
    assert all("Draw a map" not in i for i in result.instructions)
    # The first request shows every seed (fewer than SEED_EXAMPLES) and asks for 8 new ones.
    shown = instruction_request(SEEDS)[0][1]
    assert all(seed in shown for seed in SEEDS) and 'numbered "1." to "8."' in shown


def test_a_round_that_adds_nothing_stops() -> None:
    def repeats(prompts: Sequence[Turns], stage: str) -> list[str]:
        return ["1. Give three tips for staying healthy."] * len(prompts)

    result = grow_instructions(SEEDS, count=5, threshold=0.7, ask=repeats)
    assert result.instructions == [] and result.rounds == 1 and result.dropped["similar"] == 1


def test_evolve_replaces_good_rewrites_and_keeps_originals_of_bad_ones() -> None:
    ask = Scripted()
    result = grow_instructions(SEEDS, count=4, threshold=0.95, ask=ask, evolve="deeper")
    assert ask.calls[-1] == ("evolve deeper", 4)
    evolved = [i for i in result.instructions if i.endswith("Show each step.")]
    assert len(evolved) == 3 and result.dropped["evolve_failed"] == 1  # inventions 1, 3, 5 evolved; 2 copied
