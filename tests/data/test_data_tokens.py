"""`sftjob data tokens FILE`: each example's input_ids and labels, exactly what the trainer's batches hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from corpus_helpers import CORPUS, SHAPES
from data_helpers import CliRunner, write_jsonl

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import IGNORE_INDEX, prepare_dataset
from sftjob_trainer.preparation import sequences
from sftjob_trainer.worker import build_collator


@pytest.fixture(scope="module")
def qwen3_dir(family_tokenizers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus's Qwen3 tokenizer (real template) saved as a directory, as users point --tokenizer at one."""
    directory = tmp_path_factory.mktemp("qwen3-tok")
    family_tokenizers["qwen-3"].save_pretrained(directory)
    return directory


def lines_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_tokens_are_the_trainers_batches(run_cli: CliRunner, qwen3_dir: Path) -> None:
    from transformers import AutoTokenizer

    data = CORPUS / SHAPES["reasoning"]  # reasoning, tool calls and tool results on Qwen3's real template
    result = run_cli("data", "tokens", str(data), "--tokenizer", str(qwen3_dir))
    assert result.returncode == 0, result.stderr
    printed = lines_of(result.stdout)
    assert [set(p) for p in printed] == [{"line", "input_ids", "labels"}] * len(printed)

    # What the trainer does with the same file: prepare, then its collators (driver.sequences, worker).
    tokenizer = AutoTokenizer.from_pretrained(qwen3_dir)
    prepared = prepare_dataset(DatasetSpec.model_validate({"train": {"uri": str(data)}}), tokenizer, seed=42)
    rows = sequences(prepared)[0]
    assert [p["line"] for p in printed] == [e.line for e in prepared.train]
    packed = build_collator("packed", tokenizer.pad_token_id)(rows)
    assert packed["input_ids"][0].tolist() == [t for p in printed for t in p["input_ids"]]
    # A packed batch masks each example's first label (it would be predicted from the previous example).
    assert packed["labels"][0].tolist() == [label for p in printed for label in [IGNORE_INDEX, *p["labels"][1:]]]
    padded = build_collator("length_grouped", tokenizer.pad_token_id)(rows)
    for row, ids, labels in zip(printed, padded["input_ids"].tolist(), padded["labels"].tolist(), strict=True):
        n = len(row["input_ids"])
        assert (ids[:n], labels[:n]) == (row["input_ids"], row["labels"])
        assert set(labels[n:]) <= {IGNORE_INDEX}
    assert any(label != IGNORE_INDEX for p in printed for label in p["labels"])


def test_tokens_prints_nothing_and_exits_2_on_bad_rows(run_cli: CliRunner, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                            {"role": "assistant", "content": "a"}]},
                                              {"messages": [{"role": "robot", "content": "x"}]}])
    result = run_cli("data", "tokens", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert f"{path}:2: messages[0].role: unknown role 'robot'" in result.stderr
    assert "Traceback" not in result.stderr
    bad_option = run_cli("data", "tokens", str(path), "--reasoning", "hide")
    assert bad_option.returncode == 2 and bad_option.stderr.startswith("sftjob data tokens: --reasoning:")
