"""Golden tests: one 3-row file per format, exact input_ids and labels written out by hand.

The byte-level tokenizer makes the expectations computable by hand: every UTF-8 byte is one token
and each chat special token is one id.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from data_helpers import FIXTURES

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import ByteTokenizer, prepare_dataset

TOK = ByteTokenizer()
IM_START = TOK.convert_tokens_to_ids("<|im_start|>")
IM_END = TOK.convert_tokens_to_ids("<|im_end|>")
EOS = TOK.eos_token_id
X = -100  # no loss


def b(text: str) -> list[int]:
    """Token ids of plain text: its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def turn(role: str, content: str, trained: bool) -> tuple[list[int], list[int]]:
    """ChatML: <|im_start|>role\\ncontent<|im_end|>\\n; a trained turn trains content and <|im_end|>."""
    ids = [IM_START, *b(f"{role}\n"), *b(content), IM_END, *b("\n")]
    if not trained:
        return ids, [X] * len(ids)
    head = 1 + len(b(f"{role}\n"))
    return ids, [X] * head + b(content) + [IM_END] + [X]


def chat(*turns: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    return [t for ids, _ in turns for t in ids], [t for _, labels in turns for t in labels]


def prepare(path: Path, **dataset: object) -> list[tuple[list[int], list[int]]]:
    spec = DatasetSpec.model_validate({"train": {"uri": str(path)}, **dataset})
    prepared = prepare_dataset(spec, TOK, seed=0)
    return [(e.input_ids, e.labels) for e in prepared.train]


def test_prompt_completion_is_joined_plainly_without_a_template() -> None:
    expected = []
    for prompt, completion in [("Q: 2+2?\nA:", " 4"), ("Capital of France?", " Paris."),
                               ("Q: What is the capital of Italy?\nA:", " Rome.")]:
        expected.append((b(prompt) + b(completion) + [EOS], [X] * len(b(prompt)) + b(completion) + [EOS]))
    assert prepare(FIXTURES / "golden_prompt_completion.jsonl") == expected


def test_prompt_completion_with_a_named_template_becomes_a_chat() -> None:
    got = prepare(FIXTURES / "golden_prompt_completion.jsonl", chatTemplate="chatml")
    assert got[1] == chat(turn("user", "Capital of France?", False), turn("assistant", " Paris.", True))


def test_messages() -> None:
    assert prepare(FIXTURES / "golden_messages.jsonl") == [
        chat(turn("user", "Hi", False), turn("assistant", "Hello!", True)),
        chat(turn("system", "Be terse.", False), turn("user", "Sky?", False), turn("assistant", "Blue.", True)),
        chat(turn("user", "A", False), turn("assistant", "B", True), turn("user", "C", False),
             turn("assistant", "D", True)),
    ]


def test_messages_last_assistant_and_all() -> None:
    last = prepare(FIXTURES / "golden_messages.jsonl", trainOn="last_assistant")
    assert last[2] == chat(turn("user", "A", False), turn("assistant", "B", False), turn("user", "C", False),
                           turn("assistant", "D", True))
    every = prepare(FIXTURES / "golden_messages.jsonl", trainOn="all")
    ids, _ = chat(turn("user", "A", False), turn("assistant", "B", False), turn("user", "C", False),
                  turn("assistant", "D", False))
    assert every[2] == (ids, ids)


def test_alpaca_json_array() -> None:
    assert prepare(FIXTURES / "golden_alpaca.json") == [
        chat(turn("user", "Add the numbers.\n\n2 and 3", False), turn("assistant", "5", True)),
        chat(turn("user", "Say hi.", False), turn("assistant", "hi", True)),  # empty input: no blank lines
        chat(turn("user", "Name a color.", False), turn("assistant", "red", True)),  # input may be absent
    ]


def test_sharegpt() -> None:
    assert prepare(FIXTURES / "golden_sharegpt.jsonl") == [
        chat(turn("user", "Ping", False), turn("assistant", "Pong", True)),
        chat(turn("system", "S", False), turn("user", "Q", False), turn("assistant", "R", True)),
        chat(turn("user", "one", False), turn("assistant", "two", True), turn("user", "three", False),
             turn("assistant", "four", True)),
    ]


def test_text_trains_every_token_and_eos() -> None:
    assert prepare(FIXTURES / "golden_text.jsonl") == [
        ([*b(t), EOS], [*b(t), EOS]) for t in ["The cat sat.", "Dogs bark.", "Birds fly high."]
    ]


def test_llama3_and_zephyr_named_templates() -> None:
    bos = TOK.convert_tokens_to_ids("<|begin_of_text|>")
    sh, eh, eot = (TOK.convert_tokens_to_ids(t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    (ids, labels), *_ = prepare(FIXTURES / "golden_messages.jsonl", chatTemplate="llama3")
    user = [sh, *b("user"), eh, *b("\n\nHi"), eot]
    head = [sh, *b("assistant"), eh, *b("\n\n")]
    assert ids == [bos, *user, *head, *b("Hello!"), eot]
    assert labels == [X] * (1 + len(user) + len(head)) + b("Hello!") + [eot]

    (ids, labels), *_ = prepare(FIXTURES / "golden_messages.jsonl", chatTemplate="zephyr")
    user = [*b("<|user|>\nHi"), EOS, *b("\n")]
    head = b("<|assistant|>\n")
    assert ids == [*user, *head, *b("Hello!"), EOS, *b("\n")]
    assert labels == [X] * (len(user) + len(head)) + b("Hello!") + [EOS, X]


def test_column_map_renames_before_detection(tmp_path: Path) -> None:
    path = tmp_path / "renamed.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answer": " A."}) + "\n", encoding="utf-8")
    got = prepare(path, columnMap={"question": "prompt", "answer": "completion"})
    assert got == [(b("Q?") + b(" A.") + [EOS], [X, X, *b(" A."), EOS])]


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_every_file_format_reads_the_same_rows(tmp_path: Path, fmt: str) -> None:
    rows = [json.loads(line) for line in (FIXTURES / "golden_messages.jsonl").read_text().splitlines()]
    path = tmp_path / f"rows.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif fmt == "csv":  # nested columns travel as JSON text in CSV
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["messages"])
            writer.writerows([[json.dumps(r["messages"])] for r in rows])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    assert prepare(path) == prepare(FIXTURES / "golden_messages.jsonl")


def test_tool_calls_in_chatml(tmp_path: Path) -> None:
    call = {"type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}
    row = {"messages": [{"role": "user", "content": "2+3?"},
                        {"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": "1", "content": "5"},
                        {"role": "assistant", "content": "5."}]}
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    call_text = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert prepare(path) == [chat(turn("user", "2+3?", False), turn("assistant", call_text, True),
                                  turn("tool", "5", False), turn("assistant", "5.", True))]
