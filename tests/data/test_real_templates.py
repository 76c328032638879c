"""Loss masks on the real chat templates of widely used model families, over real public SFT data.

Every template of the corpus (tests/data/fixtures/templates, sources in SOURCES.md) is paired with
every data shape of the corpus (tests/data/fixtures/corpus): sftjob's input ids and labels must equal,
token for token, those of the oracle in corpus_helpers (transformers' `apply_chat_template` rendering
and the template family's known layout). A pair the template cannot express is refused, row by row,
with the template's own reason or sftjob's; the table below says which and why.
"""

from __future__ import annotations

from typing import Any

import pytest
from corpus_helpers import (
    CORPUS,
    FAMILIES,
    SHAPES,
    oracle_example,
    oracle_messages,
    read_rows,
    row_lines,
    template_text,
)

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import analyze, read_dataset

_TOOLS = "tool call"  # sftjob's refusal of a template that drops or cannot render tool calls
_MISTRAL_IDS = "Tool call IDs should be alphanumeric strings with length 9"
_NO_SYSTEM = "System role not supported"
# (template, shape) -> {row index: what the refusal says}. Every other pair trains every row.
REFUSED: dict[tuple[str, str], dict[int, str]] = {
    ("mistral-v0.3", "toolcalls_sharegpt"): {0: _MISTRAL_IDS},  # glaive calls carry no ids
    ("mistral-v0.3", "toolcalls_messages"): {0: _MISTRAL_IDS},  # "call_id" is 7 characters
    ("mistral-v0.3", "reasoning"): {1: _MISTRAL_IDS},
    ("gemma-2", "messages"): {0: _NO_SYSTEM, 1: _NO_SYSTEM},
    ("gemma-2", "toolcalls_sharegpt"): {0: "roles must alternate"},
    ("gemma-2", "toolcalls_messages"): {0: _NO_SYSTEM},
    ("gemma-2", "reasoning"): {0: _NO_SYSTEM, 1: _NO_SYSTEM},
    **{(name, shape): {0: _TOOLS} for name in ("phi-3", "phi-3.5", "phi-4", "smollm2", "llama-3-training",
                                                 "deepseek-r1-distill")
       for shape in ("toolcalls_sharegpt", "toolcalls_messages")},
    **{(name, "reasoning"): {1: _TOOLS} for name in ("phi-3", "phi-3.5", "phi-4", "smollm2", "llama-3-training")},
    # The template cuts everything up to </think> from every answer: reasoning cannot be trained with it.
    ("deepseek-r1-distill", "reasoning"): {0: "cannot render reasoning", 1: "cannot render reasoning"},
}


def _spec(shape: str, **fields: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"train": {"uri": str(CORPUS / SHAPES[shape])}, **fields})


def test_the_corpus_spans_twelve_templates_of_eight_families_and_five_shapes() -> None:
    families = {name.split("-")[0] for name in FAMILIES}
    assert len(FAMILIES) >= 12 and len(families) >= 7  # llama qwen mistral gemma phi deepseek smollm2 ...
    assert {"llama", "qwen", "mistral", "gemma", "phi", "deepseek", "smollm2"} <= families
    assert {"qwen-2.5", "qwen-3"} <= set(FAMILIES)  # Qwen 2.5 and Qwen 3 are distinct families here
    assert len(SHAPES) >= 5


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_labels_equal_the_oracle_token_for_token(family_tokenizers: dict[str, Any], name: str, shape: str) -> None:
    tokenizer, family = family_tokenizers[name], FAMILIES[name]
    prepared = analyze(_spec(shape), tokenizer, read_dataset(str(CORPUS / SHAPES[shape])))
    refused = REFUSED.get((name, shape), {})
    lines = row_lines(shape)
    errors = {e["line"]: e["message"] for e in prepared.report.errors}
    assert set(errors) == {lines[i] for i in refused}, prepared.report.errors
    for index, reason in refused.items():
        assert reason in errors[lines[index]], errors[lines[index]]
    examples = {e.line: e for e in prepared.train}
    for index, row in enumerate(read_rows(shape)):
        if index in refused:
            continue
        messages, tools = oracle_messages(shape, row, family.native_reasoning)
        ids, labels, text = oracle_example(tokenizer, family, messages, tools)
        example = examples[lines[index]]
        assert example.input_ids == ids, f"{name} x {shape} row {index}: the rendered text differs:\n{text}"
        assert example.labels == labels, _diff(tokenizer, ids, example.labels, labels)


def _diff(tokenizer: Any, ids: list[int], got: list[int], want: list[int]) -> str:
    first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    window = slice(max(0, first - 8), first + 8)
    return (f"first difference at token {first}: sftjob {'trains' if got[first] != -100 else 'masks'} "
            f"{tokenizer.decode(ids[first:first + 1])!r}; context {tokenizer.decode(ids[window])!r}")


@pytest.mark.parametrize("name", ["qwen-3", "llama-3.1", "mistral-v0.3", "phi-3"])
def test_last_assistant_trains_only_the_last_turn(family_tokenizers: dict[str, Any], name: str) -> None:
    tokenizer, family = family_tokenizers[name], FAMILIES[name]
    prepared = analyze(_spec("messages", trainOn="last_assistant"), tokenizer,
                       read_dataset(str(CORPUS / SHAPES["messages"])))
    row = read_rows("messages")[1]
    messages, tools = oracle_messages("messages", row, family.native_reasoning)
    ids, labels, _ = oracle_example(tokenizer, family, messages, tools, last_only=True)
    example = next(e for e in prepared.train if e.line == row_lines("messages")[1])
    assert (example.input_ids, example.labels) == (ids, labels)


def test_reasoning_drop_trains_the_answers_on_a_template_that_cannot_render_reasoning(
        family_tokenizers: dict[str, Any]) -> None:
    tokenizer, family = family_tokenizers["deepseek-r1-distill"], FAMILIES["deepseek-r1-distill"]
    prepared = analyze(_spec("reasoning", reasoning="drop"), tokenizer,
                       read_dataset(str(CORPUS / SHAPES["reasoning"])))
    lines = row_lines("reasoning")
    assert [e["line"] for e in prepared.report.errors] == [lines[1]]  # tool calls: this template has none
    messages, tools = oracle_messages("reasoning", read_rows("reasoning")[0], False, drop_reasoning=True)
    ids, labels, _ = oracle_example(tokenizer, family, messages, tools)
    assert (prepared.train[0].input_ids, prepared.train[0].labels) == (ids, labels)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_smollm2_real_tokenizer_labels_equal_the_oracle(smollm2_tokenizer: Any, shape: str) -> None:
    # The real SmolLM2-135M-Instruct tokenizer (49152 tokens, read from its GGUF), not a stand-in.
    assert smollm2_tokenizer.chat_template == template_text("smollm2")
    family = FAMILIES["smollm2"]
    prepared = analyze(_spec(shape), smollm2_tokenizer, read_dataset(str(CORPUS / SHAPES[shape])))
    refused = REFUSED.get(("smollm2", shape), {})
    lines = row_lines(shape)
    assert {e["line"] for e in prepared.report.errors} == {lines[i] for i in refused}
    examples = {e.line: e for e in prepared.train}
    for index, row in enumerate(read_rows(shape)):
        if index in refused:
            continue
        messages, tools = oracle_messages(shape, row, family.native_reasoning)
        ids, labels, _ = oracle_example(smollm2_tokenizer, family, messages, tools)
        assert (examples[lines[index]].input_ids, examples[lines[index]].labels) == (ids, labels)
