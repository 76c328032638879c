"""Distillation from a real teacher: `transformers serve` of the real SmolLM2-135M-Instruct on loopback.

The answers of a 135M model to arithmetic are what they are, so the counts are checked against an independent
reading of what was written (every kept answer's last number is its reference, every `wrong_answer` is not, the
contaminated prompt is never kept, the repeated prompt is one request), plus the cache: a second call asks nothing.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from distill_helpers import ARITHMETIC, make_spec, write_jsonl

from sftjob_api.types import DataSource
from sftjob_trainer.distill import DISTILLED_FILE, REJECTED_FILE, distill
from sftjob_trainer.distill.filters import REASONS

if TYPE_CHECKING:
    from tests.conftest import OpenAIServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
_NUMBER = re.compile(r"-?\d+")


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def test_smollm2_teacher_end_to_end(openai_server: OpenAIServer, tmp_path: Path) -> None:
    rows = [{"question": f"What is {a} plus {b}? Answer with the number.", "answer": str(a + b)} for a, b in ARITHMETIC]
    rows.append(rows[1])  # asked once, seen twice
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    contaminated = rows[5]["question"]
    validation = write_jsonl(tmp_path / "val.jsonl", [{"prompt": contaminated, "completion": rows[5]["answer"]}])
    spec = make_spec(openai_server.base_url, str(prompts), str(tmp_path), maxTokens=40,
                     teacher={"model": openai_server.model, "concurrency": 2, "timeoutSeconds": 120},
                     filters={"verifier": {"extract": "regex", "regex": r"-?\d+"}, "decontaminate": {"ngram": 5}})
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={
        "validation": DataSource(uri=str(validation))})})
    output = tmp_path / "job"

    result = distill(spec, str(output))

    stats = result.stats
    assert stats.complete and stats.prompts == 7 and stats.responses == 7 and stats.requests == 6
    assert stats.kept + sum(stats.dropped.values()) == 7 and set(stats.dropped) <= set(REASONS)
    assert stats.completion_tokens > 0 and stats.prompt_tokens > 0, "transformers serve reports usage"
    kept = [json.loads(line) for line in (output / DISTILLED_FILE).read_text().splitlines()] if stats.kept else []
    rejected = [json.loads(line) for line in (output / REJECTED_FILE).read_text().splitlines()]
    assert Counter(r["reason"] for r in rejected) == Counter(stats.dropped)
    reference = {row["question"]: row["answer"] for row in rows}
    for row in kept:
        user, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        assert _last_number(answer) == reference[user] and user != contaminated
    for row in rejected:
        user, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        if row["reason"] == "wrong_answer":
            assert _last_number(answer) not in (None, reference[user])
        if row["reason"] == "no_answer":
            assert _last_number(answer) is None
        if row["reason"] == "truncated":
            assert row["finish_reason"] == "length"
    reasons_of_repeat = [r["reason"] for r in rejected if r["messages"][0]["content"] == rows[1]["question"]]
    assert reasons_of_repeat in (["duplicate"], [reasons_of_repeat[0]] * 2)

    again = distill(spec, str(output))
    assert again.stats.requests == 0 and again.stats.cache is not None and again.stats.cache.startswith("hit ")
    assert again.stats.sha256 == stats.sha256
