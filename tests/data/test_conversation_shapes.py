"""Turn order, tool results and trailing turns of conversations, in every chat layout; the duplicate rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from data_helpers import write_jsonl

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import ByteTokenizer, DataError, prepare_dataset
from sftjob_trainer.data.formats import to_conversation
from sftjob_trainer.data.preflight import MAX_DUPLICATE_SHARE
from sftjob_trainer.data.readers import Row
from sftjob_trainer.data.row_fields import RowError

TOK = ByteTokenizer()


def m(role: str, content: str | None = "x", **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def call(name: str, call_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": "{}"}}
    if call_id is not None:
        out["id"] = call_id
    return out


VALID: dict[str, tuple[str, dict[str, Any]]] = {
    "system-user-assistant": ("messages", {"messages": [m("system"), m("user"), m("assistant")]}),
    "two-system-turns-first": ("messages", {"messages": [m("system"), m("system"), m("user"), m("assistant")]}),
    "multi-turn": ("messages", {"messages": [m("user"), m("assistant"), m("user"), m("assistant")]}),
    "consecutive-user-turns": ("messages", {"messages": [m("user"), m("user"), m("assistant")]}),
    "tool-calls-with-ids": ("messages", {"messages": [
        m("user"), m("assistant", None, tool_calls=[call("add", "c1"), call("mul", "c2")]),
        m("tool", "5", tool_call_id="c1"), m("tool", "6", tool_call_id="c2"), m("assistant", "5 and 6")]}),
    "tool-call-id-on-result-only": ("messages", {"messages": [
        m("user"), m("assistant", None, tool_calls=[call("add")]), m("tool", "5", tool_call_id="1"),
        m("assistant")]}),
    "tool-by-name": ("messages", {"messages": [
        m("user"), m("assistant", None, tool_calls=[call("add")]), m("tool", "5", name="add"), m("assistant")]}),
    "two-rounds-of-tools": ("messages", {"messages": [
        m("user"), m("assistant", None, tool_calls=[call("a", "1")]), m("tool", tool_call_id="1"),
        m("assistant", None, tool_calls=[call("b", "2")]), m("tool", tool_call_id="2"), m("assistant")]}),
    "ends-with-tool-call": ("messages", {"messages": [m("user"), m("assistant", None, tool_calls=[call("a")])]}),
    "no-assistant-turn-left-to-quality-filter": ("messages", {"messages": [m("system"), m("user")]}),
    "sharegpt-function-call": ("sharegpt", {"conversations": [
        {"from": "system", "value": "s"}, {"from": "human", "value": "q"},
        {"from": "function_call", "value": '{"name": "add", "arguments": {}}'},
        {"from": "observation", "value": "5"}, {"from": "gpt", "value": "a"}]}),
    "trl-conversational": ("prompt_completion", {"prompt": [m("system"), m("user")],
                                                 "completion": [m("assistant")]}),
    "alpaca-with-system": ("alpaca", {"instruction": "i", "output": "o", "system": "s"}),
}

INVALID: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "assistant-first": ("messages", {"messages": [m("assistant"), m("user"), m("assistant")]},
                        "messages[0].role", "an assistant turn before any user turn is out of order"),
    "system-after-user": ("messages", {"messages": [m("user"), m("system"), m("assistant")]},
                          "messages[1].role", "a system turn after the conversation has started is out of order"),
    "system-then-assistant": ("messages", {"messages": [m("system"), m("assistant")]},
                              "messages[1].role", "before any user turn is out of order"),
    "tool-first": ("messages", {"messages": [m("tool"), m("user"), m("assistant")]},
                   "messages[0].role", "a tool turn before any user turn"),
    "tool-after-user": ("messages", {"messages": [m("user"), m("tool", tool_call_id="c1"), m("assistant")]},
                        "messages[1]", "this tool turn follows a user turn"),
    "tool-id-mismatch": ("messages", {"messages": [
        m("user"), m("assistant", None, tool_calls=[call("add", "c1")]), m("tool", tool_call_id="c9"),
        m("assistant")]}, "messages[2]", "tool_call_id 'c9' answers no tool call of an earlier assistant turn"),
    "tool-name-mismatch": ("messages", {"messages": [
        m("user"), m("assistant", None, tool_calls=[call("add")]), m("tool", name="mul"), m("assistant")]},
        "messages[2]", "the tool result of 'mul' answers no tool call"),
    "ends-with-user": ("messages", {"messages": [m("user"), m("assistant"), m("user")]},
                       "messages", "the conversation ends with a user turn"),
    "ends-with-tool-result": ("messages", {"messages": [
        m("user"), m("assistant", None, tool_calls=[call("add", "c1")]), m("tool", tool_call_id="c1")]},
        "messages", "the conversation ends with a tool turn"),
    "sharegpt-gpt-first": ("sharegpt", {"conversations": [{"from": "gpt", "value": "a"},
                                                          {"from": "human", "value": "q"}]},
                           "conversations[0].from", "before any user turn is out of order"),
    "sharegpt-ends-with-human": ("sharegpt", {"conversations": [{"from": "human", "value": "q"},
                                                                {"from": "gpt", "value": "a"},
                                                                {"from": "human", "value": "q2"}]},
                                 "conversations", "ends with a user turn"),
    "trl-completion-ends-with-user": ("prompt_completion", {"prompt": [m("user")],
                                                            "completion": [m("assistant"), m("user")]},
                                      "completion", "ends with a user turn"),
    "trl-system-in-completion": ("prompt_completion", {"prompt": [m("user")],
                                                       "completion": [m("system"), m("assistant")]},
                                 "completion[0].role", "system turn after the conversation has started"),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_shapes_convert(name: str) -> None:
    schema, data = VALID[name]
    conversation = to_conversation(Row(1, data), schema)
    assert conversation.line == 1
    assert conversation.messages[-1].role in ("assistant", "user")


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_shapes_name_the_turn(name: str) -> None:
    schema, data, field, message = INVALID[name]
    with pytest.raises(RowError) as caught:
        to_conversation(Row(1, data), schema)
    assert caught.value.field == field
    assert message in caught.value.message


def test_every_chat_layout_is_checked_through_the_pipeline(tmp_path: Path) -> None:
    good = {"messages": [m("user", "q"), m("assistant", "a")]}
    rows = [good, {"messages": [m("user", "q"), m("assistant", "a"), m("user", "again?")]}, good]
    with pytest.raises(DataError) as caught:
        prepare_dataset(DatasetSpec.model_validate({"train": {"uri": str(write_jsonl(tmp_path / "d.jsonl", rows))}}),
                        TOK, seed=0)
    assert caught.value.code == "InvalidDataset"
    assert (caught.value.line, caught.value.field) == (2, "messages")
    valid = [data for schema, data in VALID.values() if schema == "messages" and data["messages"][-1]["role"]
             == "assistant" and data["messages"][-1].get("content")]
    prepared = prepare_dataset(DatasetSpec.model_validate({"train": {"uri": str(write_jsonl(tmp_path / "ok.jsonl",
                                                                                             valid))},
                                                           "dedup": False}), TOK, seed=0)
    assert prepared.report.train_examples == len(valid) > 5


def _duplicated(tmp_path: Path, distinct: int, copies: int, **fields: Any) -> DatasetSpec:
    rows = [{"messages": [m("user", f"question {i}"), m("assistant", f"answer {i}")]} for i in range(distinct)]
    rows += [rows[0]] * copies
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    return DatasetSpec.model_validate({"train": {"uri": str(path)}, **fields})


def test_a_few_duplicates_pass_and_are_dropped(tmp_path: Path) -> None:
    prepared = prepare_dataset(_duplicated(tmp_path, distinct=18, copies=2), TOK, seed=0)
    assert prepared.report.duplicates == 2
    assert prepared.report.dropped == {"duplicate": 2}
    assert prepared.report.train_examples == 18


def test_half_duplicates_is_the_limit(tmp_path: Path) -> None:
    assert MAX_DUPLICATE_SHARE == 0.5
    at_limit = prepare_dataset(_duplicated(tmp_path, distinct=10, copies=10), TOK, seed=0)
    assert at_limit.report.duplicates == 10 and at_limit.report.train_examples == 10
    with pytest.raises(DataError) as caught:
        prepare_dataset(_duplicated(tmp_path, distinct=10, copies=11), TOK, seed=0)
    err = caught.value
    assert (err.code, err.line, err.field) == ("PreflightFailed", None, "dataset.train")
    assert "11 of the 21 rows (52%) are exact duplicates" in err.message
    assert "only 10 distinct examples would be left" in err.message
    assert "deduplicate the file" in err.message and "dataset.dedup: false" in err.message


def test_dedup_off_trains_the_copies_with_a_warning(tmp_path: Path) -> None:
    prepared = prepare_dataset(_duplicated(tmp_path, distinct=2, copies=30, dedup=False), TOK, seed=0)
    assert prepared.report.train_examples == 32
    assert prepared.report.dropped == {}
    assert prepared.report.warnings == ["30 of the 32 rows are exact duplicates of another row; dedup is off, "
                                        "so they are trained as given"]
